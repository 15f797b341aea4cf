//! ReLU then BatchNorm (the tutorial's order) in CubeCL, as one autodiff operation: in training,
//! one pass for the batch statistics (sums around a value of each channel), one for the output;
//! backward, one pass for the two per-channel sums the gradient needs and one for the input
//! gradient. burn's composed ops take some 30 passes over the tensor for the same.
//!
//! Tensors are contiguous f32 `[n, c, positions]`. An elementwise cube covers vectors of up to 64
//! planes (its units along a plane's vectors, then along planes; and the planes `cubes along y`
//! apart), so a unit finds its channel with one division per plane, not per value; a
//! reduction's cube covers one channel of a run of images. Sums are taken
//! in an order fixed by the launch: the same bytes every time.

use super::reduce::sum_leading;
use super::{Cube, MAX_CUBES_YZ, WARP, contiguous, elementwise, empty, pool, vector_size};
use crate::fast_ops::{cast, float, same, tensor};
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::module::{Module, ModuleMapper, Param, RunningState};
use burn::nn::BatchNorm;
use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor};
use burn_cubecl::ops::reshape;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime};
use cubecl::{CubeCount, CubeDim};

/// The kernels (in their own module: CubeCL's `Tensor` is not burn's).
mod kernels;

/// The layer, its input and, for a block's last layer, the dropout probability after its
/// max-pool; handed back when the backend is not one of ours.
pub(super) type Inputs<'a, B> = (&'a BatchNorm<B>, Tensor<B, 4>, Option<f32>);

/// Units of a cube of the elementwise kernels (over a plane's vectors, then planes).
const UNITS: usize = 64;
/// Vectors of a plane an elementwise unit takes at most: the channel's values it loads once
/// serve them all.
const VECTORS_PER_UNIT: usize = 4;
/// Units of a reduction's cube at most, and the values each is given to sum before the cube's
/// tree: a part takes `VALUES_PER_UNIT * REDUCTION_UNITS` values, and a cube as many units as
/// have `VALUES_PER_UNIT` each (a power of two, `WARP` at least): each of the tree's levels waits
/// for all of the cube's units (block 3 at batch 32: 64 units of 18 vectors and 6 levels, where
/// it had 256 units of 4 or 5 and 8 levels).
const REDUCTION_UNITS: usize = 256;
const VALUES_PER_UNIT: usize = 64;

/// Vectors in a plane of `positions`.
fn vectors(positions: usize) -> usize {
    positions / vector_size(positions)
}

/// The grid of the elementwise kernels for t `[n, c, positions]`: cubes of `UNITS` units, along
/// x a plane's vectors (up to `VECTORS_PER_UNIT` a unit, a grid's width apart) and along y as
/// many planes as fit beside them: block 3's planes of 36 vectors take 16 units each, 4 planes
/// a cube (with a cube a plane, 28 of its 64 units had nothing to do); the dense head's planes
/// have one value, 64 planes a cube.
fn elementwise_grid(dims: [usize; 3]) -> (CubeCount, CubeDim) {
    let [n, c, positions] = dims;
    let along_plane = vectors(positions)
        .div_ceil(VECTORS_PER_UNIT)
        .next_power_of_two()
        .min(UNITS);
    let planes_a_cube = UNITS / along_plane;
    let count = CubeCount::Static(
        vectors(positions).div_ceil(along_plane * VECTORS_PER_UNIT) as u32,
        (n * c).div_ceil(planes_a_cube).clamp(1, MAX_CUBES_YZ) as u32,
        1,
    );
    (
        count,
        CubeDim::new_2d(along_plane as u32, planes_a_cube as u32),
    )
}

/// A reduction over t `[n, c, positions]`, one cube a channel and part of the images.
struct Reduction {
    parts: usize,
    images: usize,
    /// A power of two: the slots of the cube's tree.
    units: usize,
}

impl Reduction {
    fn new(dims: [usize; 3]) -> Self {
        let [n, _, positions] = dims;
        let images = (VALUES_PER_UNIT * REDUCTION_UNITS)
            .div_ceil(positions.max(1))
            .clamp(1, n.max(1));
        let images = n.div_ceil(n.div_ceil(images).min(MAX_CUBES_YZ)).max(1);
        // The most units, a power of two, that each have `VALUES_PER_UNIT` values to sum.
        let filled = (images * positions / VALUES_PER_UNIT).max(1);
        let units = (1 << filled.ilog2()).clamp(WARP, REDUCTION_UNITS);
        Reduction {
            parts: n.div_ceil(images).max(1),
            images,
            units,
        }
    }

    fn grid(&self, channels: usize) -> (CubeCount, CubeDim) {
        (
            CubeCount::Static(channels as u32, self.parts as u32, 1),
            CubeDim::new_1d(self.units as u32),
        )
    }
}

/// z as a contiguous `[n, c, positions]`.
fn planes<R: CubeRuntime>(z: CubeTensor<R>) -> CubeTensor<R> {
    let [n, c, h, w] = z.meta.shape().dims::<4>();
    contiguous(reshape(z, Shape::new([n, c, h * w])))
}

/// Where in a plane of `positions` the moments take their shift: the middle vector's first
/// value (a whole vector's offset, so that the kernels read it as a vector or as a value).
fn shift_at(positions: usize) -> usize {
    vectors(positions) / 2 * vector_size(positions)
}

/// The parts `[parts, 2, c]` of `kernels::moments`' two per-channel sums over z.
fn moment_parts<R: CubeRuntime>(z: &CubeTensor<R>) -> CubeTensor<R> {
    let dims = z.meta.shape().dims::<3>();
    let reduction = Reduction::new(dims);
    let partial = empty(z, Shape::new([reduction.parts, 2 * dims[1]]));
    let (cube_count, cube_dim) = reduction.grid(dims[1]);
    // SAFETY: the units walk images up to their part's end; shared memory has a slot per unit.
    unsafe {
        kernels::moments::launch_unchecked::<R>(
            &z.client,
            cube_count,
            cube_dim,
            vector_size(dims[2]),
            z.clone().into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            reduction.images,
            shift_at(dims[2]),
            reduction.units,
        )
    };
    partial
}

/// `relu(z) * scale + shift` per channel, z `[n, c, positions]`.
fn relu_affine<R: CubeRuntime>(
    z: &CubeTensor<R>,
    scale: CubeTensor<R>,
    shift: CubeTensor<R>,
) -> CubeTensor<R> {
    let y = empty(z, z.meta.shape().clone());
    if z.meta.shape().num_elements() == 0 {
        return y;
    }
    let (cube_count, cube_dim) = elementwise_grid(z.meta.shape().dims::<3>());
    // SAFETY: a unit past a plane's vectors ends; planes stop at the tensor's.
    unsafe {
        kernels::relu_affine::launch_unchecked::<R>(
            &z.client,
            cube_count,
            cube_dim,
            vector_size(z.meta.shape()[2]),
            z.clone().into_tensor_arg(),
            contiguous(scale).into_tensor_arg(),
            contiguous(shift).into_tensor_arg(),
            y.clone().into_tensor_arg(),
        )
    };
    y
}

/// What `finalize` writes: six rows of a value per channel (the mean, 1 / sqrt(var + eps), the
/// affine map's scale and shift, the new running mean and variance), `stride` apart in one
/// buffer that the last row ends. `stride` is a multiple of the device's alignment for a view,
/// so every row starts and ends at one and taking it launches nothing (burn's slice copies an
/// unaligned row: 18 launches a step at batch 32).
struct Stats<R: CubeRuntime> {
    buffer: CubeTensor<R>,
    channels: usize,
    stride: usize,
}

impl<R: CubeRuntime> Stats<R> {
    const ROWS: usize = 6;

    fn new(like: &CubeTensor<R>, channels: usize) -> Self {
        let alignment = like.client.properties().memory.alignment as usize / size_of::<f32>();
        let stride = channels.next_multiple_of(alignment.max(1));
        let buffer = empty(like, Shape::new([(Self::ROWS - 1) * stride + channels]));
        Stats {
            buffer,
            channels,
            stride,
        }
    }

    /// Row `i`, `[channels]` (a view).
    fn row(&self, i: usize) -> CubeTensor<R> {
        let buffer = tensor::<Cube<R, u8>, 1>(self.buffer.clone());
        float(buffer.narrow(0, i * self.stride, self.channels))
    }
}

/// What the backward pass keeps: z as `[n, c, positions]`, the batch mean, 1 / sqrt(var + eps),
/// gamma, z's own shape, and the pool's codes when a max-pool and dropout followed.
type Saved<R> = (
    CubeTensor<R>,
    CubeTensor<R>,
    CubeTensor<R>,
    CubeTensor<R>,
    Shape,
    Option<pool::Codes<R>>,
);

#[derive(Debug)]
struct ReluBatchNormBackward;

impl<R: CubeRuntime, BT: BoolElement> Backward<Cube<R, BT>, 3> for ReluBatchNormBackward {
    type State = Saved<R>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (z, mean, inv_std, gamma, shape, codes) = ops.state;
        let dims = z.meta.shape().dims::<3>();
        let c = dims[1];
        let dy = grads.consume::<Cube<R, BT>>(&ops.node);
        let dy = planes(match codes {
            Some(codes) => pool::backward(dy, codes, shape.clone()),
            None => dy,
        });
        let reduction = Reduction::new(dims);
        let partial = empty(&z, Shape::new([reduction.parts, 2 * c]));
        let client = z.client.clone();
        let (cube_count, cube_dim) = reduction.grid(c);
        // SAFETY: as `moments`: the walk stops at the part's end.
        unsafe {
            kernels::grad_sums::launch_unchecked::<R>(
                &client,
                cube_count,
                cube_dim,
                vector_size(dims[2]),
                z.clone().into_tensor_arg(),
                dy.clone().into_tensor_arg(),
                mean.clone().into_tensor_arg(),
                inv_std.clone().into_tensor_arg(),
                partial.clone().into_tensor_arg(),
                reduction.images,
                reduction.units,
            )
        };
        let sums = sum_leading(partial);
        let [z_node, gamma_node, beta_node] = ops.parents;
        let (dgamma, dbeta) = (empty(&z, Shape::new([c])), empty(&z, Shape::new([c])));
        let dz = empty(&z, z.meta.shape().clone());
        let (cube_count, cube_dim) = elementwise_grid(dims);
        // SAFETY: as `relu_affine`.
        unsafe {
            kernels::input_grad::launch_unchecked::<R>(
                &client,
                cube_count,
                cube_dim,
                vector_size(dims[2]),
                z.into_tensor_arg(),
                dy.into_tensor_arg(),
                mean.into_tensor_arg(),
                inv_std.into_tensor_arg(),
                gamma.into_tensor_arg(),
                sums.into_tensor_arg(),
                dz.clone().into_tensor_arg(),
                dgamma.clone().into_tensor_arg(),
                dbeta.clone().into_tensor_arg(),
                (dims[0] * dims[2]) as f32,
            )
        };
        if let Some(node) = z_node {
            grads.register::<Cube<R, BT>>(node.id, reshape(dz, shape));
        }
        if let Some(node) = gamma_node {
            grads.register::<Cube<R, BT>>(node.id, dgamma);
        }
        if let Some(node) = beta_node {
            grads.register::<Cube<R, BT>>(node.id, dbeta);
        }
    }
}

/// Replaces a running statistic's value with `value`, the new average the finish kernel computed.
/// burn's `RunningState::update` would keep it per thread and, at the next `value_sync` (the next
/// step's, before this kernel), divide the sum of the threads' values by their count: one launch
/// of x / 1 per statistic, 14 a CancerNet step.
/// A `RunningState`'s clones share its value (that is how burn's threads share it), so mapping a
/// clone sets the layer's own; with no update pending, its reads are that value as it is.
fn set_running<B: Backend>(state: &RunningState<Tensor<B, 1>>, value: Tensor<B, 1>) {
    struct SetTo<B: Backend>(Option<Tensor<B, 1>>);
    impl<B: Backend> ModuleMapper<B> for SetTo<B> {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, old, mapper) = p.consume();
            let value = self.0.take().expect("one statistic");
            Param::from_mapped_value(id, value.reshape(old.shape()), mapper)
        }
    }
    let _ = state.clone().map(&mut SetTo(Some(value)));
}

/// Training mode: normalizes with the batch's statistics, moves bn's running averages, then
/// max-pools and drops out with probability p when `pool` is `Some(p)`. Three launches: the
/// moments, their finish (statistics, the affine map, running averages), the output (and with
/// dropout one more, the backend's draw of the masks' seed).
fn train<B: Backend, R: CubeRuntime, BT: BoolElement>(
    bn: &BatchNorm<B>,
    z: Tensor<Autodiff<Cube<R, BT>>, 4>,
    pool: Option<f32>,
) -> Tensor<Autodiff<Cube<R, BT>>, 4> {
    type Ad<R, BT> = Autodiff<Cube<R, BT>>;
    let param = |t: Tensor<B, 1>| contiguous(float(same::<_, Tensor<Ad<R, BT>, 1>>(t)).primitive);
    let gamma: Tensor<Ad<R, BT>, 1> = same(bn.gamma.val());
    let beta: Tensor<Ad<R, BT>, 1> = same(bn.beta.val());
    let (z, gamma, beta) = (float(z), float(gamma), float(beta));
    let shape = z.primitive.meta.shape().clone();
    assert!(
        shape.num_elements() > 0,
        "BatchNorm in training needs values: z of shape {shape:?} has none (an empty batch?)"
    );
    let zp = planes(z.primitive.clone());
    let dims = zp.meta.shape().dims::<3>();
    let c = dims[1];
    let parts = moment_parts(&zp);
    let stats = Stats::new(&zp, c);
    let (cube_count, cube_dim) = elementwise(&zp.client, c);
    // SAFETY: one unit a channel, those past the last end.
    unsafe {
        kernels::finalize::launch_unchecked::<R>(
            &zp.client,
            cube_count,
            cube_dim,
            zp.clone().into_tensor_arg(),
            parts.into_tensor_arg(),
            contiguous(gamma.primitive.clone()).into_tensor_arg(),
            contiguous(beta.primitive.clone()).into_tensor_arg(),
            param(bn.running_mean.value_sync()).into_tensor_arg(),
            param(bn.running_var.value_sync()).into_tensor_arg(),
            stats.buffer.clone().into_tensor_arg(),
            stats.stride,
            shift_at(dims[2]),
            (dims[0] * dims[2]) as f32,
            bn.epsilon as f32,
            bn.momentum as f32,
        )
    };
    let running =
        |i| -> Tensor<B, 1> { same(Tensor::<Ad<R, BT>, 1>::from_inner(tensor(stats.row(i)))) };
    set_running(&bn.running_mean, running(4));
    set_running(&bn.running_var, running(5));
    let (y, codes) = output::<R, BT>(&zp, &shape, &stats, pool);
    let prep = ReluBatchNormBackward
        .prepare::<NoCheckpointing>([z.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful();
    let gamma = contiguous(gamma.primitive);
    tensor(match prep {
        OpsKind::Tracked(prep) => {
            prep.finish((zp, stats.row(0), stats.row(1), gamma, shape, codes), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    })
}

/// The output from z `[n, c, positions]` (of `shape`) and the statistics' rows 2 and 3 (the
/// affine map): `relu(z) * scale + shift`, max-pooled and dropped out with probability p when
/// `pool` is `Some(p)` (with the pool's codes).
fn output<R: CubeRuntime, BT: BoolElement>(
    zp: &CubeTensor<R>,
    shape: &Shape,
    stats: &Stats<R>,
    pool: Option<f32>,
) -> (CubeTensor<R>, Option<pool::Codes<R>>) {
    let (scale, shift) = (stats.row(2), stats.row(3));
    match pool {
        Some(p) => {
            let z = reshape(zp.clone(), shape.clone());
            let (y, codes) = pool::forward::<R, BT>(&z, scale, shift, p);
            (y, Some(codes))
        }
        None => (reshape(relu_affine(zp, scale, shift), shape.clone()), None),
    }
}

/// Inference: normalizes with bn's running statistics, then max-pools when `pool` is given
/// (dropout is off in inference).
fn infer<B: Backend, R: CubeRuntime, BT: BoolElement>(
    bn: &BatchNorm<B>,
    z: Tensor<Cube<R, BT>, 4>,
    pool: Option<f32>,
) -> Tensor<Cube<R, BT>, 4> {
    let z = float(z);
    let shape = z.meta.shape().clone();
    let (scale, shift) = if shape.num_elements() == 0 {
        // Nothing to normalize, so no affine map: burn's ops on vectors of no channels would
        // launch no cubes. The kernels below launch nothing and give the output's shape.
        let none = empty(&z, Shape::new([shape[1]]));
        (none.clone(), none)
    } else {
        let vector = |t: Tensor<B, 1>| -> Tensor<Cube<R, BT>, 1> { same(t) };
        let inv_std = vector(bn.running_var.value())
            .add_scalar(bn.epsilon)
            .sqrt()
            .recip();
        let scale = vector(bn.gamma.val()) * inv_std;
        let shift = vector(bn.beta.val()) - vector(bn.running_mean.value()) * scale.clone();
        (contiguous(float(scale)), contiguous(float(shift)))
    };
    match pool {
        Some(_) => tensor(pool::forward::<R, BT>(&contiguous(z), scale, shift, 0.0).0),
        None => tensor(reshape(relu_affine(&planes(z), scale, shift), shape)),
    }
}

/// BatchNorm(ReLU(z)), then the max-pool and dropout when `pool` is given, by these kernels when
/// `B` is `Cube<R, BT>`: training mode with autodiff, running statistics without; else the
/// inputs back.
pub(super) fn on<'a, B: Backend, R: CubeRuntime, BT: BoolElement>(
    (bn, z, pool): Inputs<'a, B>,
) -> Result<Tensor<B, 4>, Inputs<'a, B>> {
    match cast::<_, Tensor<Autodiff<Cube<R, BT>>, 4>>(z) {
        Ok(z) => Ok(same(train(bn, z, pool))),
        Err(z) => match cast::<_, Tensor<Cube<R, BT>, 4>>(z) {
            Ok(z) => Ok(same(infer(bn, z, pool))),
            Err(z) => Err((bn, z, pool)),
        },
    }
}
