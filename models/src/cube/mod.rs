//! CancerNet's layers on burn's cubecl backends (CUDA and wgpu) as CubeCL kernels with their own
//! autodiff backward, used by `fast_ops` wherever the model runs on one of those backends, as
//! the CPU kernels are on flex: the depthwise 3x3 convolution (`depthwise`), the pointwise
//! convolution and dense layers (`pointwise`), ReLU + BatchNorm (`batch_norm`), and a block's
//! max-pool + dropout after it (`pool`); and the trainer's loss (`loss`) and Keras Adagrad update
//! (`adagrad`).
//!
//! Why: burn-cubecl 0.21 computes a grouped convolution's filter gradient with one host-side
//! convolution per channel (419 in CancerNet), each summing the whole batch on 9 threads; that
//! alone made a CUDA training step slower than the CPU's. And its matrix product runs in TF32 on
//! NVIDIA tensor cores, so a CUDA run could not be compared with a CPU run closely; these
//! kernels compute in f32 everywhere. See docs/performance.md.
//!
//! Every kernel launches unchecked, as burn's own do: a checked launch wraps each load and store
//! in a bounds test that reads the buffer's length from the launch's metadata (on lavapipe a
//! storage-buffer load of its own each time: a tenth of a training step). So each kernel keeps
//! its indices in bounds itself, and each launch says how (`SAFETY`): loads at indices clamped
//! into the tensor, their values selected after; stores under a condition.
//!
//! Tensors of no values (an empty batch, no channels, planes of no pixels) launch no grid of no
//! cubes (CUDA refuses one) and no load clamped into a tensor of none (it has no index to take):
//! the results have their (empty) sizes, and sums over nothing are zeros, as the CPU kernels'
//! (the loss of an empty batch and Adagrad of empty tensors alone launch one cube that loads
//! nothing). BatchNorm in training of an empty batch stops with a message, where the CPU
//! kernel gives statistics of nothing (NaN) that would reach the running averages.

mod adagrad;
mod batch_norm;
mod depthwise;
mod loss;
mod pointwise;
mod pool;
mod reduce;

use crate::fast_ops::cast;
use burn::nn::BatchNorm;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::zeros_client;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};
use cubecl::prelude::ComputeClient;
use cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};

/// A cubecl backend with f32 floats, the precision CancerNet trains in.
type Cube<R, BT> = CubeBackend<R, f32, i32, BT>;

/// At most this many cubes along y and z: the limit every backend allows.
const MAX_CUBES_YZ: usize = 65_535;

/// The fewest units a cube of these kernels has: an NVIDIA warp.
const WARP: usize = 32;

/// Tries `$on::<B, runtime, bool element, $extra>($inputs)` for each cubecl backend of this build:
/// returns its output, else evaluates to the inputs handed back.
macro_rules! on_each_backend {
    ($($on:ident)::+ $(<$extra:tt>)?, $inputs:expr) => {{
        let inputs = $inputs;
        #[cfg(feature = "wgpu")]
        let inputs = match $($on)::+::<B, burn::backend::wgpu::WgpuRuntime, u32 $(, $extra)?>(inputs) {
            Ok(y) => return Ok(y),
            Err(inputs) => inputs,
        };
        #[cfg(feature = "cuda")]
        let inputs = match $($on)::+::<B, cubecl::cuda::CudaRuntime, u8 $(, $extra)?>(inputs) {
            Ok(y) => return Ok(y),
            Err(inputs) => inputs,
        };
        inputs
    }};
}

/// `x` `[n, c, h, w]` convolved with `weight` `[c, 1, 3, 3]` ('same' padding, no bias) when `B`
/// is a cubecl backend of this build (with or without autodiff), else the inputs back.
pub fn depthwise3x3<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
) -> Result<Tensor<B, 4>, depthwise::Inputs<B>> {
    Err(on_each_backend!(depthwise::on, (x, weight)))
}

/// The 1x1 convolution of `x` `[n, ci, h, w]` with `weight` `[co, ci, 1, 1]` plus `bias` `[co]`,
/// when `B` is a cubecl backend of this build, else the inputs back.
pub fn pointwise<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
) -> Result<Tensor<B, 4>, pointwise::Inputs<B, 4>> {
    Err(on_each_backend!(pointwise::on<4>, (x, weight, bias)))
}

/// A dense layer, `x` `[n, in]` times `weight` `[in, out]` plus `bias` `[out]` (burn's `Linear`),
/// when `B` is a cubecl backend of this build, else the inputs back.
pub fn linear<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
) -> Result<Tensor<B, 2>, pointwise::Inputs<B, 2>> {
    Err(on_each_backend!(pointwise::on<2>, (x, weight, bias)))
}

/// BatchNorm(ReLU(z)) (training mode with autodiff, running statistics without) when `B` is a
/// cubecl backend of this build, else the inputs back.
pub fn relu_batch_norm<'a, B: Backend>(
    bn: &'a BatchNorm<B>,
    z: Tensor<B, 4>,
) -> Result<Tensor<B, 4>, batch_norm::Inputs<'a, B>> {
    Err(on_each_backend!(batch_norm::on, (bn, z, None)))
}

/// A block's end: BatchNorm(ReLU(z)), 2x2 max-pool, and dropout with probability `p` in
/// training (with autodiff), when `B` is a cubecl backend of this build, else the inputs back.
pub fn relu_batch_norm_pool<'a, B: Backend>(
    bn: &'a BatchNorm<B>,
    z: Tensor<B, 4>,
    p: f32,
) -> Result<Tensor<B, 4>, batch_norm::Inputs<'a, B>> {
    Err(on_each_backend!(batch_norm::on, (bn, z, Some(p))))
}

/// Keras' Adagrad update of parameter tensors, each flattened: `(p, g, a)` (values, gradient,
/// accumulator; `a += g^2; p -= lr * g / (sqrt(a) + epsilon)`), with the learning rate and
/// epsilon: each tensor's new `(p, a)`, in the same order, from a few launches (tensors of alike
/// lengths together), when `B` is a cubecl backend of this build, else the inputs back.
pub fn adagrad<B: Backend>(
    inputs: adagrad::Inputs<B>,
) -> Result<adagrad::Updated<B>, adagrad::Inputs<B>> {
    Err(on_each_backend!(adagrad::on, inputs))
}

/// The trainer's loss: the mean over rows of `-sum_c target * log_softmax(logits)` (`[n, k]`
/// each; the target a weighted one-hot), as `[1]`, when `B` is a cubecl backend of this build,
/// else the inputs back.
pub fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    target: Tensor<B, 2>,
) -> Result<Tensor<B, 1>, loss::Inputs<B>> {
    Err(on_each_backend!(loss::on, (logits, target)))
}

/// Whether the model's layers on `B` run these kernels (the GPU kernel tests ask before they
/// compare them with burn's ops).
pub fn serves<B: Backend>() -> bool {
    let device = Default::default();
    let probe = |shape: [usize; 4]| Tensor::<B, 4>::empty(shape, &device);
    depthwise3x3(probe([1, 1, 1, 1]), probe([1, 1, 3, 3])).is_ok()
}

/// Whether `B` is one of this build's cubecl backends, without autodiff: a test of its type, no
/// launch (the trainer asks each step).
pub fn is_cube<B: Backend>() -> bool {
    fn probe<B: Backend>() -> Result<(), Option<Tensor<B, 1>>> {
        Err(on_each_backend!(cube_type, None))
    }
    probe::<B>().is_ok()
}

/// `Ok` when `B` is `Cube<R, BT>` (the value is `None`: only its type is tested).
fn cube_type<B: Backend, R: CubeRuntime, BT: BoolElement>(
    none: Option<Tensor<B, 1>>,
) -> Result<(), Option<Tensor<B, 1>>> {
    cast::<_, Option<Tensor<Cube<R, BT>, 1>>>(none).map(drop)
}

/// Values per vector the kernels read and write along an axis of `len` values (a plane's
/// positions, a weight's rows): 4 (one 16-byte load) where `len` allows it, else 1. On a GPU that
/// is one wide load instead of four (lavapipe still fetches each of its values on its own).
fn vector_size(len: usize) -> usize {
    if len.is_multiple_of(4) { 4 } else { 1 }
}

/// The cube count and size of a launch with one unit per element of `units`.
fn elementwise<R: CubeRuntime>(client: &ComputeClient<R>, units: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new(client, units);
    (
        calculate_cube_count_elemwise(client, units, cube_dim),
        cube_dim,
    )
}

/// `t` laid out contiguous, as the kernels read it (burn's copy where it is not); a tensor of no
/// values as a new one, where burn's copy would launch no cubes (CUDA's upload pitches rows).
fn contiguous<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    match t.meta.shape().num_elements() {
        0 => empty(&t, t.meta.shape().clone()),
        _ => into_contiguous(t),
    }
}

/// Zeros of `shape` on `like`'s device: sums over nothing (an empty batch).
fn zeros<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    match shape.num_elements() {
        0 => empty(like, shape),
        _ => zeros_client(like.client.clone(), like.device.clone(), shape, DType::F32),
    }
}

/// An uninitialized contiguous f32 tensor on `like`'s device.
fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    let buffer = like.client.empty(shape.num_elements() * size_of::<f32>());
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        buffer,
        DType::F32,
    )
}
