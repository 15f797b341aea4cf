//! Pointwise (1x1) convolution with bias and its gradients: one single-threaded GEMM per sample
//! (the `gemm` crate), the samples in parallel.

use super::buffers::{as_uninit, assume_init, input_grad_chunks, new_planes};
use super::{Nchw, sum_map2};
use multiversion::multiversion;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `out[m x n] (+)= lhs[m x k] * rhs[k x n]` on one thread; strides are (column, row) in elements.
/// `out` may be uninitialized unless `accumulate` (gemm then only writes it).
#[allow(clippy::too_many_arguments)]
fn gemm1(
    (m, n, k): (usize, usize, usize),
    out: &mut [MaybeUninit<f32>],
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
            out.as_mut_ptr().cast::<f32>(),
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
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn pointwise(x: &[f32], weight: &[f32], bias: &[f32], s: Nchw) -> Vec<f32> {
    let (co, hw) = (bias.len(), s.plane());
    new_planes(s.n * co * hw, co * hw, |n, y| {
        let x = &x[n * s.c * hw..(n + 1) * s.c * hw];
        let (ci, hw_) = (s.c as isize, hw as isize);
        gemm1((co, hw, s.c), y, false, weight, (1, ci), x, (1, hw_));
        // SAFETY: the GEMM wrote every element. The bias is added while the sample's output
        // is in cache (filling it in first cost a pass over cold memory).
        let y = unsafe { assume_init(y) };
        for (row, b) in y.chunks_exact_mut(hw).zip(bias) {
            row.iter_mut().for_each(|v| *v += b);
        }
    })
}

/// Samples per task in `pointwise_backward`: the weight and bias gradients are summed within a
/// group in sample order, then over the groups in group order. The groups do not depend on the
/// thread count or on how rayon splits the work, so the sums (and training) are the same bits
/// on every run (a rayon `fold`/`reduce` here made each run differ in the last bits).
const SAMPLES_PER_TASK: usize = 4;

/// Gradients of `pointwise`: with respect to its input, `dx[n] = W^T dy[n]` (when `input_grad`),
/// its weight, `sum over n of dy[n] x[n]^T`, and its bias, the sum of `dy` per output channel. One
/// task per group of samples does all three while each `dy[n]` is in cache.
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn pointwise_backward(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    co: usize,
    s: Nchw,
    input_grad: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let (hw, ci) = (s.plane(), s.c);
    if hw == 0 {
        // Planes of no pixels: nothing to sum (and no rows to cut them into).
        return (input_grad.then(Vec::new), vec![0.0; co * ci], vec![0.0; co]);
    }
    let mut dx = Vec::new();
    let dx_chunks = input_grad_chunks(&mut dx, input_grad, s.len(), s.n);
    let mut tasks: Vec<_> = dx_chunks.into_iter().enumerate().collect();
    let partial: Vec<(Vec<f32>, Vec<f64>)> = tasks
        .par_chunks_mut(SAMPLES_PER_TASK)
        .map(|group| {
            let (mut dw, mut db) = (vec![0f32; co * ci], vec![0f64; co]);
            for (n, dxn) in group.iter_mut() {
                let n = *n;
                let x = &x[n * ci * hw..(n + 1) * ci * hw];
                let dy = &dy[n * co * hw..(n + 1) * co * hw];
                let hw_ = hw as isize;
                if !dxn.is_empty() {
                    gemm1(
                        (ci, hw, co),
                        dxn,
                        false,
                        weight,
                        (ci as isize, 1),
                        dy,
                        (1, hw_),
                    );
                }
                if ci <= 4 {
                    // A few input channels (the image's three): plain dot products read dy
                    // once, where the GEMM would first copy (pack) all of it.
                    for (c, row) in dy.chunks_exact(hw).enumerate() {
                        for (i, plane) in x.chunks_exact(hw).enumerate() {
                            dw[c * ci + i] += sum_map2(row, plane, |a, b| a * b);
                        }
                    }
                } else {
                    // SAFETY: dw is initialized; the GEMM reads it and writes floats.
                    let dw = unsafe { as_uninit(&mut dw) };
                    gemm1((co, ci, hw), dw, true, dy, (1, hw_), x, (hw_, 1));
                }
                for (b, row) in db.iter_mut().zip(dy.chunks_exact(hw)) {
                    *b += sum_map2(row, row, |v, _| v) as f64;
                }
            }
            (dw, db)
        })
        .collect();
    let mut parts = partial.into_iter();
    let (mut dw, mut db) = parts
        .next()
        .unwrap_or_else(|| (vec![0f32; co * ci], vec![0f64; co]));
    for (w, b) in parts {
        dw.iter_mut().zip(w).for_each(|(a, c)| *a += c);
        db.iter_mut().zip(b).for_each(|(a, c)| *a += c);
    }
    if input_grad {
        // SAFETY: every sample's GEMM wrote its whole chunk of dx.
        unsafe { dx.set_len(s.len()) };
    }
    let db = db.into_iter().map(|v| v as f32).collect();
    (input_grad.then_some(dx), dw, db)
}
