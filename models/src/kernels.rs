//! CPU kernels behind CancerNet's fast training path, on plain `f32` slices in NCHW order.
//!
//! Each works plane by plane (one `h x w` image of one channel of one sample), in parallel over
//! the planes with rayon (BatchNorm over the channels, a channel's planes together), and writes
//! its result into a fresh buffer. `fast_ops` wraps them as burn
//! operations with their own backward; its tests check values and gradients against burn's ops.
//!
//! The public kernels are compiled twice, for AVX2 + FMA and for baseline x86-64, and pick one
//! at run time (`multiversion`). Closures defined inside a kernel inherit its target features,
//! so the per-plane loops that rayon runs are 8 floats wide where the CPU allows.

use multiversion::multiversion;
use rayon::prelude::*;
use std::mem::MaybeUninit;

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

/// A new buffer of `len` floats whose chunks of `plane` floats `f(index, chunk)` fills in
/// parallel. Every kernel here writes the whole of each chunk it is given, so the buffer is
/// not zero-filled first (that memset was ~8% of a training step).
fn new_planes(
    len: usize,
    plane: usize,
    f: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    if len > 0 {
        v.spare_capacity_mut()[..len]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(p, chunk)| f(p, chunk));
    }
    // SAFETY: every element of 0..len was written by `f` (see above).
    unsafe { v.set_len(len) };
    v
}

/// A written buffer as one to be written.
///
/// # Safety
/// Only initialized values may be written through the result.
unsafe fn as_uninit(v: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; the caller writes initialized values only.
    unsafe { &mut *(v as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// A buffer once every element has been written.
///
/// # Safety
/// Every element of `v` must be initialized.
unsafe fn assume_init(v: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: same layout; the caller guarantees initialization.
    unsafe { &mut *(v as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A backward pass's input gradient of `len` floats, cut into `tasks` equal chunks that the
/// tasks write whole (so `buf` is not zero-filled); when the gradient is not `wanted`, `tasks`
/// empty chunks, which the tasks skip. The caller sets `buf`'s length once they are written.
fn input_grad_chunks(
    buf: &mut Vec<f32>,
    wanted: bool,
    len: usize,
    tasks: usize,
) -> Vec<&mut [MaybeUninit<f32>]> {
    if wanted && len > 0 {
        buf.reserve_exact(len);
        buf.spare_capacity_mut()[..len]
            .chunks_mut(len / tasks)
            .collect()
    } else {
        (0..tasks)
            .map(|_| &mut [] as &mut [MaybeUninit<f32>])
            .collect()
    }
}

/// `buf` cut into planes of `plane` elements, grouped by channel: group `ch` holds channel
/// `ch`'s plane of every sample, in sample order (in NCHW, plane `p` belongs to channel `p % c`).
fn channel_groups<T>(buf: &mut [T], plane: usize, c: usize) -> Vec<Vec<&mut [T]>> {
    let mut groups: Vec<Vec<&mut [T]>> = (0..c).map(|_| Vec::new()).collect();
    if plane > 0 {
        for (p, chunk) in buf.chunks_mut(plane).enumerate() {
            groups[p % c].push(chunk);
        }
    }
    groups
}

/// Channel `ch`'s plane of every sample of `x` (shaped `s`), in sample order.
#[inline(always)]
fn channel_planes(x: &[f32], ch: usize, s: Nchw) -> impl Iterator<Item = &[f32]> {
    let plane = s.plane();
    (0..s.n).map(move |n| &x[(n * s.c + ch) * plane..(n * s.c + ch + 1) * plane])
}

/// A new buffer shaped `s` written one channel at a time, the channels in parallel: `f(ch,
/// planes)` writes every element of channel `ch`'s planes and returns a per-channel result.
/// BatchNorm works per channel: its second pass over a channel's planes (~300 KB for
/// CancerNet's first block) then reads them from the core's cache, not from memory.
fn new_by_channel<R: Send>(
    s: Nchw,
    f: impl Fn(usize, &mut [&mut [MaybeUninit<f32>]]) -> R + Sync,
) -> (Vec<f32>, Vec<R>) {
    let mut v = Vec::with_capacity(s.len());
    let results = channel_groups(&mut v.spare_capacity_mut()[..s.len()], s.plane(), s.c)
        .into_par_iter()
        .enumerate()
        .map(|(ch, mut planes)| f(ch, &mut planes))
        .collect();
    // SAFETY: `f` wrote every element of every plane, and the planes cover 0..len.
    unsafe { v.set_len(s.len()) };
    (v, results)
}

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

thread_local! {
    /// Each worker's scratch buffer (padded planes, a channel's expanded gradient), kept in cache.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
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

/// Sum of `f(a[i], b[i])` with eight accumulators (vectorizable).
#[inline(always)]
fn sum_map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += f(x[l], y[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

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
fn pool_plane(
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
fn unpool_plane(
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

    /// Every kernel's output, gradients included, is the same bits whatever the thread count
    /// (and however rayon splits the work): training repeats byte for byte at the default
    /// `threads: 0`. The reductions over samples are where this can break.
    #[test]
    fn kernels_give_the_same_bits_on_any_thread_count() {
        let s = Nchw {
            n: 37,
            c: 12,
            h: 6,
            w: 10,
        };
        let co = 9;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        };
        let (x, dw_in, wp, b) = (rand(s.len()), rand(9 * s.c), rand(co * s.c), rand(co));
        let dy_p = rand(s.n * co * s.plane());
        let dy_d = rand(s.len());
        let all = || {
            let (dxp, dwp, dbp) = pointwise_backward(&x, &wp, &dy_p, co, s, true);
            let (dxd, dwd) = depthwise3x3_backward(&x, &dw_in, &dy_d, s, true);
            let y = pointwise(&x, &wp, &b, s);
            let gamma: Vec<f32> = (0..s.c).map(|i| 1.0 + i as f32 / 10.0).collect();
            let stats = relu_batch_norm(&x, &gamma, &vec![0.1; s.c], 1e-3, s);
            (
                dxp,
                dwp,
                dbp,
                dxd,
                dwd,
                y,
                stats.0,
                stats.1.mean,
                stats.1.var,
            )
        };
        let bits = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let out = pool.install(all);
            format!("{:?}", out)
        };
        let one = bits(1);
        for threads in [2, 3, 8] {
            assert!(bits(threads) == one, "{threads} threads differ from 1");
        }
    }
}
