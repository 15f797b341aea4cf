//! ReLU then BatchNorm (the tutorial's order) in CubeCL, as one autodiff operation: in training,
//! two passes for the batch statistics (mean, then the variance around it), one for the output;
//! backward, one pass for the two per-channel sums the gradient needs and one for the input
//! gradient. burn's composed ops take some 30 passes over the tensor for the same.
//!
//! Tensors are contiguous f32 `[n, c, positions]`. A cube covers positions of one (n, c) plane
//! (and the planes `cubes along y` apart), so a unit finds its channel with one division per
//! plane, not per value; a reduction's cube covers one channel of a run of images. Sums are taken
//! in an order fixed by the launch: the same bytes every time.

use super::reduce::sum_leading;
use super::{Cube, MAX_CUBES_YZ, empty};
use crate::fast_ops::{cast, float, same, tensor};
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::nn::BatchNorm;
use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::reshape;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime};
use cubecl::{CubeCount, CubeDim};

/// The kernels (in their own module: CubeCL's `Tensor` is not burn's).
mod kernels {
    use cubecl::prelude::*;

    /// One part of a per-channel sum over t `[n, c, positions]` of `relu(t)` (or, `centred`, of
    /// `(relu(t) - mean[c])^2`): cube (c, s) sums images `s * images ..` of channel c, its units
    /// taking positions in turn, then adds its units' sums in a tree in shared memory (of
    /// `slots`, a power of two at least the cube's size) into `partial[s, c]`.
    #[cube(launch)]
    pub(super) fn moments(
        t: &Tensor<f32>,
        mean: &Tensor<f32>,
        partial: &mut Tensor<f32>,
        images: usize,
        #[comptime] centred: bool,
        #[comptime] slots: usize,
    ) {
        let channels = t.shape(1);
        let positions = t.shape(2);
        let channel = CUBE_POS_X as usize;
        let part = CUBE_POS_Y as usize;
        let unit = UNIT_POS as usize;
        let units = CUBE_DIM as usize;
        let first = part * images;
        let mut last = first + images;
        if last > t.shape(0) {
            last = t.shape(0);
        }
        let mut shift = 0.0f32;
        if centred {
            shift = mean[channel];
        }
        let mut sum = 0.0f32;
        for n in first..last {
            let base = (n * channels + channel) * positions;
            let mut p = unit;
            while p < positions {
                let a = f32::max(t[base + p], 0.0f32);
                if centred {
                    let d = a - shift;
                    sum += d * d;
                } else {
                    sum += a;
                }
                p += units;
            }
        }
        let mut shared = SharedMemory::<f32>::new(slots);
        shared[unit] = sum;
        if unit + units < slots {
            shared[unit + units] = 0.0f32;
        }
        sync_cube();
        // A runtime value: a comptime one cannot change.
        let mut half = (slots / 2usize).runtime();
        while half > 0usize {
            if unit < half {
                shared[unit] += shared[unit + half];
            }
            sync_cube();
            half /= 2usize;
        }
        if unit == 0usize {
            partial[part * channels + channel] = shared[0usize];
        }
    }

    /// One part of the two per-channel sums of the gradient, of dy and of `dy * xhat` (xhat =
    /// `(relu(z) - mean[c]) * inv_std[c]`), into `partial[s, 0, c]` and `partial[s, 1, c]`;
    /// laid out as `moments`.
    #[cube(launch)]
    pub(super) fn grad_sums(
        z: &Tensor<f32>,
        dy: &Tensor<f32>,
        mean: &Tensor<f32>,
        inv_std: &Tensor<f32>,
        partial: &mut Tensor<f32>,
        images: usize,
        #[comptime] slots: usize,
    ) {
        let channels = z.shape(1);
        let positions = z.shape(2);
        let channel = CUBE_POS_X as usize;
        let part = CUBE_POS_Y as usize;
        let unit = UNIT_POS as usize;
        let units = CUBE_DIM as usize;
        let first = part * images;
        let mut last = first + images;
        if last > z.shape(0) {
            last = z.shape(0);
        }
        let (m, s) = (mean[channel], inv_std[channel]);
        let mut sum_dy = 0.0f32;
        let mut sum_dy_xhat = 0.0f32;
        for n in first..last {
            let base = (n * channels + channel) * positions;
            let mut p = unit;
            while p < positions {
                let g = dy[base + p];
                sum_dy += g;
                sum_dy_xhat += g * (f32::max(z[base + p], 0.0f32) - m) * s;
                p += units;
            }
        }
        let mut shared = SharedMemory::<f32>::new(2usize * slots);
        shared[unit] = sum_dy;
        shared[slots + unit] = sum_dy_xhat;
        if unit + units < slots {
            shared[unit + units] = 0.0f32;
            shared[slots + unit + units] = 0.0f32;
        }
        sync_cube();
        // A runtime value: a comptime one cannot change.
        let mut half = (slots / 2usize).runtime();
        while half > 0usize {
            if unit < half {
                shared[unit] += shared[unit + half];
                shared[slots + unit] += shared[slots + unit + half];
            }
            sync_cube();
            half /= 2usize;
        }
        if unit == 0usize {
            partial[part * 2usize * channels + channel] = shared[0usize];
            partial[(part * 2usize + 1usize) * channels + channel] = shared[slots];
        }
    }

    /// `y = relu(z) * scale[c] + shift[c]`. Cube (x, y) covers positions `x * units ..` of plane
    /// y (and of every plane `cubes along y` further).
    #[cube(launch)]
    pub(super) fn relu_affine(
        z: &Tensor<f32>,
        scale: &Tensor<f32>,
        shift: &Tensor<f32>,
        y: &mut Tensor<f32>,
    ) {
        let channels = z.shape(1);
        let positions = z.shape(2);
        let p = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        if p >= positions {
            terminate!();
        }
        let planes = z.shape(0) * channels;
        let mut plane = CUBE_POS_Y as usize;
        while plane < planes {
            let c = plane % channels;
            let at = plane * positions + p;
            y[at] = f32::max(z[at], 0.0f32) * scale[c] + shift[c];
            plane += CUBE_COUNT_Y as usize;
        }
    }

    /// The input gradient of training-mode BatchNorm(ReLU(z)): `dz = [z > 0] * k1[c] * (dy -
    /// k2[c] - xhat * k3[c])`, with k1 = gamma * inv_std, k2 = sum(dy) / m, k3 = sum(dy * xhat)
    /// / m over the channel's m values; laid out as `relu_affine`.
    #[cube(launch)]
    pub(super) fn input_grad(
        z: &Tensor<f32>,
        dy: &Tensor<f32>,
        mean: &Tensor<f32>,
        inv_std: &Tensor<f32>,
        k1: &Tensor<f32>,
        k2: &Tensor<f32>,
        k3: &Tensor<f32>,
        dz: &mut Tensor<f32>,
    ) {
        let channels = z.shape(1);
        let positions = z.shape(2);
        let p = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        if p >= positions {
            terminate!();
        }
        let planes = z.shape(0) * channels;
        let mut plane = CUBE_POS_Y as usize;
        while plane < planes {
            let c = plane % channels;
            let at = plane * positions + p;
            let v = z[at];
            let xhat = (v - mean[c]) * inv_std[c];
            let g = k1[c] * (dy[at] - k2[c] - xhat * k3[c]);
            dz[at] = select(v > 0.0f32, g, 0.0f32);
            plane += CUBE_COUNT_Y as usize;
        }
    }
}

/// The layer and its input, handed back when the backend is not one of ours.
pub(super) type Inputs<'a, B> = (&'a BatchNorm<B>, Tensor<B, 4>);

/// Units of a cube of every kernel here, and values each reduction unit sums before the tree.
const UNITS: usize = 64;
const VALUES_PER_UNIT: usize = 32;

/// The grid of the elementwise kernels for t `[n, c, positions]`.
fn elementwise_count(dims: [usize; 3]) -> CubeCount {
    let [n, c, positions] = dims;
    CubeCount::Static(
        positions.div_ceil(UNITS).max(1) as u32,
        (n * c).clamp(1, MAX_CUBES_YZ) as u32,
        1,
    )
}

/// The grid of the reductions: (channels, parts), and the images of a part.
fn reduction_grid(dims: [usize; 3]) -> (CubeCount, usize) {
    let [n, c, positions] = dims;
    let images = (VALUES_PER_UNIT * UNITS)
        .div_ceil(positions.max(1))
        .clamp(1, n.max(1));
    let parts = n.div_ceil(images).clamp(1, MAX_CUBES_YZ);
    let images = n.div_ceil(parts).max(1);
    (CubeCount::Static(c as u32, parts as u32, 1), images)
}

/// z as a contiguous `[n, c, positions]`.
fn planes<R: CubeRuntime>(z: CubeTensor<R>) -> CubeTensor<R> {
    let [n, c, h, w] = z.meta.shape().dims::<4>();
    into_contiguous(reshape(z, Shape::new([n, c, h * w])))
}

/// The per-channel mean of relu(z), or (`mean` given) the mean of `(relu(z) - mean)^2`.
fn moment<R: CubeRuntime>(z: &CubeTensor<R>, mean: Option<&CubeTensor<R>>) -> CubeTensor<R> {
    let dims = z.meta.shape().dims::<3>();
    let (count, images) = reduction_grid(dims);
    let partial = empty(z, Shape::new([count_y(&count), dims[1]]));
    kernels::moments::launch::<R>(
        &z.client,
        count,
        CubeDim::new_1d(UNITS as u32),
        z.clone().into_tensor_arg(),
        mean.unwrap_or(z).clone().into_tensor_arg(),
        partial.clone().into_tensor_arg(),
        images,
        mean.is_some(),
        UNITS.next_power_of_two(),
    );
    let sums = tensor::<Cube<R, u8>, 1>(sum_leading(partial));
    float(sums.div_scalar((dims[0] * dims[2]) as f32))
}

fn count_y(count: &CubeCount) -> usize {
    match count {
        CubeCount::Static(_, y, _) => *y as usize,
        CubeCount::Dynamic(_) => unreachable!("the reductions' grids are static"),
    }
}

/// `relu(z) * scale + shift` per channel, z `[n, c, positions]`.
fn relu_affine<R: CubeRuntime>(
    z: &CubeTensor<R>,
    scale: CubeTensor<R>,
    shift: CubeTensor<R>,
) -> CubeTensor<R> {
    let y = empty(z, z.meta.shape().clone());
    kernels::relu_affine::launch::<R>(
        &z.client,
        elementwise_count(z.meta.shape().dims::<3>()),
        CubeDim::new_1d(UNITS as u32),
        z.clone().into_tensor_arg(),
        into_contiguous(scale).into_tensor_arg(),
        into_contiguous(shift).into_tensor_arg(),
        y.clone().into_tensor_arg(),
    );
    y
}

/// A per-channel vector for burn's arithmetic (the bool element plays no part in it).
type Vector<R> = Tensor<Cube<R, u8>, 1>;

/// What the backward pass keeps: z as `[n, c, positions]`, the batch mean, 1 / sqrt(var + eps),
/// gamma, and z's own shape.
type Saved<R> = (
    CubeTensor<R>,
    CubeTensor<R>,
    CubeTensor<R>,
    CubeTensor<R>,
    Shape,
);

#[derive(Debug)]
struct ReluBatchNormBackward;

impl<R: CubeRuntime, BT: BoolElement> Backward<Cube<R, BT>, 3> for ReluBatchNormBackward {
    type State = Saved<R>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (z, mean, inv_std, gamma, shape) = ops.state;
        let dims = z.meta.shape().dims::<3>();
        let dy = planes(grads.consume::<Cube<R, BT>>(&ops.node));
        let (count, images) = reduction_grid(dims);
        let partial = empty(&z, Shape::new([count_y(&count), 2 * dims[1]]));
        kernels::grad_sums::launch::<R>(
            &z.client,
            count,
            CubeDim::new_1d(UNITS as u32),
            z.clone().into_tensor_arg(),
            dy.clone().into_tensor_arg(),
            mean.clone().into_tensor_arg(),
            inv_std.clone().into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            images,
            UNITS.next_power_of_two(),
        );
        let sums = reshape(sum_leading(partial), Shape::new([2, dims[1]]));
        let sums = tensor::<Cube<R, u8>, 2>(sums);
        let dbeta: Vector<R> = sums.clone().narrow(0, 0, 1).reshape([dims[1]]);
        let dgamma: Vector<R> = sums.narrow(0, 1, 1).reshape([dims[1]]);
        let [z_node, gamma_node, beta_node] = ops.parents;
        if let Some(node) = z_node {
            let count = (dims[0] * dims[2]) as f32;
            let k1 = tensor::<Cube<R, u8>, 1>(gamma) * tensor(inv_std.clone());
            let (k2, k3) = (
                dbeta.clone().div_scalar(count),
                dgamma.clone().div_scalar(count),
            );
            let dz = empty(&z, z.meta.shape().clone());
            kernels::input_grad::launch::<R>(
                &z.client.clone(),
                elementwise_count(dims),
                CubeDim::new_1d(UNITS as u32),
                z.into_tensor_arg(),
                dy.into_tensor_arg(),
                mean.into_tensor_arg(),
                inv_std.into_tensor_arg(),
                into_contiguous(float(k1)).into_tensor_arg(),
                into_contiguous(float(k2)).into_tensor_arg(),
                into_contiguous(float(k3)).into_tensor_arg(),
                dz.clone().into_tensor_arg(),
            );
            grads.register::<Cube<R, BT>>(node.id, reshape(dz, shape));
        }
        if let Some(node) = gamma_node {
            grads.register::<Cube<R, BT>>(node.id, into_contiguous(float(dgamma)));
        }
        if let Some(node) = beta_node {
            grads.register::<Cube<R, BT>>(node.id, into_contiguous(float(dbeta)));
        }
    }
}

/// Training mode: normalizes with the batch's statistics, moves bn's running averages.
fn train<B: Backend, R: CubeRuntime, BT: BoolElement>(
    bn: &BatchNorm<B>,
    z: Tensor<Autodiff<Cube<R, BT>>, 4>,
) -> Tensor<Autodiff<Cube<R, BT>>, 4> {
    type Ad<R, BT> = Autodiff<Cube<R, BT>>;
    let gamma: Tensor<Ad<R, BT>, 1> = same(bn.gamma.val());
    let beta: Tensor<Ad<R, BT>, 1> = same(bn.beta.val());
    let (z, gamma, beta) = (float(z), float(gamma), float(beta));
    let shape = z.primitive.meta.shape().clone();
    let zp = planes(z.primitive.clone());
    let mean = moment(&zp, None);
    let var = moment(&zp, Some(&mean));
    // The running averages, as burn's BatchNorm moves them (from the biased variance).
    let vector = |t: &CubeTensor<R>| -> Tensor<B, 1> {
        same(Tensor::<Ad<R, BT>, 1>::from_inner(tensor(t.clone())))
    };
    crate::update_running_stats(bn, vector(&mean), vector(&var));
    let inv_std: Vector<R> = tensor::<Cube<R, u8>, 1>(var)
        .add_scalar(bn.epsilon)
        .sqrt()
        .recip();
    let scale = tensor::<Cube<R, u8>, 1>(gamma.primitive.clone()) * inv_std.clone();
    let shift = tensor::<Cube<R, u8>, 1>(beta.primitive.clone())
        - tensor::<Cube<R, u8>, 1>(mean.clone()) * scale.clone();
    let y = reshape(relu_affine(&zp, float(scale), float(shift)), shape.clone());
    let prep = ReluBatchNormBackward
        .prepare::<NoCheckpointing>([z.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful();
    let inv_std = into_contiguous(float(inv_std));
    tensor(match prep {
        OpsKind::Tracked(prep) => prep.finish((zp, mean, inv_std, gamma.primitive, shape), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    })
}

/// Inference: normalizes with bn's running statistics.
fn infer<B: Backend, R: CubeRuntime, BT: BoolElement>(
    bn: &BatchNorm<B>,
    z: Tensor<Cube<R, BT>, 4>,
) -> Tensor<Cube<R, BT>, 4> {
    let vector = |t: Tensor<B, 1>| -> Tensor<Cube<R, BT>, 1> { same(t) };
    let inv_std = vector(bn.running_var.value())
        .add_scalar(bn.epsilon)
        .sqrt()
        .recip();
    let scale = vector(bn.gamma.val()) * inv_std;
    let shift = vector(bn.beta.val()) - vector(bn.running_mean.value()) * scale.clone();
    let z = float(z);
    let shape = z.meta.shape().clone();
    let y = relu_affine(&planes(z), float(scale), float(shift));
    tensor(reshape(y, shape))
}

/// BatchNorm(ReLU(z)) by these kernels when `B` is `Cube<R, BT>`: training mode with autodiff,
/// running statistics without; else z back.
pub(super) fn on<'a, B: Backend, R: CubeRuntime, BT: BoolElement>(
    (bn, z): Inputs<'a, B>,
) -> Result<Tensor<B, 4>, Inputs<'a, B>> {
    match cast::<_, Tensor<Autodiff<Cube<R, BT>>, 4>>(z) {
        Ok(z) => Ok(same(train(bn, z))),
        Err(z) => match cast::<_, Tensor<Cube<R, BT>, 4>>(z) {
            Ok(z) => Ok(same(infer(bn, z))),
            Err(z) => Err((bn, z)),
        },
    }
}
