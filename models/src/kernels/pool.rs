//! 2x2 max-pool (stride 2) followed by inverted dropout, and its gradient, one plane per task;
//! the dropout mask is drawn per plane from the seed, so it does not depend on scheduling.

use super::Nchw;
use super::buffers::new_planes;
use multiversion::multiversion;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// 2x2 max-pool, stride 2 (a trailing odd row or column is dropped, as burn and Keras do),
/// followed by inverted dropout: each output is kept with probability `1 - p` and then scaled
/// by `1 / (1 - p)`, using a mask drawn from `seed` (None: no dropout; `p` is rounded to a
/// multiple of 2^-16, the draws being 16-bit). Returns the output and, per output, the window
/// position of the maximum (0..4) plus 4 when the output was kept.
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn max_pool2_dropout(x: &[f32], s: Nchw, dropout: Option<(f32, u64)>) -> (Vec<f32>, Vec<u8>) {
    let out_plane = (s.h / 2) * (s.w / 2);
    let mut code = vec![0u8; s.n * s.c * out_plane];
    if code.is_empty() {
        return (Vec::new(), code);
    }
    let mut y = Vec::with_capacity(code.len());
    y.spare_capacity_mut()[..code.len()]
        .par_chunks_mut(out_plane)
        .zip(code.par_chunks_mut(out_plane))
        .zip(x.par_chunks(s.plane()))
        .enumerate()
        .for_each(|(p, ((y, code), x))| pool_plane(x, y, code, p, s, dropout, |v| v));
    // SAFETY: `pool_plane` wrote every element of every output plane.
    unsafe { y.set_len(code.len()) };
    (y, code)
}

/// Plane `p` of `max_pool2_dropout` of `f(x)`: `x` is the input plane, `y` and `code` the output
/// plane and its window codes.
#[inline(always)]
pub(super) fn pool_plane(
    x: &[f32],
    y: &mut [MaybeUninit<f32>],
    code: &mut [u8],
    p: usize,
    s: Nchw,
    dropout: Option<(f32, u64)>,
    f: impl Fn(f32) -> f32,
) {
    let (ho, wo) = (s.h / 2, s.w / 2);
    let (drop, seed) = dropout.unwrap_or((0.0, 0));
    let scale = 1.0 / (1.0 - drop);
    // Keep when a 16-bit draw is below (1 - p) * 2^16; one 64-bit number gives four draws.
    let threshold = ((1.0 - drop as f64) * 65536.0).round() as u64;
    // One stream per plane: the mask does not depend on thread scheduling.
    let mut rng = SplitMix64(seed ^ (p as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (mut bits, mut left) = (0u64, 0);
    let mut keep = || {
        dropout.is_none() || {
            if left == 0 {
                (bits, left) = (rng.next(), 4);
            }
            let draw = bits & 0xFFFF;
            (bits, left) = (bits >> 16, left - 1);
            draw < threshold
        }
    };
    for i in 0..ho {
        let top = &x[2 * i * s.w..2 * i * s.w + 2 * wo];
        let bottom = &x[(2 * i + 1) * s.w..(2 * i + 1) * s.w + 2 * wo];
        let (y, code) = (
            &mut y[i * wo..(i + 1) * wo],
            &mut code[i * wo..(i + 1) * wo],
        );
        // Eight windows at a time (their draws first, so the pooling vectorizes), then one.
        let mut j = 0;
        while j + 8 <= wo {
            let kept: [bool; 8] = std::array::from_fn(|_| keep());
            let (t, b) = (&top[2 * j..2 * j + 16], &bottom[2 * j..2 * j + 16]);
            pool_windows(t, b, kept, scale, &f, &mut y[j..j + 8], &mut code[j..j + 8]);
            j += 8;
        }
        for j in j..wo {
            let (t, b) = (&top[2 * j..2 * j + 2], &bottom[2 * j..2 * j + 2]);
            pool_windows(t, b, [keep()], scale, &f, &mut y[j..=j], &mut code[j..=j]);
        }
    }
}

/// `L` neighbouring 2x2 windows: their rows' cells in `top` and `bottom`, whether each is kept
/// by dropout; writes the outputs and window codes.
#[inline(always)]
fn pool_windows<const L: usize>(
    top: &[f32],
    bottom: &[f32],
    kept: [bool; L],
    scale: f32,
    f: &impl Fn(f32) -> f32,
    y: &mut [MaybeUninit<f32>],
    code: &mut [u8],
) {
    let (top, bottom) = (&top[..2 * L], &bottom[..2 * L]);
    let (y, code) = (&mut y[..L], &mut code[..L]);
    for l in 0..L {
        // The first maximum in window order (top-left, top-right, bottom-left, bottom-right),
        // as burn picks it.
        let (a, b) = (f(top[2 * l]), f(top[2 * l + 1]));
        let (c, d) = (f(bottom[2 * l]), f(bottom[2 * l + 1]));
        let (m1, i1) = if b > a { (b, 1) } else { (a, 0) };
        let (m2, i2) = if d > c { (d, 3) } else { (c, 2) };
        let (m, arg) = if m2 > m1 { (m2, i2) } else { (m1, i1) };
        y[l].write(if kept[l] { m * scale } else { 0.0 });
        code[l] = arg | if kept[l] { 4 } else { 0 };
    }
}

/// Gradient of `max_pool2_dropout` with respect to its input.
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn max_pool2_dropout_backward(dy: &[f32], code: &[u8], s: Nchw, scale: f32) -> Vec<f32> {
    new_planes(s.len(), s.plane(), |p, dx| {
        unpool_plane(dy, code, scale, p, s, dx)
    })
}

/// Plane `p` of the gradient of `max_pool2_dropout`'s input, written to `dx`.
#[inline(always)]
pub(super) fn unpool_plane(
    dy: &[f32],
    code: &[u8],
    scale: f32,
    p: usize,
    s: Nchw,
    dx: &mut [MaybeUninit<f32>],
) {
    let (ho, wo, w) = (s.h / 2, s.w / 2, s.w);
    let (dy, code) = (
        &dy[p * ho * wo..(p + 1) * ho * wo],
        &code[p * ho * wo..(p + 1) * ho * wo],
    );
    // Zeros everywhere (an odd side's last row or column is in no window), then each window's
    // gradient at its maximum: the two rows of a window row are one slice.
    for v in dx.iter_mut() {
        v.write(0.0);
    }
    for i in 0..ho {
        let rows = &mut dx[2 * i * w..(2 * i + 2) * w];
        let (dy, code) = (&dy[i * wo..(i + 1) * wo], &code[i * wo..(i + 1) * wo]);
        for j in 0..wo {
            let c = code[j] as usize;
            // Dropped outputs pass no gradient: a factor, not a branch (a quarter of them are
            // dropped at random, which a branch predictor cannot follow).
            let g = dy[j] * [0.0, scale][c >> 2 & 1];
            rows[(c >> 1 & 1) * w + 2 * j + (c & 1)].write(g);
        }
    }
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
