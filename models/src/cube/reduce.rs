//! Sums the other kernels share: a cube's tree in shared memory, a vector's lanes, a unit's walk
//! through a channel's planes, and adding up the parts a kernel split its sums into (or a dense
//! layer's output gradient over the batch).
//! Each in a fixed order (no atomics), so a run gives the same bytes every time.

use super::{contiguous, elementwise, empty, vector_size};
use burn::tensor::Shape;
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::reshape;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

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

/// A unit's way through the vectors of a run of images' planes of one channel, the cube's
/// units taking them in turn (across images where planes have fewer vectors than the cube
/// has units): at vector p of image n, then `units` vectors on, with no division per step.
#[derive(CubeType)]
pub(super) struct Walk {
    pub n: usize,
    p: usize,
    vectors: usize,
    skip_images: usize,
    skip_vectors: usize,
}

#[cube]
impl Walk {
    /// From image `first`, for planes of `vectors` vectors.
    pub fn new(first: usize, vectors: usize) -> Walk {
        let (unit, units) = (UNIT_POS as usize, CUBE_DIM as usize);
        Walk {
            n: first + unit / vectors,
            p: unit % vectors,
            vectors,
            skip_images: units / vectors,
            skip_vectors: units % vectors,
        }
    }

    /// Where the vector is in a tensor `[n, channels, vectors]`.
    pub fn at(&self, channels: usize, channel: usize) -> usize {
        (self.n * channels + channel) * self.vectors + self.p
    }

    pub fn step(&mut self) {
        self.n += self.skip_images;
        self.p += self.skip_vectors;
        if self.p >= self.vectors {
            self.p -= self.vectors;
            self.n += 1usize;
        }
    }
}

/// One past the last item of part `part` of `total` items cut in parts of `size` (the last
/// part may have fewer): a part's images of a batch, a strip's rows of a plane.
#[cube]
pub(super) fn part_end(part: usize, size: usize, total: usize) -> usize {
    let mut end = (part + 1usize) * size;
    if end > total {
        end = total;
    }
    end
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

/// `out[l] = sum over s of parts[s, l]`, in order of s. One unit per vector of N values.
#[cube(launch_unchecked)]
fn sum_leading_kernel<N: Size>(parts: &Tensor<Vector<f32, N>>, out: &mut Tensor<Vector<f32, N>>) {
    let l = ABSOLUTE_POS;
    if l >= out.len() {
        terminate!();
    }
    let len = out.len();
    let mut sum = Vector::<f32, N>::cast_from(0.0f32);
    for s in 0..parts.shape(0) {
        sum += parts[s * len + l];
    }
    out[l] = sum;
}

/// `parts` `[s, l]` summed over s: `[l]` (one part: itself, with no launch).
pub(super) fn sum_leading<R: CubeRuntime>(parts: CubeTensor<R>) -> CubeTensor<R> {
    let parts = contiguous(parts);
    let len = parts.meta.shape()[1];
    if parts.meta.shape()[0] == 1 {
        return reshape(parts, Shape::new([len]));
    }
    let out = empty(&parts, Shape::new([len]));
    if len == 0 {
        return out;
    }
    let client = parts.client.clone();
    let vector = vector_size(len);
    let (cube_count, cube_dim) = elementwise(&client, len / vector);
    // SAFETY: a unit past the last vector ends.
    unsafe {
        sum_leading_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            vector,
            parts.into_tensor_arg(),
            out.clone().into_tensor_arg(),
        )
    };
    out
}
