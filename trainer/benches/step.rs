//! Where a training step's time goes: CancerNet forward, forward + backward, and the optimizer,
//! on in-memory tensors at batch 32 (burn flex CPU backend), plus per-layer-kind timings.
//! Run: cargo bench -p trainer --bench step

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use models::{CancerNetConfig, Kernels, fast_ops};
use trainer::optim::KerasAdagrad;

mod common;
use common::time;

type B = Autodiff<Flex>;

fn main() {
    trainer::alloc::keep_freed_buffers(); // as the trainer binary does
    let batch = 32;
    let dev = Default::default();
    let reps = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let cfg = CancerNetConfig::default();
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
    let mut optim = KerasAdagrad::default().init::<B, models::CancerNet<B>>();
    println!(
        "CancerNet, batch {batch}, burn flex, {} rayon threads",
        rayon::current_num_threads()
    );
    if std::env::var_os("PROFILE_STEP").is_some() {
        // For a profiler: full steps of the fast path only.
        for _ in 0..reps {
            let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-2, model.clone(), grads);
        }
        return;
    }
    let inner = model.valid();
    let xi = x.clone().inner();
    time("inference forward (eval mode)", batch, reps, || {
        inner.forward(xi.clone()).into_data();
    });
    time("train forward", batch, reps, || {
        model.forward(x.clone()).into_data();
    });
    let no_dropout = CancerNetConfig::default()
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
    // The optimizer alone (its gradients computed outside the timing).
    let mut adagrad_secs = 0.0;
    for _ in 0..reps {
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let start = std::time::Instant::now();
        model = optim.step(1e-2, model.clone(), grads);
        adagrad_secs += start.elapsed().as_secs_f64();
    }
    println!(
        "{:<52} {:>9.2} ms",
        "Keras Adagrad update alone",
        adagrad_secs * 1e3 / reps as f64
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
    // Per layer kind, forward + backward on the shapes of CancerNet's first block, with burn's
    // ops and with the fast kernels.
    let d = Tensor::<B, 4>::random(
        [batch, 32, 48, 48],
        burn::tensor::Distribution::Default,
        &dev,
    )
    .require_grad();
    let dw = common::depthwise::<B>(32, &dev);
    let pw = burn::nn::conv::Conv2dConfig::new([32, 32], [1, 1]).init::<B>(&dev);
    let bn = burn::nn::BatchNormConfig::new(32).init::<B>(&dev);
    let layer = |label: &str, f: &dyn Fn(Kernels) -> Tensor<B, 4>| {
        for (kernels, name) in [(Kernels::Burn, "burn"), (Kernels::Fast, "fast")] {
            time(&format!("  {label}, {name}: fwd+bwd"), batch, reps, || {
                let _ = f(kernels).sum().backward();
            });
        }
    };
    layer("depthwise 3x3, 32ch 48x48", &|k| {
        fast_ops::depthwise3x3(&dw, d.clone(), k)
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
        "  pointwise 1x1 (batched matmul), 32->32 48x48: fwd+bwd",
        batch,
        reps,
        || {
            let _ = models::pointwise_matmul(&pw, d.clone()).sum().backward();
        },
    );
    time(
        "  pointwise 1x1 (fast), 32->32 48x48: fwd+bwd",
        batch,
        reps,
        || {
            let _ = fast_ops::pointwise(&pw, d.clone(), Kernels::Fast)
                .sum()
                .backward();
        },
    );
    time(
        "  relu + batchnorm, burn's BatchNorm: fwd+bwd",
        batch,
        reps,
        || {
            let _ = bn
                .forward(burn::tensor::activation::relu(d.clone()))
                .sum()
                .backward();
        },
    );
    layer("relu + batchnorm, 32ch 48x48", &|k| {
        fast_ops::relu_batch_norm(&bn, d.clone(), k)
    });
    layer("maxpool 2 + dropout 0.25, 32ch 48x48", &|k| {
        fast_ops::max_pool2_dropout(d.clone(), 0.25, k)
    });
}
