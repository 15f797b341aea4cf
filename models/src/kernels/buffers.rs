//! The buffers the kernels write: filled in parallel, a plane or a channel per task, without
//! being zeroed first, and each worker's scratch space.

use super::Nchw;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A new buffer of `len` floats whose chunks of `plane` floats `f(index, chunk)` fills in
/// parallel. Every kernel here writes the whole of each chunk it is given, so the buffer is
/// not zero-filled first (that memset was ~8% of a training step).
pub(super) fn new_planes(
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
pub(super) unsafe fn as_uninit(v: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; the caller writes initialized values only.
    unsafe { &mut *(v as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// A buffer once every element has been written.
///
/// # Safety
/// Every element of `v` must be initialized.
pub(super) unsafe fn assume_init(v: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: same layout; the caller guarantees initialization.
    unsafe { &mut *(v as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A backward pass's input gradient of `len` floats, cut into `tasks` equal chunks that the
/// tasks write whole (so `buf` is not zero-filled); when the gradient is not `wanted`, `tasks`
/// empty chunks, which the tasks skip. The caller sets `buf`'s length once they are written.
pub(super) fn input_grad_chunks(
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
pub(super) fn channel_groups<T>(buf: &mut [T], plane: usize, c: usize) -> Vec<Vec<&mut [T]>> {
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
pub(super) fn channel_planes(x: &[f32], ch: usize, s: Nchw) -> impl Iterator<Item = &[f32]> {
    let plane = s.plane();
    (0..s.n).map(move |n| &x[(n * s.c + ch) * plane..(n * s.c + ch + 1) * plane])
}

/// A new buffer shaped `s` written one channel at a time, the channels in parallel: `f(ch,
/// planes)` writes every element of channel `ch`'s planes and returns a per-channel result.
/// BatchNorm works per channel: its second pass over a channel's planes (~300 KB for
/// CancerNet's first block) then reads them from the core's cache, not from memory.
pub(super) fn new_by_channel<R: Send>(
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

thread_local! {
    /// Each worker's scratch buffer (padded planes, a channel's expanded gradient), kept in cache.
    pub(super) static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}
