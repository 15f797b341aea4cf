//! CPU kernels behind CancerNet's fast training path, on plain `f32` slices in NCHW order.
//!
//! Each works plane by plane (one `h x w` image of one channel of one sample), in parallel over
//! the planes with rayon, and writes its result into a fresh buffer. `fast_ops` wraps them as burn
//! operations with their own backward; its tests check values and gradients against burn's ops.

use rayon::prelude::*;

/// Shape of an NCHW tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nchw {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Nchw {
    pub fn plane(&self) -> usize {
        self.h * self.w
    }
    pub fn len(&self) -> usize {
        self.n * self.c * self.plane()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Dot product with eight independent accumulators, so that the compiler vectorizes it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += k * x` over two equal-length rows.
fn axpy(y: &mut [f32], k: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += k * x;
    }
}

/// Adds the 'same'-padded 3x3 correlation of plane `x` with `k` (row-major) into plane `y`.
fn correlate3x3(x: &[f32], k: &[f32], y: &mut [f32], h: usize, w: usize) {
    for i in 0..h {
        let out = &mut y[i * w..(i + 1) * w];
        for a in 0..3 {
            // Input row i + a - 1, when it exists.
            let Some(r) = (i + a).checked_sub(1).filter(|&r| r < h) else {
                continue;
            };
            let row = &x[r * w..(r + 1) * w];
            axpy(out, k[3 * a + 1], row);
            axpy(&mut out[1..], k[3 * a], &row[..w - 1]);
            axpy(&mut out[..w - 1], k[3 * a + 2], &row[1..]);
        }
    }
}

/// Depthwise 3x3 convolution, 'same' padding, stride 1, no bias: `weight` is `[C, 1, 3, 3]`.
pub fn depthwise3x3(x: &[f32], weight: &[f32], s: Nchw) -> Vec<f32> {
    let mut y = vec![0f32; s.len()];
    if s.is_empty() {
        return y;
    }
    y.par_chunks_mut(s.plane())
        .zip(x.par_chunks(s.plane()))
        .enumerate()
        .for_each(|(p, (y, x))| {
            let ch = p % s.c;
            correlate3x3(x, &weight[9 * ch..9 * ch + 9], y, s.h, s.w);
        });
    y
}

/// Gradient of `depthwise3x3` with respect to its input: the correlation of the output's
/// gradient with each kernel turned by 180 degrees.
pub fn depthwise3x3_input_grad(weight: &[f32], dy: &[f32], s: Nchw) -> Vec<f32> {
    let flipped: Vec<f32> = weight
        .chunks_exact(9)
        .flat_map(|k| k.iter().rev().copied())
        .collect();
    depthwise3x3(dy, &flipped, s)
}

/// Gradient of `depthwise3x3` with respect to its `[C, 1, 3, 3]` weight:
/// `dw[c, a, b] = sum over n, i, j of dy[n, c, i, j] * x[n, c, i + a - 1, j + b - 1]`.
pub fn depthwise3x3_weight_grad(x: &[f32], dy: &[f32], s: Nchw) -> Vec<f32> {
    let (h, w) = (s.h, s.w);
    let per_plane: Vec<[f64; 9]> = if s.is_empty() {
        Vec::new()
    } else {
        x.par_chunks(s.plane())
            .zip(dy.par_chunks(s.plane()))
            .map(|(x, dy)| {
                let mut g = [0f64; 9];
                for i in 0..h {
                    let d = &dy[i * w..(i + 1) * w];
                    for a in 0..3 {
                        let Some(r) = (i + a).checked_sub(1).filter(|&r| r < h) else {
                            continue;
                        };
                        let row = &x[r * w..(r + 1) * w];
                        g[3 * a] += dot(&d[1..], &row[..w - 1]) as f64;
                        g[3 * a + 1] += dot(d, row) as f64;
                        g[3 * a + 2] += dot(&d[..w - 1], &row[1..]) as f64;
                    }
                }
                g
            })
            .collect()
    };
    let mut dw = vec![0f64; 9 * s.c];
    for (p, g) in per_plane.iter().enumerate() {
        let ch = p % s.c;
        for t in 0..9 {
            dw[9 * ch + t] += g[t];
        }
    }
    dw.into_iter().map(|v| v as f32).collect()
}

/// `out[m x n] (+)= lhs[m x k] * rhs[k x n]` on one thread; strides are (column, row) in elements.
#[allow(clippy::too_many_arguments)]
fn gemm1(
    (m, n, k): (usize, usize, usize),
    out: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_cs, lhs_rs): (isize, isize),
    rhs: &[f32],
    (rhs_cs, rhs_rs): (isize, isize),
) {
    assert!(out.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    // SAFETY: the asserts and strides keep every access inside the slices; out does not alias.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Pointwise (1x1) convolution with bias: `y[n] = W x[n] + b` for `W [Co, Ci]`, one GEMM per
/// sample, the samples in parallel. `s` is the input's shape; the output is `[N, Co, H, W]`.
pub fn pointwise(x: &[f32], weight: &[f32], bias: &[f32], s: Nchw) -> Vec<f32> {
    let (co, hw) = (bias.len(), s.plane());
    let mut y = vec![0f32; s.n * co * hw];
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(co * hw)
        .zip(x.par_chunks(s.c * hw))
        .for_each(|(y, x)| {
            for (row, b) in y.chunks_exact_mut(hw).zip(bias) {
                row.fill(*b);
            }
            let (ci, hw_) = (s.c as isize, hw as isize);
            gemm1((co, hw, s.c), y, true, weight, (1, ci), x, (1, hw_));
        });
    y
}

/// Gradient of `pointwise` with respect to its input: `dx[n] = W^T dy[n]`.
pub fn pointwise_input_grad(weight: &[f32], dy: &[f32], co: usize, s: Nchw) -> Vec<f32> {
    let hw = s.plane();
    let mut dx = vec![0f32; s.len()];
    if dx.is_empty() {
        return dx;
    }
    dx.par_chunks_mut(s.c * hw)
        .zip(dy.par_chunks(co * hw))
        .for_each(|(dx, dy)| {
            let (ci, hw_) = (s.c as isize, hw as isize);
            gemm1((s.c, hw, co), dx, false, weight, (ci, 1), dy, (1, hw_));
        });
    dx
}

/// Gradients of `pointwise` with respect to its weight, `sum over n of dy[n] x[n]^T`, and its
/// bias, the sum of `dy` per output channel.
pub fn pointwise_param_grads(x: &[f32], dy: &[f32], co: usize, s: Nchw) -> (Vec<f32>, Vec<f32>) {
    let hw = s.plane();
    let zero = || (vec![0f32; co * s.c], vec![0f64; co]);
    if s.is_empty() {
        let (dw, db) = zero();
        return (dw, db.into_iter().map(|v| v as f32).collect());
    }
    let (dw, db) = x
        .par_chunks(s.c * hw)
        .zip(dy.par_chunks(co * hw))
        .fold(zero, |(mut dw, mut db), (x, dy)| {
            let hw_ = hw as isize;
            gemm1((co, s.c, hw), &mut dw, true, dy, (1, hw_), x, (hw_, 1));
            for (b, row) in db.iter_mut().zip(dy.chunks_exact(hw)) {
                *b += sum_map(row, |v| v) as f64;
            }
            (dw, db)
        })
        .reduce(zero, |(mut a, mut b), (c, d)| {
            a.iter_mut().zip(c).for_each(|(a, c)| *a += c);
            b.iter_mut().zip(d).for_each(|(b, d)| *b += d);
            (a, b)
        });
    (dw, db.into_iter().map(|v| v as f32).collect())
}

/// Per-channel sums over every plane of that channel: `f(plane) -> (a, b)` summed in f64.
fn channel_sums(
    s: Nchw,
    data: &[f32],
    other: &[f32],
    f: impl Fn(usize, &[f32], &[f32]) -> (f32, f32) + Sync,
) -> Vec<(f64, f64)> {
    let per_plane: Vec<(f32, f32)> = if s.is_empty() {
        Vec::new()
    } else {
        data.par_chunks(s.plane())
            .zip(other.par_chunks(s.plane()))
            .enumerate()
            .map(|(p, (d, o))| f(p % s.c, d, o))
            .collect()
    };
    let mut sums = vec![(0f64, 0f64); s.c];
    for (p, (a, b)) in per_plane.into_iter().enumerate() {
        sums[p % s.c].0 += a as f64;
        sums[p % s.c].1 += b as f64;
    }
    sums
}

/// Sum of `f(x)` with eight accumulators (vectorizable).
fn sum_map(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// What the forward pass of `relu_batch_norm` keeps for the backward pass and the running
/// statistics: per channel, the batch mean and (biased) variance of `relu(z)`.
#[derive(Clone, Debug)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// Training-mode `BatchNorm(ReLU(z))` with batch statistics, in two passes over `z`.
pub fn relu_batch_norm(
    z: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    s: Nchw,
) -> (Vec<f32>, BatchStats) {
    let count = (s.n * s.plane()) as f64;
    let sums = channel_sums(s, z, z, |_, z, _| {
        (sum_map(z, |v| v.max(0.0)), sum_map(z, |v| v.max(0.0).powi(2)))
    });
    let (mut mean, mut var) = (Vec::with_capacity(s.c), Vec::with_capacity(s.c));
    for (sum, sum_sq) in sums {
        let m = sum / count;
        mean.push(m as f32);
        var.push((sum_sq / count - m * m).max(0.0) as f32);
    }
    let scale: Vec<f32> = (0..s.c)
        .map(|ch| gamma[ch] / (var[ch] + eps).sqrt())
        .collect();
    let shift: Vec<f32> = (0..s.c).map(|ch| beta[ch] - mean[ch] * scale[ch]).collect();
    (relu_affine(z, &scale, &shift, s), BatchStats { mean, var })
}

/// `relu(z) * scale[c] + shift[c]`: BatchNorm(ReLU) once the statistics are known (the eval-mode
/// forward, and the second pass of the training one).
pub fn relu_affine(z: &[f32], scale: &[f32], shift: &[f32], s: Nchw) -> Vec<f32> {
    let mut y = vec![0f32; s.len()];
    if s.is_empty() {
        return y;
    }
    y.par_chunks_mut(s.plane())
        .zip(z.par_chunks(s.plane()))
        .enumerate()
        .for_each(|(p, (y, z))| {
            let (a, b) = (scale[p % s.c], shift[p % s.c]);
            for (y, z) in y.iter_mut().zip(z) {
                *y = z.max(0.0) * a + b;
            }
        });
    y
}

/// Gradients of `relu_batch_norm` with respect to `z`, `gamma` and `beta`.
pub fn relu_batch_norm_backward(
    z: &[f32],
    gamma: &[f32],
    stats: &BatchStats,
    eps: f32,
    dy: &[f32],
    s: Nchw,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let inv_std: Vec<f32> = stats.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let mean = &stats.mean;
    // Per channel: sum of dy (beta's gradient) and of dy * x_hat (gamma's gradient).
    let sums = channel_sums(s, dy, z, |ch, dy, z| {
        let (m, k) = (mean[ch], inv_std[ch]);
        let mut acc = [0f32; 8];
        let (cd, cz) = (dy.chunks_exact(8), z.chunks_exact(8));
        let tail: f32 = cd
            .remainder()
            .iter()
            .zip(cz.remainder())
            .map(|(d, z)| d * (z.max(0.0) - m) * k)
            .sum();
        for (d, z) in cd.zip(cz) {
            for l in 0..8 {
                acc[l] += d[l] * (z[l].max(0.0) - m) * k;
            }
        }
        (sum_map(dy, |v| v), acc.iter().sum::<f32>() + tail)
    });
    let dbeta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
    let dgamma: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
    let count = (s.n * s.plane()) as f32;
    let mut dz = vec![0f32; s.len()];
    if !s.is_empty() {
        dz.par_chunks_mut(s.plane())
            .zip(dy.par_chunks(s.plane()).zip(z.par_chunks(s.plane())))
            .enumerate()
            .for_each(|(p, (dz, (dy, z)))| {
                let ch = p % s.c;
                let (m, k) = (mean[ch], inv_std[ch]);
                let g = gamma[ch] * k;
                let (mean_dy, mean_dyx) = (dbeta[ch] / count, dgamma[ch] / count);
                for ((dz, &d), &z) in dz.iter_mut().zip(dy).zip(z) {
                    let x_hat = (z.max(0.0) - m) * k;
                    let grad = g * (d - mean_dy - x_hat * mean_dyx);
                    *dz = if z > 0.0 { grad } else { 0.0 };
                }
            });
    }
    (dz, dgamma, dbeta)
}

/// 2x2 max-pool, stride 2 (a trailing odd row or column is dropped, as burn and Keras do),
/// followed by inverted dropout: each output is kept with probability `1 - p` and then scaled
/// by `1 / (1 - p)`, using a mask drawn from `seed` (None: no dropout). Returns the output and,
/// per output, the window position of the maximum (0..4) plus 4 when the output was kept.
pub fn max_pool2_dropout(x: &[f32], s: Nchw, dropout: Option<(f32, u64)>) -> (Vec<f32>, Vec<u8>) {
    let (ho, wo) = (s.h / 2, s.w / 2);
    let out_plane = ho * wo;
    let mut y = vec![0f32; s.n * s.c * out_plane];
    let mut code = vec![0u8; y.len()];
    if y.is_empty() {
        return (y, code);
    }
    let (p, seed) = dropout.unwrap_or((0.0, 0));
    let scale = 1.0 / (1.0 - p);
    // Keep when a 32-bit draw is below (1 - p) * 2^32.
    let threshold = ((1.0 - p as f64) * 4294967296.0) as u64;
    y.par_chunks_mut(out_plane)
        .zip(code.par_chunks_mut(out_plane))
        .zip(x.par_chunks(s.plane()))
        .enumerate()
        .for_each(|(plane, ((y, code), x))| {
            // One independent stream per plane: the mask does not depend on thread scheduling.
            let mut rng = SplitMix64(seed ^ (plane as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for i in 0..ho {
                let (top, bottom) = (&x[2 * i * s.w..], &x[(2 * i + 1) * s.w..]);
                for j in 0..wo {
                    let window = [top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]];
                    let mut arg = 0;
                    for t in 1..4 {
                        if window[t] > window[arg] {
                            arg = t;
                        }
                    }
                    let keep = dropout.is_none() || (rng.next() >> 32) < threshold;
                    let o = i * wo + j;
                    y[o] = if keep { window[arg] * scale } else { 0.0 };
                    code[o] = arg as u8 | if keep { 4 } else { 0 };
                }
            }
        });
    (y, code)
}

/// Gradient of `max_pool2_dropout` with respect to its input.
pub fn max_pool2_dropout_backward(dy: &[f32], code: &[u8], s: Nchw, scale: f32) -> Vec<f32> {
    let (ho, wo) = (s.h / 2, s.w / 2);
    let mut dx = vec![0f32; s.len()];
    if dy.is_empty() {
        return dx;
    }
    dx.par_chunks_mut(s.plane())
        .zip(dy.par_chunks(ho * wo).zip(code.par_chunks(ho * wo)))
        .for_each(|(dx, (dy, code))| {
            for i in 0..ho {
                for j in 0..wo {
                    let c = code[i * wo + j];
                    if c & 4 != 0 {
                        let (di, dj) = ((c & 3) as usize / 2, (c & 1) as usize);
                        dx[(2 * i + di) * s.w + 2 * j + dj] = dy[i * wo + j] * scale;
                    }
                }
            }
        });
    dx
}

/// SplitMix64 (Steele, Lea and Flood 2014): the dropout masks' generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depthwise_matches_a_direct_sum() {
        let s = Nchw {
            n: 2,
            c: 3,
            h: 4,
            w: 5,
        };
        let x: Vec<f32> = (0..s.len()).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let k: Vec<f32> = (0..27).map(|i| (i as f32 - 13.0) / 7.0).collect();
        let y = depthwise3x3(&x, &k, s);
        for p in 0..s.n * s.c {
            for i in 0..s.h as isize {
                for j in 0..s.w as isize {
                    let mut want = 0.0;
                    for a in 0..3isize {
                        for b in 0..3isize {
                            let (r, q) = (i + a - 1, j + b - 1);
                            if r >= 0 && q >= 0 && r < s.h as isize && q < s.w as isize {
                                want += k[9 * (p % s.c) + (3 * a + b) as usize]
                                    * x[p * s.plane() + (r as usize) * s.w + q as usize];
                            }
                        }
                    }
                    let got = y[p * s.plane() + i as usize * s.w + j as usize];
                    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn dropout_keeps_about_one_minus_p_and_is_seeded() {
        let s = Nchw {
            n: 8,
            c: 4,
            h: 32,
            w: 32,
        };
        let x = vec![1f32; s.len()];
        let (y, code) = max_pool2_dropout(&x, s, Some((0.25, 7)));
        let kept = code.iter().filter(|&&c| c & 4 != 0).count() as f64 / code.len() as f64;
        assert!((kept - 0.75).abs() < 0.02, "kept {kept}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        assert_eq!(max_pool2_dropout(&x, s, Some((0.25, 7))).1, code);
        assert_ne!(max_pool2_dropout(&x, s, Some((0.25, 8))).1, code);
    }
}
