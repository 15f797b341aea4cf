//! The trainer's loss on the GPU: the mean over rows of `-sum_c target[i, c] *
//! log_softmax(logits)[i, c]` (cross-entropy against a weighted one-hot target: Keras'
//! class_weight), in one launch, and its gradient in one more. burn's ops took some 31 launches a
//! training step for the two (a max, differences, exp, sums, log, product, negation, division and
//! their backward), each a few hundred values: on a GPU at batch 32 the launches are the cost.
//! The target is a constant: it gets no gradient.
//!
//! The same formula as burn's `log_softmax` (the row's maximum subtracted before the exponent),
//! in f32; the rows' sum in a fixed order (a tree in one cube), so a run gives the same bytes.

use super::{Cube, WARP, contiguous, elementwise, empty};
use crate::fast_ops::{cast, float, same, tensor};
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime};
use cubecl::{CubeCount, CubeDim};

/// The logits `[n, k]` and the target `[n, k]`, handed back when the backend is not one of ours.
pub(super) type Inputs<B> = (Tensor<B, 2>, Tensor<B, 2>);

/// The kernels (in their own module: CubeCL's `Tensor` is not burn's).
mod kernels {
    use crate::cube::reduce::tree_sum;
    use cubecl::prelude::*;

    /// Row `row`'s maximum and `sum_c exp(logits[row, c] - max)`, of `k` logits.
    #[cube]
    fn max_and_sum(logits: &Tensor<f32>, row: usize, k: usize) -> (f32, f32) {
        let mut max = logits[row];
        for c in 1..k {
            max = f32::max(max, logits[row + c]);
        }
        let mut sum = 0.0f32;
        for c in 0..k {
            sum += f32::exp(logits[row + c] - max);
        }
        (max, sum)
    }

    /// `loss[0] = -(sum over rows i and classes c of target[i, c] * log_softmax(logits)[i, c])
    /// / n`. One cube of `slots` units (a power of two), each taking rows `units` apart.
    #[cube(launch_unchecked)]
    pub(super) fn cross_entropy(
        logits: &Tensor<f32>,
        target: &Tensor<f32>,
        loss: &mut Tensor<f32>,
        #[comptime] slots: usize,
    ) {
        let (n, k) = (logits.shape(0), logits.shape(1));
        let unit = UNIT_POS as usize;
        let mut acc = 0.0f32;
        let mut i = unit;
        while i < n {
            let row = i * k;
            let (max, sum) = max_and_sum(logits, row, k);
            let log_sum = f32::ln(sum);
            for c in 0..k {
                acc += target[row + c] * ((logits[row + c] - max) - log_sum);
            }
            i += CUBE_DIM as usize;
        }
        let mut shared = SharedMemory::<f32>::new(slots);
        shared[unit] = acc;
        tree_sum(&mut shared, 1usize, slots);
        if unit == 0 {
            loss[0] = -shared[0] / f32::cast_from(n);
        }
    }

    /// The logits' gradient from the loss's, `dy[0]`: `dy / n * (softmax[i, c] * sum_c
    /// target[i, c] - target[i, c])`. One unit per logit.
    #[cube(launch_unchecked)]
    pub(super) fn cross_entropy_grad(
        logits: &Tensor<f32>,
        target: &Tensor<f32>,
        dy: &Tensor<f32>,
        dx: &mut Tensor<f32>,
    ) {
        let at = ABSOLUTE_POS;
        if at >= dx.len() {
            terminate!();
        }
        let (n, k) = (logits.shape(0), logits.shape(1));
        let row = (at / k) * k;
        let (max, sum) = max_and_sum(logits, row, k);
        let mut weight = 0.0f32;
        for c in 0..k {
            weight += target[row + c];
        }
        let p = f32::exp(logits[at] - max) / sum;
        dx[at] = dy[0] / f32::cast_from(n) * (p * weight - target[at]);
    }
}

/// Units of the loss's cube at most (rows past them are walked): every backend allows 256.
const MAX_UNITS: usize = 256;

/// The loss `[1]` of contiguous `logits` and `target`.
fn forward<R: CubeRuntime>(logits: &CubeTensor<R>, target: &CubeTensor<R>) -> CubeTensor<R> {
    let loss = empty(logits, Shape::new([1]));
    let units = logits.meta.shape()[0]
        .next_power_of_two()
        .clamp(WARP, MAX_UNITS);
    // SAFETY: rows past the last are not walked; shared memory has a slot per unit.
    unsafe {
        kernels::cross_entropy::launch_unchecked::<R>(
            &logits.client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(units as u32),
            logits.clone().into_tensor_arg(),
            target.clone().into_tensor_arg(),
            loss.clone().into_tensor_arg(),
            units,
        )
    };
    loss
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl<R: CubeRuntime, BT: BoolElement> Backward<Cube<R, BT>, 1> for CrossEntropyBackward {
    type State = (CubeTensor<R>, CubeTensor<R>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = contiguous(grads.consume::<Cube<R, BT>>(&ops.node));
        let (logits, target) = ops.state;
        let [node] = ops.parents;
        let Some(node) = node else { return };
        let dx = empty(&logits, logits.meta.shape().clone());
        if dx.meta.shape().num_elements() == 0 {
            grads.register::<Cube<R, BT>>(node.id, dx);
            return;
        }
        let client = logits.client.clone();
        let (cube_count, cube_dim) = elementwise(&client, logits.meta.shape().num_elements());
        // SAFETY: a unit past the last logit ends.
        unsafe {
            kernels::cross_entropy_grad::launch_unchecked::<R>(
                &client,
                cube_count,
                cube_dim,
                logits.into_tensor_arg(),
                target.into_tensor_arg(),
                dy.into_tensor_arg(),
                dx.clone().into_tensor_arg(),
            )
        };
        grads.register::<Cube<R, BT>>(node.id, dx);
    }
}

fn cross_entropy_autodiff<R: CubeRuntime, BT: BoolElement>(
    logits: Tensor<Autodiff<Cube<R, BT>>, 2>,
    target: Tensor<Autodiff<Cube<R, BT>>, 2>,
) -> Tensor<Autodiff<Cube<R, BT>>, 1> {
    let logits = float(logits);
    let (x, t) = (
        contiguous(logits.primitive.clone()),
        contiguous(float(target.inner())),
    );
    let loss = forward(&x, &t);
    let prep = CrossEntropyBackward
        .prepare::<NoCheckpointing>([logits.node.clone()])
        .compute_bound()
        .stateful();
    tensor(match prep {
        OpsKind::Tracked(prep) => prep.finish((x, t), loss),
        OpsKind::UnTracked(prep) => prep.finish(loss),
    })
}

pub(super) fn on<B: Backend, R: CubeRuntime, BT: BoolElement>(
    inputs: Inputs<B>,
) -> Result<Tensor<B, 1>, Inputs<B>> {
    // The kernels read the target at the logits' indices, and each row's first logit.
    assert_eq!(
        inputs.0.shape(),
        inputs.1.shape(),
        "logits and target differ in shape"
    );
    assert!(inputs.0.dims()[1] > 0, "cross-entropy of no classes");
    type Ad<R, BT> = Autodiff<Cube<R, BT>>;
    match cast::<_, (Tensor<Ad<R, BT>, 2>, Tensor<Ad<R, BT>, 2>)>(inputs) {
        Ok((x, t)) => Ok(same(cross_entropy_autodiff(x, t))),
        Err(inputs) => match cast::<_, (Tensor<Cube<R, BT>, 2>, Tensor<Cube<R, BT>, 2>)>(inputs) {
            Ok((x, t)) => {
                let (x, t) = (contiguous(float(x)), contiguous(float(t)));
                Ok(same(tensor::<Cube<R, BT>, 1>(forward(&x, &t))))
            }
            Err(inputs) => Err(inputs),
        },
    }
}
