//! Training-mode BatchNorm after a ReLU, one channel per task (its statistics need every sample's
//! plane of it), forward (alone or with a block's max-pool + dropout) and backward, and the
//! eval-mode affine map.

use super::buffers::{
    SCRATCH, as_uninit, channel_groups, channel_planes, new_by_channel, new_planes,
};
use super::pool::{pool_plane, unpool_plane};
use super::{Nchw, sum_map2};
use multiversion::multiversion;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// What the forward pass of a training-mode BatchNorm(ReLU) keeps for the backward pass and the
/// running statistics: per channel, the batch mean and (biased) variance of `relu(z)`.
#[derive(Clone, Debug)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// Mean and (biased) variance of `relu(z)` over one channel's planes: f32 sums per plane, f64
/// across planes.
#[inline(always)]
fn relu_moments<'a>(planes: impl Iterator<Item = &'a [f32]>, s: Nchw) -> (f32, f32) {
    let (mut sum, mut sum_sq) = (0f64, 0f64);
    for z in planes {
        sum += sum_map2(z, z, |v, _| v.max(0.0)) as f64;
        sum_sq += sum_map2(z, z, |v, _| v.max(0.0).powi(2)) as f64;
    }
    let count = (s.n * s.plane()) as f64;
    let m = sum / count;
    (m as f32, (sum_sq / count - m * m).max(0.0) as f32)
}

/// One channel of BatchNorm with given statistics, as the affine map `x * scale + shift`.
#[inline(always)]
fn affine(gamma: f32, beta: f32, mean: f32, var: f32, eps: f32) -> (f32, f32) {
    let scale = gamma / (var + eps).sqrt();
    (scale, beta - mean * scale)
}

/// BatchNorm with given statistics as per-channel `(scale, shift)` vectors.
pub fn bn_affine(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    (0..gamma.len())
        .map(|c| affine(gamma[c], beta[c], mean[c], var[c], eps))
        .unzip()
}

/// Per-channel results `(mean, var)` as `BatchStats`.
fn batch_stats(per_channel: Vec<(f32, f32)>) -> BatchStats {
    let (mean, var) = per_channel.into_iter().unzip();
    BatchStats { mean, var }
}

/// Training-mode `BatchNorm(ReLU(z))` with batch statistics: per channel, the statistics,
/// then the normalized planes (read again from cache).
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn relu_batch_norm(
    z: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    s: Nchw,
) -> (Vec<f32>, BatchStats) {
    let (y, per_channel) = new_by_channel(s, |ch, ys| {
        let (mean, var) = relu_moments(channel_planes(z, ch, s), s);
        let (a, b) = affine(gamma[ch], beta[ch], mean, var, eps);
        for (y, z) in ys.iter_mut().zip(channel_planes(z, ch, s)) {
            relu_affine_plane(z, a, b, y);
        }
        (mean, var)
    });
    (y, batch_stats(per_channel))
}

/// `relu_batch_norm` then `max_pool2_dropout`, without storing the normalized tensor: a block's
/// last layer, per channel the statistics then one pass that normalizes and pools.
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn relu_batch_norm_pool(
    z: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    s: Nchw,
    dropout: Option<(f32, u64)>,
) -> (Vec<f32>, Vec<u8>, BatchStats) {
    let out_plane = (s.h / 2) * (s.w / 2);
    let mut y = Vec::with_capacity(s.n * s.c * out_plane);
    let mut code = vec![0u8; s.n * s.c * out_plane];
    let ys = channel_groups(&mut y.spare_capacity_mut()[..code.len()], out_plane, s.c);
    let codes = channel_groups(&mut code, out_plane, s.c);
    let per_channel: Vec<(f32, f32)> = ys
        .into_par_iter()
        .zip(codes)
        .enumerate()
        .map(|(ch, (ys, codes))| {
            let (mean, var) = relu_moments(channel_planes(z, ch, s), s);
            let (a, b) = affine(gamma[ch], beta[ch], mean, var, eps);
            for (n, ((y, code), z)) in ys
                .into_iter()
                .zip(codes)
                .zip(channel_planes(z, ch, s))
                .enumerate()
            {
                pool_plane(z, y, code, n * s.c + ch, s, dropout, |v| v.max(0.0) * a + b);
            }
            (mean, var)
        })
        .collect();
    // SAFETY: `pool_plane` wrote every element of every output plane.
    unsafe { y.set_len(code.len()) };
    (y, code, batch_stats(per_channel))
}

/// `relu(z) * scale[c] + shift[c]`: BatchNorm(ReLU) once the statistics are known (the eval-mode
/// forward, and the second pass of the training one).
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn relu_affine(z: &[f32], scale: &[f32], shift: &[f32], s: Nchw) -> Vec<f32> {
    let plane = s.plane();
    new_planes(s.len(), plane, |p, y| {
        let (a, b) = (scale[p % s.c], shift[p % s.c]);
        relu_affine_plane(&z[p * plane..(p + 1) * plane], a, b, y)
    })
}

/// `y = relu(z) * a + b` over one plane.
#[inline(always)]
fn relu_affine_plane(z: &[f32], a: f32, b: f32, y: &mut [MaybeUninit<f32>]) {
    for (y, z) in y.iter_mut().zip(z) {
        y.write(z.max(0.0) * a + b);
    }
}

/// The gradient reaching a BatchNorm(ReLU)'s output.
#[derive(Clone, Copy)]
pub enum OutputGrad<'a> {
    /// Dense, shaped like the input.
    Dense(&'a [f32]),
    /// That of a following `max_pool2_dropout`'s output, with its window codes and scale.
    Pooled {
        dy: &'a [f32],
        code: &'a [u8],
        scale: f32,
    },
}

impl OutputGrad<'_> {
    /// Channel `ch`'s planes of the dense gradient, one per sample: slices of it, or the pooled
    /// one expanded into `scratch` (once, for both passes of the backward).
    #[inline(always)]
    fn channel<'a>(&'a self, ch: usize, s: Nchw, scratch: &'a mut Vec<f32>) -> Vec<&'a [f32]> {
        match *self {
            OutputGrad::Dense(dy) => channel_planes(dy, ch, s).collect(),
            OutputGrad::Pooled { dy, code, scale } => {
                let plane = s.plane();
                scratch.resize(s.n * plane, 0.0); // every cell is written below
                for (n, out) in scratch.chunks_exact_mut(plane).enumerate() {
                    // SAFETY: written with floats only.
                    let out = unsafe { as_uninit(out) };
                    unpool_plane(dy, code, scale, n * s.c + ch, s, out);
                }
                scratch.chunks_exact(plane).collect()
            }
        }
    }
}

/// Gradients of a training-mode BatchNorm(ReLU(z)) with respect to `z`, `gamma` and `beta`,
/// one channel at a time: the sums, then `dz` from the same planes, still in cache.
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn relu_batch_norm_backward(
    z: &[f32],
    gamma: &[f32],
    stats: &BatchStats,
    eps: f32,
    grad: OutputGrad,
    s: Nchw,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let count = (s.n * s.plane()) as f32;
    let (dz, sums) = new_by_channel(s, |ch, dzs| {
        SCRATCH.with_borrow_mut(|scratch| {
            let dys = grad.channel(ch, s, scratch);
            let (m, k) = (stats.mean[ch], 1.0 / (stats.var[ch] + eps).sqrt());
            // beta's gradient (sum of dy) and gamma's (sum of dy * x_hat).
            let (mut dbeta, mut dgamma) = (0f64, 0f64);
            for (dy, z) in dys.iter().zip(channel_planes(z, ch, s)) {
                dbeta += sum_map2(dy, dy, |d, _| d) as f64;
                dgamma += sum_map2(dy, z, |d, z| d * (z.max(0.0) - m) * k) as f64;
            }
            let (dbeta, dgamma) = (dbeta as f32, dgamma as f32);
            let g = gamma[ch] * k;
            let (mean_dy, mean_dyx) = (dbeta / count, dgamma / count);
            for ((dz, dy), z) in dzs.iter_mut().zip(&dys).zip(channel_planes(z, ch, s)) {
                for ((dz, &d), &z) in dz.iter_mut().zip(*dy).zip(z) {
                    let x_hat = (z.max(0.0) - m) * k;
                    let grad = g * (d - mean_dy - x_hat * mean_dyx);
                    dz.write(if z > 0.0 { grad } else { 0.0 });
                }
            }
            (dgamma, dbeta)
        })
    });
    let (dgamma, dbeta) = sums.into_iter().unzip();
    (dz, dgamma, dbeta)
}
