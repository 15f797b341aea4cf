//! Keras' Adagrad update of one parameter tensor on the GPU: `a += g^2; p -= lr * g / (sqrt(a) +
//! eps)` in one kernel that reads p, g and a once and writes the new p and a. burn's ops take
//! seven launches for it, each a pass over the tensor: with CancerNet's 36 parameter tensors,
//! ~250 of the ~500 launches of a training step (bench/nvrtc-check.sh counts them).

use super::{Cube, elementwise, empty, vector_size};
use crate::fast_ops::{cast, float, same, tensor};
use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::reshape;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime};

/// The kernel (in its own module: CubeCL's `Tensor` is not burn's).
mod kernels {
    use cubecl::prelude::*;

    /// The update of p, g and a `[len]`, N values a unit.
    #[cube(launch)]
    pub(super) fn adagrad<N: Size>(
        p: &Tensor<Vector<f32, N>>,
        g: &Tensor<Vector<f32, N>>,
        a: &Tensor<Vector<f32, N>>,
        p_out: &mut Tensor<Vector<f32, N>>,
        a_out: &mut Tensor<Vector<f32, N>>,
        lr: f32,
        epsilon: f32,
    ) {
        let at = ABSOLUTE_POS;
        if at >= p.shape(0) / p.vector_size() {
            terminate!();
        }
        let grad = g[at];
        let acc = a[at] + grad * grad;
        a_out[at] = acc;
        p_out[at] =
            p[at] - Vector::cast_from(lr) * grad / (Vector::sqrt(acc) + Vector::cast_from(epsilon));
    }
}

/// An update's inputs (parameter, gradient, accumulator, learning rate, epsilon), handed back
/// where `B` is not a cubecl backend of this build.
pub type Inputs<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>, f32, f32);

/// The new parameter and accumulator when `B` is `Cube<R, BT>`, else the inputs back.
pub(super) fn on<B: Backend, R: CubeRuntime, BT: BoolElement, const D: usize>(
    inputs: Inputs<B, D>,
) -> Result<(Tensor<B, D>, Tensor<B, D>), Inputs<B, D>> {
    let (p, g, a, lr, epsilon) = cast::<_, Inputs<Cube<R, BT>, D>>(inputs)?;
    let shape = p.shape();
    let len = shape.num_elements();
    let flat = |t: Tensor<Cube<R, BT>, D>| -> CubeTensor<R> {
        into_contiguous(reshape(float(t), Shape::new([len])))
    };
    let (p, g, a) = (flat(p), flat(g), flat(a));
    let (p_out, a_out) = (empty(&p, Shape::new([len])), empty(&p, Shape::new([len])));
    let vector = vector_size(len);
    let (cube_count, cube_dim) = elementwise(&p.client, len / vector);
    kernels::adagrad::launch::<R>(
        &p.client,
        cube_count,
        cube_dim,
        vector,
        p.clone().into_tensor_arg(),
        g.into_tensor_arg(),
        a.into_tensor_arg(),
        p_out.clone().into_tensor_arg(),
        a_out.clone().into_tensor_arg(),
        lr,
        epsilon,
    );
    let back = |t: CubeTensor<R>| -> Tensor<B, D> {
        same(tensor::<Cube<R, BT>, D>(reshape(t, shape.clone())))
    };
    Ok((back(p_out), back(a_out)))
}
