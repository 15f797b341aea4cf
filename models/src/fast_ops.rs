//! CancerNet's layers as single burn operations with their own backward: depthwise 3x3
//! convolution, pointwise 1x1 convolution, the dense layers, ReLU + BatchNorm, and max-pool +
//! dropout. On flex with autodiff (training) they run the CPU `kernels` forward and backward
//! (the dense layers stay burn's `Linear` there); on plain flex (inference) their forward; on
//! burn's cubecl backends (CUDA, wgpu) the CubeCL kernels of `crate::cube`; on any other backend,
//! or with `Kernels::Burn`, burn's own ops, which are also the reference the tests compare
//! against.
//!
//! Why: composed from burn's generic ops, these layers cost ~4x a training step's useful work on
//! a CPU (broadcasts through strided iterators, one full-size temporary per op, a grouped
//! convolution's backward through a transposed convolution). See docs/performance.md.

use crate::kernels::{self, BatchStats, Nchw, OutputGrad};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::{Distribution, TensorPrimitive};
use burn_flex::FlexTensor;
use std::any::Any;
use std::sync::Arc;

/// The training backend the kernels serve.
type Ad = Autodiff<Flex>;

/// Which implementation of the layers a forward pass uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// The fused CPU kernels on flex, `crate::cube`'s on CUDA and wgpu, burn's ops elsewhere.
    Fast,
    /// burn's own ops everywhere (the reference).
    Burn,
}

/// `value` as a `U` when `T` is `U`, else `value` back: picks the kernels for the backends they
/// serve while the model stays generic over burn's `Backend`.
pub fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let boxed: Box<dyn Any> = Box::new(value);
    boxed
        .downcast::<U>()
        .map(|u| *u)
        .map_err(|b| *b.downcast::<T>().expect("the value's own type"))
}

/// The cast back after `cast` succeeded (`T` is `U`).
pub fn same<T: 'static, U: 'static>(value: T) -> U {
    cast(value).unwrap_or_else(|_| unreachable!("cast back to the type cast from"))
}

fn shape(t: &FlexTensor) -> Nchw {
    let [n, c, h, w] = t.layout().shape().dims::<4>();
    Nchw { n, c, h, w }
}

/// A contiguous copy-on-need of `t`, to read as one f32 slice.
fn contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("the fast CancerNet kernels work on contiguous f32 tensors")
}

fn flex<const D: usize>(data: Vec<f32>, dims: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, dims))
}

fn dims(s: Nchw) -> [usize; 4] {
    [s.n, s.c, s.h, s.w]
}

pub(crate) fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> B::FloatTensorPrimitive {
    t.into_primitive().tensor()
}

pub(crate) fn tensor<B: Backend, const D: usize>(t: B::FloatTensorPrimitive) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

// ---- Depthwise 3x3 convolution ----

/// CancerNet's depthwise convolution (3x3, one filter per channel, 'same' padding, no bias).
pub fn depthwise3x3<B: Backend>(
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    kernels: Kernels,
) -> Tensor<B, 4> {
    if kernels == Kernels::Burn {
        return conv.forward(x);
    }
    let w = conv.weight.val();
    match cast::<_, (Tensor<Ad, 4>, Tensor<Ad, 4>)>((x, w)) {
        Ok((x, w)) => same(depthwise_autodiff(x, w)),
        Err((x, w)) => match cast::<_, (Tensor<Flex, 4>, Tensor<Flex, 4>)>((x, w)) {
            Ok((x, w)) => same(tensor::<Flex, 4>(depthwise_forward(&float(x), &float(w)))),
            Err((x, w)) => crate::cube::depthwise3x3(x, w).unwrap_or_else(|(x, _)| conv.forward(x)),
        },
    }
}

fn depthwise_forward(x: &FlexTensor, w: &FlexTensor) -> FlexTensor {
    let s = shape(x);
    let (x, w) = (contiguous(x), contiguous(w));
    flex(kernels::depthwise3x3(f32s(&x), f32s(&w), s), dims(s))
}

#[derive(Debug)]
struct DepthwiseBackward;

impl Backward<Flex, 2> for DepthwiseBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let (x, w) = ops.state;
        let s = shape(&x);
        let [x_node, w_node] = ops.parents;
        let (x, w) = (contiguous(&x), contiguous(&w));
        let (dx, dw) =
            kernels::depthwise3x3_backward(f32s(&x), f32s(&w), f32s(&dy), s, x_node.is_some());
        if let (Some(node), Some(dx)) = (x_node, dx) {
            grads.register::<Flex>(node.id, flex(dx, dims(s)));
        }
        if let Some(node) = w_node {
            grads.register::<Flex>(node.id, flex(dw, [s.c, 1, 3, 3]));
        }
    }
}

fn depthwise_autodiff(x: Tensor<Ad, 4>, w: Tensor<Ad, 4>) -> Tensor<Ad, 4> {
    let (x, w) = (float(x), float(w));
    let y = depthwise_forward(&x.primitive, &w.primitive);
    let prep = DepthwiseBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful();
    tensor(match prep {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, w.primitive), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    })
}

// ---- Pointwise (1x1) convolution ----

/// CancerNet's pointwise convolution (1x1, stride 1, with bias).
pub fn pointwise<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>, kernels: Kernels) -> Tensor<B, 4> {
    let bias = conv.bias.as_ref().map(|b| b.val());
    if kernels == Kernels::Burn || bias.is_none() {
        return crate::pointwise_matmul(conv, x);
    }
    let params = (x, conv.weight.val(), bias.expect("checked above"));
    match cast::<_, (Tensor<Ad, 4>, Tensor<Ad, 4>, Tensor<Ad, 1>)>(params) {
        Ok((x, w, b)) => same(pointwise_autodiff(x, w, b)),
        Err(params) => match cast::<_, (Tensor<Flex, 4>, Tensor<Flex, 4>, Tensor<Flex, 1>)>(params)
        {
            Ok((x, w, b)) => same(tensor::<Flex, 4>(pointwise_forward(
                &float(x),
                &float(w),
                &float(b),
            ))),
            Err((x, w, b)) => crate::cube::pointwise(x, w, b)
                .unwrap_or_else(|(x, ..)| crate::pointwise_matmul(conv, x)),
        },
    }
}

// ---- Dense layer ----

/// A dense layer (burn's `Linear`): the CubeCL kernels on burn's GPU backends (full f32, where
/// burn's product is TF32 on NVIDIA tensor cores), burn's own everywhere else.
pub fn linear<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>, kernels: Kernels) -> Tensor<B, 2> {
    match &layer.bias {
        Some(bias) if kernels == Kernels::Fast => {
            crate::cube::linear(x, layer.weight.val(), bias.val())
                .unwrap_or_else(|(x, ..)| layer.forward(x))
        }
        _ => layer.forward(x),
    }
}

fn pointwise_forward(x: &FlexTensor, w: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let s = shape(x);
    let (x, w, b) = (contiguous(x), contiguous(w), contiguous(b));
    let co = f32s(&b).len();
    flex(
        kernels::pointwise(f32s(&x), f32s(&w), f32s(&b), s),
        [s.n, co, s.h, s.w],
    )
}

#[derive(Debug)]
struct PointwiseBackward;

impl Backward<Flex, 3> for PointwiseBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let (x, w) = (contiguous(&ops.state.0), contiguous(&ops.state.1));
        let s = shape(&x);
        let co = shape(&dy).c;
        let [x_node, w_node, b_node] = ops.parents;
        let (dx, dw, db) =
            kernels::pointwise_backward(f32s(&x), f32s(&w), f32s(&dy), co, s, x_node.is_some());
        if let (Some(node), Some(dx)) = (x_node, dx) {
            grads.register::<Flex>(node.id, flex(dx, dims(s)));
        }
        if let Some(node) = w_node {
            grads.register::<Flex>(node.id, flex(dw, [co, s.c, 1, 1]));
        }
        if let Some(node) = b_node {
            grads.register::<Flex>(node.id, flex(db, [co]));
        }
    }
}

fn pointwise_autodiff(x: Tensor<Ad, 4>, w: Tensor<Ad, 4>, b: Tensor<Ad, 1>) -> Tensor<Ad, 4> {
    let (x, w, b) = (float(x), float(w), float(b));
    let y = pointwise_forward(&x.primitive, &w.primitive, &b.primitive);
    let prep = PointwiseBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful();
    tensor(match prep {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, w.primitive), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    })
}

// ---- ReLU + BatchNorm (and a block's last one, with the max-pool and dropout) ----

/// `BatchNorm(ReLU(z))`, the tutorial's order. Training mode (batch statistics, running
/// averages updated) on an autodiff backend, running statistics otherwise.
pub fn relu_batch_norm<B: Backend>(
    bn: &BatchNorm<B>,
    z: Tensor<B, 4>,
    kernels: Kernels,
) -> Tensor<B, 4> {
    if kernels == Kernels::Burn {
        return crate::batch_norm_nchw(bn, relu(z));
    }
    match cast::<_, Tensor<Ad, 4>>(z) {
        Ok(z) => same(bn_autodiff(bn, z, None)),
        Err(z) => match cast::<_, Tensor<Flex, 4>>(z) {
            Ok(z) => {
                let values =
                    |t: Tensor<B, 1>| t.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
                let (gamma, beta) = (values(bn.gamma.val()), values(bn.beta.val()));
                let (mean, var) = (
                    values(bn.running_mean.value()),
                    values(bn.running_var.value()),
                );
                let (scale, shift) =
                    kernels::bn_affine(&gamma, &beta, &mean, &var, bn.epsilon as f32);
                let z = contiguous(&float(z));
                let s = shape(&z);
                same(tensor::<Flex, 4>(flex(
                    kernels::relu_affine(f32s(&z), &scale, &shift, s),
                    dims(s),
                )))
            }
            Err(z) => crate::cube::relu_batch_norm(bn, z)
                .unwrap_or_else(|(bn, z, _)| crate::batch_norm_nchw(bn, relu(z))),
        },
    }
}

/// The dense head's `BatchNorm(ReLU(x))`, x `[n, features]`. On burn's cubecl backends the
/// kernels of `relu_batch_norm`, the features as channels of one position (5 launches a training
/// step where burn's ops took some 60); elsewhere burn's BatchNorm.
pub fn dense_relu_batch_norm<B: Backend>(
    bn: &BatchNorm<B>,
    x: Tensor<B, 2>,
    kernels: Kernels,
) -> Tensor<B, 2> {
    let burns = |bn: &BatchNorm<B>, x| bn.forward(relu(x));
    if kernels == Kernels::Burn {
        return burns(bn, x);
    }
    let [n, features] = x.dims();
    match crate::cube::relu_batch_norm(bn, x.reshape([n, features, 1, 1])) {
        Ok(y) => y.reshape([n, features]),
        Err((bn, z, _)) => burns(bn, z.reshape([n, features])),
    }
}

/// A block's last layer and its end: `max_pool2_dropout(relu_batch_norm(z))`. In training on
/// flex, one operation that never stores the normalized tensor nor its gradient (both ~4x the
/// pooled output), which saves a quarter of the memory traffic of a training step's largest
/// layers.
pub fn relu_batch_norm_pool<B: Backend>(
    bn: &BatchNorm<B>,
    z: Tensor<B, 4>,
    p: f64,
    kernels: Kernels,
) -> Tensor<B, 4> {
    // Burn's ops, or the two fused ops of this module, one after the other.
    let composed = |bn, z| max_pool2_dropout(relu_batch_norm(bn, z, kernels), p, kernels);
    match cast::<_, Tensor<Ad, 4>>(z) {
        Ok(z) if kernels == Kernels::Fast => {
            let seed = dropout_seed(&z.device());
            same(bn_autodiff(bn, z, Some((p as f32, seed))))
        }
        Ok(z) => composed(bn, same(z)),
        Err(z) if kernels == Kernels::Fast => crate::cube::relu_batch_norm_pool(bn, z, p as f32)
            .unwrap_or_else(|(bn, z, _)| composed(bn, z)),
        Err(z) => composed(bn, z),
    }
}

/// Training-mode BatchNorm(ReLU(z)) as one autodiff operation, followed by the max-pool and
/// dropout when `pool` is given; moves `bn`'s running statistics.
fn bn_autodiff<B: Backend>(
    bn: &BatchNorm<B>,
    z: Tensor<Ad, 4>,
    pool: Option<(f32, u64)>,
) -> Tensor<Ad, 4> {
    let (gamma, beta) = (bn.gamma.val(), bn.beta.val());
    let (gamma, beta): (Tensor<Ad, 1>, Tensor<Ad, 1>) = (same(gamma), same(beta));
    let eps = bn.epsilon as f32;
    let device = z.device();
    let (z, gamma, beta) = (float(z), float(gamma), float(beta));
    let (zc, g, b) = (
        contiguous(&z.primitive),
        contiguous(&gamma.primitive),
        contiguous(&beta.primitive),
    );
    let s = shape(&zc);
    let (y, code, stats) = match pool {
        None => {
            let (y, stats) = kernels::relu_batch_norm(f32s(&zc), f32s(&g), f32s(&b), eps, s);
            (flex(y, dims(s)), None, stats)
        }
        Some((p, seed)) => {
            let dropout = (p > 0.0).then_some((p, seed));
            let (y, code, stats) =
                kernels::relu_batch_norm_pool(f32s(&zc), f32s(&g), f32s(&b), eps, s, dropout);
            let y = flex(y, [s.n, s.c, s.h / 2, s.w / 2]);
            (y, Some((Arc::new(code), 1.0 / (1.0 - p))), stats)
        }
    };
    let c = stats.mean.len();
    let column =
        |v: &[f32]| Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [c]), &same(device));
    crate::update_running_stats(bn, column(&stats.mean), column(&stats.var));
    let prep = ReluBatchNormBackward
        .prepare::<NoCheckpointing>([z.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful();
    tensor(match prep {
        OpsKind::Tracked(prep) => prep.finish((zc, g, Arc::new(stats), eps, code), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    })
}

#[derive(Debug)]
struct ReluBatchNormBackward;

impl Backward<Flex, 3> for ReluBatchNormBackward {
    /// z, gamma, the batch statistics, epsilon, and the pool's window codes and dropout scale.
    type State = (
        FlexTensor,
        FlexTensor,
        Arc<BatchStats>,
        f32,
        Option<(Arc<Vec<u8>>, f32)>,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let (z, gamma, stats, eps, pool) = ops.state;
        let s = shape(&z);
        let grad = match &pool {
            None => OutputGrad::Dense(f32s(&dy)),
            Some((code, scale)) => OutputGrad::Pooled {
                dy: f32s(&dy),
                code,
                scale: *scale,
            },
        };
        let (dz, dgamma, dbeta) =
            kernels::relu_batch_norm_backward(f32s(&z), f32s(&gamma), &stats, eps, grad, s);
        let [z_node, gamma_node, beta_node] = ops.parents;
        if let Some(node) = z_node {
            grads.register::<Flex>(node.id, flex(dz, dims(s)));
        }
        for (node, grad) in [(gamma_node, dgamma), (beta_node, dbeta)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, flex(grad, [s.c]));
            }
        }
    }
}

// ---- Max-pool 2 + dropout ----

/// 2x2 max-pool (stride 2), then dropout with probability `p` on an autodiff backend (training).
pub fn max_pool2_dropout<B: Backend>(x: Tensor<B, 4>, p: f64, kernels: Kernels) -> Tensor<B, 4> {
    let burn_ops = |x: Tensor<B, 4>| {
        let y = max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false);
        burn::nn::DropoutConfig::new(p).init().forward(y)
    };
    if kernels == Kernels::Burn {
        return burn_ops(x);
    }
    match cast::<_, Tensor<Ad, 4>>(x) {
        Ok(x) => {
            let seed = dropout_seed(&x.device());
            same(pool_dropout_autodiff(x, p as f32, seed))
        }
        Err(x) => match cast::<_, Tensor<Flex, 4>>(x) {
            Ok(x) => {
                let x = contiguous(&float(x));
                let s = shape(&x);
                let (y, _) = kernels::max_pool2_dropout(f32s(&x), s, None);
                same(tensor::<Flex, 4>(flex(y, [s.n, s.c, s.h / 2, s.w / 2])))
            }
            Err(x) => burn_ops(x),
        },
    }
}

/// A seed for one dropout mask, drawn from the backend's generator, so that `Backend::seed`
/// makes a run reproducible as it does for burn's own `Dropout`.
fn dropout_seed(device: &burn::tensor::Device<Ad>) -> u64 {
    // Two 30-bit draws (the backend's integers may be 32-bit signed).
    let draw =
        Tensor::<Ad, 1, Int>::random([2], Distribution::Uniform(0.0, (1u64 << 30) as f64), device);
    let v: Vec<i64> = draw.into_data().convert::<i64>().to_vec().expect("i64");
    ((v[0] as u64) << 30) ^ (v[1] as u64)
}

#[derive(Debug)]
struct PoolDropoutBackward;

impl Backward<Flex, 1> for PoolDropoutBackward {
    type State = (Arc<Vec<u8>>, Nchw, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let (code, s, scale) = ops.state;
        let [x_node] = ops.parents;
        if let Some(node) = x_node {
            let dx = kernels::max_pool2_dropout_backward(f32s(&dy), &code, s, scale);
            grads.register::<Flex>(node.id, flex(dx, dims(s)));
        }
    }
}

fn pool_dropout_autodiff(x: Tensor<Ad, 4>, p: f32, seed: u64) -> Tensor<Ad, 4> {
    let x = float(x);
    let xc = contiguous(&x.primitive);
    let s = shape(&xc);
    let (y, code) = kernels::max_pool2_dropout(f32s(&xc), s, (p > 0.0).then_some((p, seed)));
    let y = flex(y, [s.n, s.c, s.h / 2, s.w / 2]);
    let prep = PoolDropoutBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful();
    tensor(match prep {
        OpsKind::Tracked(prep) => prep.finish((Arc::new(code), s, 1.0 / (1.0 - p)), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::AutodiffModule;
    use burn::nn::BatchNormConfig;

    fn max_diff<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).abs().max().into_scalar()
    }

    fn input(dims: [usize; 4]) -> Tensor<Ad, 4> {
        Tensor::random(dims, Distribution::Normal(0.2, 1.0), &Default::default()).require_grad()
    }

    /// An input of the values -1, 0 and 1, scattered: ties within pooling windows, in every
    /// pairing of their cells.
    fn stepped(dims: [usize; 4]) -> Tensor<Ad, 4> {
        let n = dims.iter().product::<usize>();
        let level = |i: usize| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 3;
        let v: Vec<f32> = (0..n).map(|i| level(i) as f32 - 1.0).collect();
        Tensor::from_data(TensorData::new(v, dims), &Default::default()).require_grad()
    }

    /// Runs `f` on both implementations with the same input and output weights; returns the
    /// outputs' and the input gradients' largest differences.
    fn compare(
        x: Tensor<Ad, 4>,
        f: impl Fn(Tensor<Ad, 4>, Kernels) -> Tensor<Ad, 4>,
    ) -> (f32, f32, Gradients, Gradients) {
        let (fast, reference) = (f(x.clone(), Kernels::Fast), f(x.clone(), Kernels::Burn));
        let w = Tensor::<Ad, 4>::random(fast.dims(), Distribution::Default, &x.device());
        let out = max_diff(fast.clone().inner(), reference.clone().inner());
        let (gf, gr) = (
            (fast * w.clone()).sum().backward(),
            (reference * w).sum().backward(),
        );
        let dx = max_diff(x.grad(&gf).unwrap(), x.grad(&gr).unwrap());
        (out, dx, gf, gr)
    }

    #[test]
    fn depthwise_matches_burns_grouped_conv() {
        // Narrow planes (edge columns only), one and several vector blocks (the last one
        // overlapping), single rows.
        for dims in [
            [3, 4, 9, 7],
            [2, 3, 6, 21],
            [2, 3, 5, 12],
            [1, 2, 3, 70],
            [2, 3, 1, 1],
            [2, 2, 5, 1],
        ] {
            let conv = burn::nn::conv::Conv2dConfig::new([dims[1], dims[1]], [3, 3])
                .with_groups(dims[1])
                .with_padding(burn::nn::PaddingConfig2d::Same)
                .with_bias(false)
                .init::<Ad>(&Default::default());
            let (out, dx, gf, gr) = compare(input(dims), |x, k| depthwise3x3(&conv, x, k));
            let dw = max_diff(
                conv.weight.grad(&gf).unwrap(),
                conv.weight.grad(&gr).unwrap(),
            );
            assert!(
                out < 1e-5 && dx < 1e-5 && dw < 1e-4,
                "{dims:?}: {out} {dx} {dw}"
            );
            // Inference (no autodiff) takes the same kernels.
            let (c, x) = (conv.valid(), input(dims).inner());
            let eval = max_diff(
                depthwise3x3(&c, x.clone(), Kernels::Fast),
                depthwise3x3(&c, x, Kernels::Burn),
            );
            assert!(eval < 1e-5, "{dims:?} eval {eval}");
        }
    }

    #[test]
    fn pointwise_matches_burns_conv() {
        // Many input channels (the GEMM) and a few (dot products); 9 samples make three groups
        // whose weight and bias gradients are summed (`SAMPLES_PER_TASK`).
        for dims in [[3, 5, 4, 6], [2, 3, 1, 1], [9, 6, 2, 3]] {
            let conv = burn::nn::conv::Conv2dConfig::new([dims[1], 7], [1, 1])
                .init::<Ad>(&Default::default());
            let (out, dx, gf, gr) = compare(input(dims), |x, k| match k {
                Kernels::Fast => pointwise(&conv, x, k),
                Kernels::Burn => conv.forward(x),
            });
            let dw = max_diff(
                conv.weight.grad(&gf).unwrap(),
                conv.weight.grad(&gr).unwrap(),
            );
            let bias = conv.bias.as_ref().unwrap();
            let db = max_diff(bias.grad(&gf).unwrap(), bias.grad(&gr).unwrap());
            assert!(
                out < 1e-5 && dx < 1e-5 && dw < 1e-4 && db < 1e-4,
                "{dims:?}: {out} {dx} {dw} {db}"
            );
            let (c, x) = (conv.valid(), input(dims).inner());
            let eval = max_diff(pointwise(&c, x.clone(), Kernels::Fast), c.forward(x));
            assert!(eval < 1e-5, "{dims:?} eval {eval}");
        }
    }

    #[test]
    fn relu_batch_norm_matches_burns_ops() {
        let dims = [4, 3, 6, 5];
        let bn = BatchNormConfig::new(3)
            .with_momentum(0.1)
            .init::<Ad>(&Default::default());
        // Non-trivial gamma and beta, shared by both paths.
        let bn = BatchNorm {
            gamma: bn
                .gamma
                .map(|g| g.mul_scalar(1.5).add_scalar(0.25).detach().require_grad()),
            beta: bn.beta.map(|b| b.add_scalar(-0.5).detach().require_grad()),
            ..bn
        };
        let reference = bn.clone();
        let x = input(dims);
        let (fast, slow) = (
            relu_batch_norm(&bn, x.clone(), Kernels::Fast),
            relu_batch_norm(&reference, x.clone(), Kernels::Burn),
        );
        assert!(max_diff(fast.clone().inner(), slow.clone().inner()) < 1e-5);
        let w = Tensor::<Ad, 4>::random(dims, Distribution::Default, &x.device());
        let (gf, gr) = (
            (fast * w.clone()).sum().backward(),
            (slow * w).sum().backward(),
        );
        let dx = max_diff(x.grad(&gf).unwrap(), x.grad(&gr).unwrap());
        let dg = max_diff(
            bn.gamma.grad(&gf).unwrap(),
            reference.gamma.grad(&gr).unwrap(),
        );
        let db = max_diff(
            bn.beta.grad(&gf).unwrap(),
            reference.beta.grad(&gr).unwrap(),
        );
        assert!(dx < 1e-4 && dg < 1e-4 && db < 1e-4, "{dx} {dg} {db}");
        // Running statistics moved the same way; eval mode uses them alike.
        let (e, r) = (bn.valid(), reference.valid());
        let running = max_diff(e.running_var.value(), r.running_var.value())
            + max_diff(e.running_mean.value(), r.running_mean.value());
        assert!(running < 1e-5, "running stats {running}");
        let xi = input(dims).inner();
        let eval = max_diff(
            relu_batch_norm(&e, xi.clone(), Kernels::Fast),
            relu_batch_norm(&r, xi, Kernels::Burn),
        );
        assert!(eval < 1e-5, "eval {eval}");
    }

    #[test]
    fn fused_block_end_matches_its_parts() {
        let dev = Default::default();
        // Odd sides, and a row of more than eight windows (one vector group and a tail).
        for dims in [[3, 4, 8, 6], [2, 3, 7, 5], [2, 3, 5, 21]] {
            let bn = BatchNormConfig::new(dims[1])
                .with_momentum(0.1)
                .init::<Ad>(&dev);
            let bn = BatchNorm {
                gamma: bn
                    .gamma
                    .map(|g| g.mul_scalar(-1.5).add_scalar(0.5).detach().require_grad()),
                ..bn
            };
            let parts = bn.clone();
            let x = input(dims);
            // Same seed: the fused op draws the same dropout mask as the separate max-pool.
            // (Explicit: tests run in parallel and share the backend's generator.)
            let run = |bn: &BatchNorm<Ad>, fused: bool, p: f64, k: Kernels| match (fused, k) {
                (true, _) => bn_autodiff(bn, x.clone(), Some((p as f32, 11))),
                (false, Kernels::Fast) => {
                    pool_dropout_autodiff(relu_batch_norm(bn, x.clone(), k), p as f32, 11)
                }
                (false, Kernels::Burn) => {
                    max_pool2_dropout(relu_batch_norm(bn, x.clone(), k), p, k)
                }
            };
            for (p, k) in [(0.0, Kernels::Burn), (0.25, Kernels::Fast)] {
                let (fused, composed) =
                    (run(&bn, true, p, Kernels::Fast), run(&parts, false, p, k));
                let out = max_diff(fused.clone().inner(), composed.clone().inner());
                assert!(out < 1e-5, "{dims:?} p {p}: output {out}");
                let w = Tensor::<Ad, 4>::random(fused.dims(), Distribution::Default, &dev);
                let (gf, gc) = (
                    (fused * w.clone()).sum().backward(),
                    (composed * w).sum().backward(),
                );
                let dx = max_diff(x.grad(&gf).unwrap(), x.grad(&gc).unwrap());
                let dg = max_diff(bn.gamma.grad(&gf).unwrap(), parts.gamma.grad(&gc).unwrap());
                let db = max_diff(bn.beta.grad(&gf).unwrap(), parts.beta.grad(&gc).unwrap());
                assert!(
                    dx < 1e-4 && dg < 1e-4 && db < 1e-4,
                    "{dims:?} p {p}: {dx} {dg} {db}"
                );
            }
            let var = max_diff(
                bn.valid().running_var.value(),
                parts.valid().running_var.value(),
            );
            assert!(var < 1e-5, "running variance {var}");
        }
    }

    #[test]
    fn max_pool_matches_burns_and_drops_by_seed() {
        // Odd sides: the trailing row and column are dropped, as burn does. More than eight
        // windows a row: one vector group and a tail.
        // Ties: the gradient goes to the first maximum in window order, as in burn.
        for dims in [[2, 3, 8, 6], [2, 2, 7, 5], [2, 3, 5, 21]] {
            for x in [input(dims), stepped(dims)] {
                let (out, dx, ..) = compare(x, |x, k| max_pool2_dropout(x, 0.0, k));
                assert!(out < 1e-6 && dx < 1e-6, "{dims:?}: {out} {dx}");
            }
        }
        // With dropout: the kept outputs are the scaled maxima, gradients flow only through
        // them, the mask follows the backend's seed.
        let x = input([4, 8, 16, 16]);
        // Explicit seeds: tests run in parallel and share the backend's generator.
        let run = |seed| {
            let y = pool_dropout_autodiff(x.clone(), 0.25, seed);
            let g = y.clone().sum().backward();
            (y.inner(), x.grad(&g).unwrap())
        };
        let (y, dx) = run(3);
        let plain = max_pool2_dropout(x.clone().inner(), 0.0, Kernels::Fast);
        let kept = y.clone().not_equal_elem(0.0);
        let share = kept.clone().int().sum().into_scalar() as f64 / y.shape().num_elements() as f64;
        assert!((share - 0.75).abs() < 0.05, "kept {share}");
        let expected = plain.div_scalar(0.75).mask_fill(kept.bool_not(), 0.0);
        assert!(max_diff(y.clone(), expected) < 1e-5);
        let grad_sum: f32 = dx.sum().into_scalar();
        let kept_count = y.clone().not_equal_elem(0.0).int().sum().into_scalar() as f32;
        assert!(
            (grad_sum - kept_count / 0.75).abs() < 1e-2,
            "{grad_sum} vs {kept_count}"
        );
        assert_eq!(run(3).0.into_data(), y.clone().into_data());
        assert_ne!(run(4).0.into_data(), y.into_data());
    }
}
