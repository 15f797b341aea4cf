//! ReLU + BatchNorm and a block's end (+ max-pool and dropout) on the device against burn's ops
//! on the CPU.

use super::{check, data, leaf, shifted};
use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Param};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// A BatchNorm layer on `device` with the given gamma and beta.
fn batch_norm<B: Backend>(
    gamma: &TensorData,
    beta: &TensorData,
    device: &B::Device,
) -> BatchNorm<B> {
    let mut bn: BatchNorm<B> = BatchNormConfig::new(gamma.shape[0]).init(device);
    bn.gamma = Param::from_tensor(Tensor::from_data(gamma.clone(), device));
    bn.beta = Param::from_tensor(Tensor::from_data(beta.clone(), device));
    bn
}

/// ReLU + BatchNorm, and a block's end (the same, then the 2x2 max-pool and dropout), by the
/// device's kernels against burn's ops on the CPU (`models::batch_norm_nchw` of `relu`, burn's
/// `max_pool2d`): outputs, the gradients of z, gamma and beta, the running statistics, and
/// inference with them, within f32's 1e-5 of the largest value. With dropout the two devices
/// draw different masks: the device's is read off its output (0 where dropped) and applied to
/// the CPU's, after which the same comparison holds; about 1 - p of the outputs are kept, and
/// the same seed gives the same bytes.
pub(super) fn batch_norm_kernels_match_burns<B: AutodiffBackend>(device: B::Device) {
    use burn::tensor::activation::relu;
    use burn::tensor::module::max_pool2d;
    type Cpu = Autodiff<Flex>;
    let cpu = Default::default();
    let pool = |y: Tensor<Cpu, 4>| max_pool2d(y, [2, 2], [2, 2], [0, 0], [1, 1], false);
    let mut worst = 0f32;
    // (seed, z's shape, the block's end's dropout if any, an offset added to z)
    for (seed, dims, end, offset) in [
        (1, [2, 32, 48, 48], None, 0.0),
        (2, [3, 5, 7, 9], None, 0.0),
        (3, [4, 16, 12, 12], Some(0.0), 0.0),
        (4, [2, 3, 7, 9], Some(0.0), 0.0),
        (5, [8, 32, 24, 24], Some(0.25), 0.0),
        // The dense head's: features as channels of one position.
        (6, [32, 256, 1, 1], None, 0.0),
        // Planes of one vector (64 a cube, 15 of them) and of 15 (4 units each, 3 of them
        // taking 4 vectors and one 3; 16 planes a cube, 6 of them).
        (7, [3, 5, 2, 2], None, 0.0),
        (8, [2, 3, 6, 10], None, 0.0),
        // Channels far from 0 for their spread (10 +- 1), read as vectors and as single values:
        // the variance's sums are taken around a value of the channel; around 0 f32 would keep
        // a few of its digits.
        (9, [4, 8, 12, 12], None, 10.0),
        (10, [4, 8, 7, 9], None, 10.0),
        // Sums in four parts of 8, 8, 8 and 6 images (more values than a part takes), 256
        // units a cube.
        (11, [30, 2, 48, 48], None, 10.0),
        // A block's end read as vectors, with a trailing odd row (the pool drops it) and rows of
        // one vector; and with dropout.
        (12, [2, 3, 9, 4], Some(0.0), 0.0),
        (13, [4, 16, 25, 24], Some(0.25), 0.0),
        // 625 vectors a plane: elementwise units taking 4 vectors of it and 3.
        (14, [2, 3, 50, 50], None, 0.0),
    ] {
        let c = dims[1];
        let (zd, gamma, beta) = (
            shifted(data(&dims, seed), offset),
            data(&[c], seed + 10),
            data(&[c], seed + 20),
        );
        let out = match end {
            Some(_) => [dims[0], c, dims[2] / 2, dims[3] / 2],
            None => dims,
        };
        let gd = data(&out, seed + 30);
        let run_gpu = || {
            B::seed(&device, 7);
            let (bn, z) = (
                batch_norm::<B>(&gamma, &beta, &device),
                leaf::<B, 4>(&zd, &device),
            );
            let y = match end {
                Some(p) => models::cube::relu_batch_norm_pool(&bn, z.clone(), p),
                None => models::cube::relu_batch_norm(&bn, z.clone()),
            };
            let y = y.ok().unwrap();
            let g = (y.clone() * Tensor::from_data(gd.clone(), &device))
                .sum()
                .backward();
            let grads = (
                z.grad(&g).unwrap(),
                bn.gamma.grad(&g).unwrap(),
                bn.beta.grad(&g).unwrap(),
            );
            (y.inner(), grads, bn)
        };
        let (y, (dz, dgamma, dbeta), bn) = run_gpu();
        let (cbn, cz) = (
            batch_norm::<Cpu>(&gamma, &beta, &cpu),
            leaf::<Cpu, 4>(&zd, &cpu),
        );
        let mut cy = models::batch_norm_nchw(&cbn, relu(cz.clone()));
        if let Some(p) = end {
            let got = Tensor::<Flex, 4>::from_data(y.clone().into_data(), &Default::default());
            let kept = got.not_equal_elem(0.0).float();
            let share: f32 = kept.clone().mean().into_scalar();
            assert!(
                (share - (1.0 - p)).abs() < 0.015,
                "{dims:?}: {share} of the outputs kept, p = {p}"
            );
            cy = pool(cy) * Tensor::from_inner(kept).div_scalar(1.0 - p);
        }
        let cg = (cy.clone() * Tensor::from_data(gd.clone(), &cpu))
            .sum()
            .backward();
        let what = |t: &str| format!("ReLU + BatchNorm {dims:?}, pool {end:?}: {t}");
        worst = worst
            .max(check(&what("output"), y.clone(), cy.inner()))
            .max(check(&what("z grad"), dz, cz.grad(&cg).unwrap()))
            .max(check(
                &what("gamma grad"),
                dgamma,
                cbn.gamma.grad(&cg).unwrap(),
            ))
            .max(check(
                &what("beta grad"),
                dbeta,
                cbn.beta.grad(&cg).unwrap(),
            ))
            // value_sync: burn's `update` (the CPU's) leaves `value` one update behind.
            .max(check(
                &what("running mean"),
                bn.running_mean.value_sync(),
                cbn.running_mean.value_sync().inner(),
            ))
            .max(check(
                &what("running var"),
                bn.running_var.value_sync(),
                cbn.running_var.value_sync().inner(),
            ));
        assert!(
            run_gpu().0.into_data() == y.into_data(),
            "{}",
            what("the same seed gave other bytes")
        );
        // Inference: the running statistics, and no dropout.
        let (bn, cbn) = (bn.valid(), cbn.valid());
        let z = Tensor::<B::InnerBackend, 4>::from_data(zd.clone(), &device);
        let cz = Tensor::<Flex, 4>::from_data(zd, &Default::default());
        let (y, cy) = match end {
            Some(_) => (
                models::cube::relu_batch_norm_pool(&bn, z, 0.5),
                max_pool2d(
                    models::batch_norm_nchw(&cbn, relu(cz)),
                    [2, 2],
                    [2, 2],
                    [0, 0],
                    [1, 1],
                    false,
                ),
            ),
            None => (
                models::cube::relu_batch_norm(&bn, z),
                models::batch_norm_nchw(&cbn, relu(cz)),
            ),
        };
        worst = worst.max(check(&what("inference"), y.ok().unwrap(), cy));
    }
    eprintln!(
        "ReLU + BatchNorm (+ pool) kernels vs burn's ops: worst relative difference {worst:.1e}"
    );
}
