//! Where a training step's time goes: CancerNet forward, forward + backward, and the optimizer,
//! on in-memory tensors at batch 32 (burn flex CPU backend), plus per-layer-kind timings.
//! Run: cargo bench -p trainer --bench step

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use models::CancerNetConfig;
use trainer::optim::KerasAdagrad;

mod common;
use common::time;

type B = Autodiff<Flex>;

fn main() {
    let batch = 32;
    let dev = Default::default();
    let reps = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let cfg = CancerNetConfig::new();
    let mut model = cfg.init::<B>(&dev);
    let x = Tensor::<B, 4>::random(
        [batch, 3, 48, 48],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        &dev,
    );
    let y = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            (0..batch as i64).map(|i| i % 2).collect::<Vec<_>>(),
            [batch],
        ),
        &dev,
    );
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init(&dev);
    let mut optim = KerasAdagrad {
        initial_accumulator: 0.1,
        epsilon: 1e-7,
    }
    .init::<B, models::CancerNet<B>>();
    println!(
        "CancerNet, batch {batch}, burn flex, {} rayon threads",
        rayon::current_num_threads()
    );
    let inner = model.valid();
    let xi = x.clone().inner();
    time("inference forward (eval mode)", batch, reps, || {
        inner.forward(xi.clone()).into_data();
    });
    time("train forward", batch, reps, || {
        model.forward(x.clone()).into_data();
    });
    let no_dropout = CancerNetConfig::new()
        .with_conv_dropout(0.0)
        .with_dense_dropout(0.0)
        .init::<B>(&dev);
    time("train forward without dropout", batch, reps, || {
        no_dropout.forward(x.clone()).into_data();
    });
    time("train forward + backward", batch, reps, || {
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        let _ = loss.backward();
    });
    time(
        "full step (forward + backward + Adagrad)",
        batch,
        reps,
        || {
            let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-2, model.clone(), grads);
        },
    );
    // The same step on burn's own ops (the reference path, before the fast kernels).
    let mut reference = cfg.init::<B>(&dev);
    time(
        "full step, burn's ops (models::Kernels::Burn)",
        batch,
        reps,
        || {
            let logits = reference.forward_with(x.clone(), models::Kernels::Burn);
            let loss = loss_fn.forward(logits, y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &reference);
            reference = optim.step(1e-2, reference.clone(), grads);
        },
    );
    if std::env::var_os("STEP_ONLY").is_some() {
        return; // profiling the full step alone
    }
    // Per layer kind, forward + backward on the shapes of CancerNet's first block.
    let d = Tensor::<B, 4>::random(
        [batch, 32, 48, 48],
        burn::tensor::Distribution::Default,
        &dev,
    )
    .require_grad();
    let dw = common::depthwise::<B>(32, &dev);
    let pw = burn::nn::conv::Conv2dConfig::new([32, 32], [1, 1]).init::<B>(&dev);
    let bn = burn::nn::BatchNormConfig::new(32).init::<B>(&dev);
    time("  depthwise 3x3, 32ch 48x48: fwd+bwd", batch, reps, || {
        let _ = dw.forward(d.clone()).sum().backward();
    });
    time(
        "  pointwise 1x1 (burn conv), 32->32 48x48: fwd+bwd",
        batch,
        reps,
        || {
            let _ = pw.forward(d.clone()).sum().backward();
        },
    );
    time(
        "  pointwise 1x1 (ours, matmul), 32->32 48x48: fwd+bwd",
        batch,
        reps,
        || {
            let _ = models::pointwise_matmul(&pw, d.clone()).sum().backward();
        },
    );
    time(
        "  relu + batchnorm (burn), 32ch 48x48: fwd+bwd",
        batch,
        reps,
        || {
            let _ = bn
                .forward(burn::tensor::activation::relu(d.clone()))
                .sum()
                .backward();
        },
    );
    time(
        "  relu + batchnorm (ours), 32ch 48x48: fwd+bwd",
        batch,
        reps,
        || {
            let _ = models::batch_norm_nchw(&bn, burn::tensor::activation::relu(d.clone()))
                .sum()
                .backward();
        },
    );
    time("  maxpool 2, 32ch 48x48: fwd+bwd", batch, reps, || {
        let _ = burn::tensor::module::max_pool2d(d.clone(), [2, 2], [2, 2], [0, 0], [1, 1], false)
            .sum()
            .backward();
    });
}
