//! Sums the other kernels share: adding up the parts a kernel split its sums into, and per-channel
//! sums of an NCHW tensor. Each in a fixed order (no atomics), so a run gives the same bytes
//! every time.

use super::{MAX_CUBES_YZ, elementwise, empty};
use burn::tensor::Shape;
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

/// Adds up the cube's units' values in shared memory in a tree, for each of `lanes` lanes: each
/// unit has put its value of lane l at `shared[l * slots + unit]` (`slots`: a power of two, at
/// least the cube's units). Lane l's sum ends in `shared[l * slots]`, seen by every unit. The
/// order is fixed by the launch: the same bytes every run.
#[cube]
pub(super) fn tree_sum(
    shared: &mut SharedMemory<f32>,
    #[comptime] lanes: usize,
    #[comptime] slots: usize,
) {
    let unit = UNIT_POS as usize;
    let units = CUBE_DIM as usize;
    // The slots past the cube's units (fewer than its units) start at zero.
    if unit + units < slots {
        #[unroll]
        for l in 0..lanes {
            shared[l * slots + unit + units] = 0.0f32;
        }
    }
    sync_cube();
    // A runtime value: a comptime one cannot change.
    let mut half = (slots / 2usize).runtime();
    while half > 0usize {
        if unit < half {
            #[unroll]
            for l in 0..lanes {
                shared[l * slots + unit] += shared[l * slots + unit + half];
            }
        }
        sync_cube();
        half /= 2usize;
    }
}

/// The sum of a vector's lanes, in order.
#[cube]
pub(super) fn lanes_sum<N: Size>(v: Vector<f32, N>) -> f32 {
    let mut sum = 0.0f32;
    #[unroll]
    for l in 0..v.vector_size() {
        sum += v[l];
    }
    sum
}

/// `out[l] = sum over s of parts[s, l]`, in order of s. One unit per value.
#[cube(launch)]
fn sum_leading_kernel(parts: &Tensor<f32>, out: &mut Tensor<f32>) {
    let l = ABSOLUTE_POS;
    if l >= out.len() {
        terminate!();
    }
    let len = out.len();
    let mut sum = 0.0f32;
    for s in 0..parts.shape(0) {
        sum += parts[s * len + l];
    }
    out[l] = sum;
}

/// One part of the per-channel sums of t `[n, c, positions]`: cube (c, s) sums the flattened
/// positions `s * chunk .. (s + 1) * chunk` of channel c, its units taking them in turn, then
/// adds its units' sums in a tree in shared memory (of `slots`, a power of two at least the
/// cube's size) into `partial[s, c]`.
#[cube(launch)]
fn channel_sums_kernel(
    t: &Tensor<f32>,
    partial: &mut Tensor<f32>,
    chunk: usize,
    #[comptime] slots: usize,
) {
    let channels = t.shape(1);
    let positions = t.shape(2);
    let total = t.shape(0) * positions;
    let channel = CUBE_POS_X as usize;
    let part = CUBE_POS_Y as usize;
    let unit = UNIT_POS as usize;
    let units = CUBE_DIM as usize;
    let mut end = (part + 1usize) * chunk;
    if end > total {
        end = total;
    }
    let mut sum = 0.0f32;
    let mut m = part * chunk + unit;
    while m < end {
        sum += t[((m / positions) * channels + channel) * positions + m % positions];
        m += units;
    }
    let mut shared = SharedMemory::<f32>::new(slots);
    shared[unit] = sum;
    tree_sum(&mut shared, 1usize, slots);
    if unit == 0usize {
        partial[part * channels + channel] = shared[0usize];
    }
}

/// `parts` `[s, l]` summed over s: `[l]`.
pub(super) fn sum_leading<R: CubeRuntime>(parts: CubeTensor<R>) -> CubeTensor<R> {
    let parts = into_contiguous(parts);
    let len = parts.meta.shape()[1];
    let out = empty(&parts, Shape::new([len]));
    let client = parts.client.clone();
    let (cube_count, cube_dim) = elementwise(&client, len);
    sum_leading_kernel::launch::<R>(
        &client,
        cube_count,
        cube_dim,
        parts.into_tensor_arg(),
        out.clone().into_tensor_arg(),
    );
    out
}

/// Units of a cube of `channel_sums`, and values each sums before the cube's tree.
const UNITS: usize = 256;
const VALUES_PER_UNIT: usize = 64;

/// Per-channel sums of t `[n, c, positions]`: `[c]`.
pub(super) fn channel_sums<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    let t = into_contiguous(t);
    let [n, c, positions] = t.meta.shape().dims::<3>();
    let total = n * positions;
    let units = UNITS.min(t.client.properties().hardware.max_units_per_cube as usize);
    let parts = total
        .div_ceil(VALUES_PER_UNIT * units)
        .clamp(1, MAX_CUBES_YZ);
    let chunk = total.div_ceil(parts).max(1);
    let partial = empty(&t, Shape::new([parts, c]));
    let client = t.client.clone();
    channel_sums_kernel::launch::<R>(
        &client,
        CubeCount::Static(c as u32, parts as u32, 1),
        CubeDim::new_1d(units as u32),
        t.into_tensor_arg(),
        partial.clone().into_tensor_arg(),
        chunk,
        units.next_power_of_two(),
    );
    sum_leading(partial)
}
