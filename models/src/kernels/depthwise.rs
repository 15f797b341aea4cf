//! Depthwise 3x3 convolution ('same' padding, stride 1, no bias) and its gradients, one plane
//! per task: each plane is padded with a border of zeros once, then correlated.

use super::buffers::{SCRATCH, input_grad_chunks, new_planes};
use super::{Nchw, sum_map2};
use multiversion::multiversion;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `plane` (h x w) with a border of one zero on every side, `(h + 2) x (w + 2)`, written to
/// `out`, which has exactly that size.
#[inline(always)]
fn padded(plane: &[f32], h: usize, w: usize, out: &mut [f32]) {
    let pw = w + 2;
    // Only the border needs zeroing: the buffer is reused and every other cell is overwritten.
    out[..pw].fill(0.0);
    out[(h + 1) * pw..].fill(0.0);
    for i in 0..h {
        let row = &mut out[(i + 1) * pw..(i + 2) * pw];
        row[0] = 0.0;
        row[1..=w].copy_from_slice(&plane[i * w..(i + 1) * w]);
        row[w + 1] = 0.0;
    }
}

/// The 'same' 3x3 correlation of one padded plane with `k` (row-major), written to `y`.
#[inline(always)]
fn correlate3x3(p: &[f32], k: &[f32], y: &mut [MaybeUninit<f32>], h: usize, w: usize) {
    let pw = w + 2;
    let k: &[f32; 9] = k.try_into().expect("nine taps");
    // Outputs j..j + L of one row from the three padded rows, L = 1 or 8 (one vector).
    #[inline(always)]
    fn taps<const L: usize>(k: &[f32; 9], rows: [&[f32]; 3], j: usize) -> [f32; L] {
        let mut v = [0f32; L];
        for (a, row) in rows.iter().enumerate() {
            let r = &row[j..j + L + 2];
            for l in 0..L {
                v[l] += k[3 * a] * r[l] + k[3 * a + 1] * r[l + 1] + k[3 * a + 2] * r[l + 2];
            }
        }
        v
    }
    for i in 0..h {
        let rows = [0, 1, 2].map(|a| &p[(i + a) * pw..(i + a + 1) * pw]);
        let out = &mut y[i * w..(i + 1) * w];
        if w < 8 {
            for j in 0..w {
                out[j].write(taps::<1>(k, rows, j)[0]);
            }
            continue;
        }
        // Eight outputs at a time; the last eight start at w - 8 and may overlap the group
        // before (writing the same values again) instead of a scalar tail.
        for j in (0..w).step_by(8).map(|j| j.min(w - 8)) {
            for (o, v) in out[j..j + 8].iter_mut().zip(taps::<8>(k, rows, j)) {
                o.write(v);
            }
        }
    }
}

/// Depthwise 3x3 convolution, 'same' padding, stride 1, no bias: `weight` is `[C, 1, 3, 3]`.
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn depthwise3x3(x: &[f32], weight: &[f32], s: Nchw) -> Vec<f32> {
    let (h, w) = (s.h, s.w);
    new_planes(s.len(), s.plane(), |p, y| {
        SCRATCH.with_borrow_mut(|pad| {
            pad.resize((h + 2) * (w + 2), 0.0);
            padded(&x[p * h * w..(p + 1) * h * w], h, w, pad);
            let ch = p % s.c;
            correlate3x3(pad, &weight[9 * ch..9 * ch + 9], y, h, w);
        })
    })
}

/// Gradients of `depthwise3x3`: with respect to its input when `input_grad` (the correlation of
/// the output's gradient with each kernel turned by 180 degrees), and to its `[C, 1, 3, 3]`
/// weight, `dw[c, a, b] = sum over n, i, j of dy[n, c, i, j] * x[n, c, i + a - 1, j + b - 1]`.
/// One pass per plane: the padded `dy` serves both.
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn depthwise3x3_backward(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    s: Nchw,
    input_grad: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let (h, w, plane) = (s.h, s.w, s.plane());
    let flipped: Vec<f32> = weight
        .chunks_exact(9)
        .flat_map(|k| k.iter().rev().copied())
        .collect();
    let mut dx = Vec::new();
    let dx_planes = input_grad_chunks(&mut dx, input_grad, s.len(), s.n * s.c);
    let per_plane: Vec<[f32; 9]> = dx_planes
        .into_par_iter()
        .enumerate()
        .map(|(p, dx)| {
            SCRATCH.with_borrow_mut(|buf| {
                let padded_len = (h + 2) * (w + 2);
                buf.resize(2 * padded_len, 0.0);
                let (pad_dy, pad_x) = buf.split_at_mut(padded_len);
                padded(&dy[p * plane..(p + 1) * plane], h, w, pad_dy);
                padded(&x[p * plane..(p + 1) * plane], h, w, pad_x);
                if !dx.is_empty() {
                    let ch = p % s.c;
                    correlate3x3(pad_dy, &flipped[9 * ch..9 * ch + 9], dx, h, w);
                }
                tap_sums(pad_x, pad_dy, h, w)
            })
        })
        .collect();
    if input_grad {
        // SAFETY: `correlate3x3` wrote every element of every plane of dx.
        unsafe { dx.set_len(s.len()) };
    }
    let mut dw = vec![0f64; 9 * s.c];
    for (p, g) in per_plane.iter().enumerate() {
        let ch = p % s.c;
        for t in 0..9 {
            dw[9 * ch + t] += g[t] as f64;
        }
    }
    (
        input_grad.then_some(dx),
        dw.into_iter().map(|v| v as f32).collect(),
    )
}

/// The nine sums `sum over i, j of dy[i, j] * pad_x[i + a, j + b]` of one plane, from the padded
/// planes of x and dy. Seen from its first inner cell at the padded row stride, `pad_dy` is dy
/// with two zero columns after each row, so each sum is one dot product over flat memory: the
/// zeros cancel the terms that wrap from one row into the next.
#[inline(always)]
fn tap_sums(pad_x: &[f32], pad_dy: &[f32], h: usize, w: usize) -> [f32; 9] {
    if h == 0 {
        return [0.0; 9]; // no rows: no first inner cell to start from
    }
    let pw = w + 2;
    let len = h * pw - 2; // up to dy's last cell
    let d = &pad_dy[pw + 1..pw + 1 + len];
    std::array::from_fn(|t| {
        let (a, b) = (t / 3, t % 3);
        sum_map2(d, &pad_x[a * pw + b..a * pw + b + len], |d, x| d * x)
    })
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
}
