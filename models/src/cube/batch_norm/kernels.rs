//! The BatchNorm kernels (in their own module: CubeCL's `Tensor` is not burn's): the moments and
//! their finish, the output, and the backward's sums and input gradient.

use crate::cube::reduce::{Walk, lanes_sum, part_end, tree_sum};
use cubecl::prelude::*;

/// One part of the two per-channel sums over t `[n, c, positions]` of `d = relu(t) - k` and
/// of `d^2`, around a value of the channel, `k = relu(t[0, c, shift_at])` (the shift; see
/// `finalize`), into `partial[s, 0, c]` and `partial[s, 1, c]`: cube (c, s) sums images
/// `s * images ..` of channel c, its units taking vectors in turn (`Walk`), then adds its
/// units' sums in a tree in shared memory (of `slots`, a power of two at least the cube's
/// size). One pass over t for the mean and the variance.
#[cube(launch_unchecked)]
pub(super) fn moments<N: Size>(
    t: &Tensor<Vector<f32, N>>,
    partial: &mut Tensor<f32>,
    images: usize,
    shift_at: usize,
    #[comptime] slots: usize,
) {
    let channels = t.shape(1);
    let vectors = t.shape(2) / t.vector_size();
    let channel = CUBE_POS_X as usize;
    let part = CUBE_POS_Y as usize;
    let zero = Vector::<f32, N>::cast_from(0.0f32);
    let k = t[channel * vectors + shift_at / t.vector_size()][0];
    let shift = Vector::<f32, N>::cast_from(max(k, 0.0f32));
    let mut sum = zero;
    let mut squares = zero;
    let last = part_end(part, images, t.shape(0));
    let mut walk = Walk::new(part * images, vectors);
    while walk.n < last {
        let d = max(t[walk.at(channels, channel)], zero) - shift;
        sum += d;
        squares += d * d;
        walk.step();
    }
    two_sums(sum, squares, partial, part, slots);
}

/// Adds up the cube's units' two vectors of sums (a unit's lanes, then the units in a tree in
/// shared memory of `slots`) into `partial[part, 0, c]` and `partial[part, 1, c]` for the cube's
/// channel c.
#[cube]
fn two_sums<N: Size>(
    a: Vector<f32, N>,
    b: Vector<f32, N>,
    partial: &mut Tensor<f32>,
    part: usize,
    #[comptime] slots: usize,
) {
    let (channel, unit) = (CUBE_POS_X as usize, UNIT_POS as usize);
    let channels = partial.shape(1) / 2usize;
    let mut shared = SharedMemory::<f32>::new(2usize * slots);
    shared[unit] = lanes_sum(a);
    shared[slots + unit] = lanes_sum(b);
    tree_sum(&mut shared, 2usize, slots);
    if unit == 0usize {
        partial[part * 2usize * channels + channel] = shared[0usize];
        partial[(part * 2usize + 1usize) * channels + channel] = shared[slots];
    }
}

/// Per channel c (one unit each), from the parts of `moments`' sums over `count` values (z
/// `[n, c, positions]`, whose `relu(z[0, c, shift_at])` was their shift k): the batch mean,
/// 1 / sqrt(var + eps), the affine map `scale * relu(z) + shift` that normalizes, and the
/// running averages moved towards the batch's mean and (biased) variance by `momentum`, as
/// burn's BatchNorm moves them. The variance is `E[d^2] - E[d]^2` for `d = relu(z) - k`: around a
/// value of the channel's own (a typical one: the middle of a plane, not a corner that the
/// padding made unlike the rest), the two terms are of the variance's size and the subtraction
/// loses little, where around 0 a channel far from 0 for its spread (10 +- 1) loses most of
/// its digits (two passes, the mean then the squares around it, cost a second read of z).
#[cube(launch_unchecked)]
pub(super) fn finalize(
    z: &Tensor<f32>,
    parts: &Tensor<f32>,
    gamma: &Tensor<f32>,
    beta: &Tensor<f32>,
    running_mean: &Tensor<f32>,
    running_var: &Tensor<f32>,
    stats: &mut Tensor<f32>,
    stride: usize,
    shift_at: usize,
    count: f32,
    epsilon: f32,
    momentum: f32,
) {
    let c = ABSOLUTE_POS;
    let channels = gamma.len();
    if c >= channels {
        terminate!();
    }
    let mut sum = 0.0f32;
    let mut squares = 0.0f32;
    for s in 0..parts.shape(0) {
        sum += parts[s * 2usize * channels + c];
        squares += parts[(s * 2usize + 1usize) * channels + c];
    }
    let shifted_mean = sum / count;
    let mean = max(z[c * z.shape(2) + shift_at], 0.0f32) + shifted_mean;
    let var = max(squares / count - shifted_mean * shifted_mean, 0.0f32);
    let inv_std = 1.0f32 / f32::sqrt(var + epsilon);
    let scale = gamma[c] * inv_std;
    // stats rows (`stride` apart): mean, inv_std, scale, shift, new running mean, new
    // running variance.
    stats[c] = mean;
    stats[stride + c] = inv_std;
    stats[2usize * stride + c] = scale;
    stats[3usize * stride + c] = beta[c] - mean * scale;
    stats[4usize * stride + c] = running_mean[c] * (1.0f32 - momentum) + mean * momentum;
    stats[5usize * stride + c] = running_var[c] * (1.0f32 - momentum) + var * momentum;
}

/// One part of the two per-channel sums of the gradient, of dy and of `dy * xhat` (xhat =
/// `(relu(z) - mean[c]) * inv_std[c]`), into `partial[s, 0, c]` and `partial[s, 1, c]`;
/// laid out as `moments`' sums.
#[cube(launch_unchecked)]
pub(super) fn grad_sums<N: Size>(
    z: &Tensor<Vector<f32, N>>,
    dy: &Tensor<Vector<f32, N>>,
    mean: &Tensor<f32>,
    inv_std: &Tensor<f32>,
    partial: &mut Tensor<f32>,
    images: usize,
    #[comptime] slots: usize,
) {
    let channels = z.shape(1);
    let vectors = z.shape(2) / z.vector_size();
    let channel = CUBE_POS_X as usize;
    let part = CUBE_POS_Y as usize;
    let zero = Vector::<f32, N>::cast_from(0.0f32);
    let m = Vector::<f32, N>::cast_from(mean[channel]);
    let s = Vector::<f32, N>::cast_from(inv_std[channel]);
    let mut sum_dy = zero;
    let mut sum_dy_xhat = zero;
    let last = part_end(part, images, z.shape(0));
    let mut walk = Walk::new(part * images, vectors);
    while walk.n < last {
        let at = walk.at(channels, channel);
        let g = dy[at];
        sum_dy += g;
        sum_dy_xhat += g * (max(z[at], zero) - m) * s;
        walk.step();
    }
    two_sums(sum_dy, sum_dy_xhat, partial, part, slots);
}

/// A unit's way through the elementwise kernels' layout of a tensor `[n, c, vectors]`: cube
/// (x, y) covers vectors `x * units along x ..` of planes `y * units along y ..`, and of the
/// planes `cubes along y` times as far on; each unit the vectors `p`, `p + across`, ... of its
/// planes (`across`: the grid's units along x), so that what it loads for a plane's channel
/// serves them all.
#[derive(CubeType)]
struct Planes {
    p: usize,
    across: usize,
    plane: usize,
    planes: usize,
    channels: usize,
    vectors: usize,
}

#[cube]
impl Planes {
    /// For t's layout read as vectors; ends the unit if it is past a plane's last vector.
    fn new<N: Size>(t: &Tensor<Vector<f32, N>>) -> Planes {
        let vectors = t.shape(2) / t.vector_size();
        let p = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        if p >= vectors {
            terminate!();
        }
        Planes {
            p,
            across: (CUBE_COUNT_X * CUBE_DIM_X) as usize,
            plane: (CUBE_POS_Y * CUBE_DIM_Y + UNIT_POS_Y) as usize,
            planes: t.shape(0) * t.shape(1),
            channels: t.shape(1),
            vectors,
        }
    }

    fn more(&self) -> bool {
        self.plane < self.planes
    }

    fn channel(&self) -> usize {
        self.plane % self.channels
    }

    /// Where the unit's first vector of its plane is.
    fn at(&self) -> usize {
        self.plane * self.vectors + self.p
    }

    /// One past the plane's last vector.
    fn end(&self) -> usize {
        (self.plane + 1usize) * self.vectors
    }

    fn step(&mut self) {
        self.plane += (CUBE_COUNT_Y * CUBE_DIM_Y) as usize;
    }
}

/// `y = relu(z) * scale[c] + shift[c]`, laid out as `Planes`.
#[cube(launch_unchecked)]
pub(super) fn relu_affine<N: Size>(
    z: &Tensor<Vector<f32, N>>,
    scale: &Tensor<f32>,
    shift: &Tensor<f32>,
    y: &mut Tensor<Vector<f32, N>>,
) {
    let zero = Vector::<f32, N>::cast_from(0.0f32);
    let mut unit = Planes::new(z);
    while unit.more() {
        let c = unit.channel();
        let (a, b) = (Vector::cast_from(scale[c]), Vector::cast_from(shift[c]));
        let mut at = unit.at();
        while at < unit.end() {
            y[at] = max(z[at], zero) * a + b;
            at += unit.across;
        }
        unit.step();
    }
}

/// The gradients of training-mode BatchNorm(ReLU(z)) from the two per-channel sums over its
/// `count` values (`sums[0, c]` of dy, `sums[1, c]` of dy * xhat): the input's, `dz = [z > 0]
/// * gamma[c] * inv_std[c] * (dy - sums[0, c] / count - xhat * sums[1, c] / count)`, laid out
/// as `relu_affine`; and gamma's and beta's (the sums themselves), written by the units at
/// position 0 of the first image's planes.
#[cube(launch_unchecked)]
pub(super) fn input_grad<N: Size>(
    z: &Tensor<Vector<f32, N>>,
    dy: &Tensor<Vector<f32, N>>,
    mean: &Tensor<f32>,
    inv_std: &Tensor<f32>,
    gamma: &Tensor<f32>,
    sums: &Tensor<f32>,
    dz: &mut Tensor<Vector<f32, N>>,
    dgamma: &mut Tensor<f32>,
    dbeta: &mut Tensor<f32>,
    count: f32,
) {
    let channels = z.shape(1);
    let zero = Vector::<f32, N>::cast_from(0.0f32);
    let mut unit = Planes::new(z);
    while unit.more() {
        let c = unit.channel();
        let (sum_dy, sum_dy_xhat) = (sums[c], sums[channels + c]);
        if unit.plane < channels && unit.p == 0usize {
            dbeta[c] = sum_dy;
            dgamma[c] = sum_dy_xhat;
        }
        let s = inv_std[c];
        let (m, scale) = (Vector::cast_from(mean[c]), Vector::cast_from(s));
        let (slope, mean_dy) = (
            Vector::<f32, N>::cast_from(gamma[c] * s),
            Vector::cast_from(sum_dy / count),
        );
        let mean_dy_xhat = Vector::cast_from(sum_dy_xhat / count);
        let mut at = unit.at();
        while at < unit.end() {
            let v = z[at];
            let xhat = (v - m) * scale;
            let g = slope * (dy[at] - mean_dy - xhat * mean_dy_xhat);
            dz[at] = select_many(v.greater_than(zero), g, zero);
            at += unit.across;
        }
        unit.step();
    }
}
