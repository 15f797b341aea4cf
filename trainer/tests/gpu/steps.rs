//! Training steps on the device against the same steps on the CPU.

use super::max_diff;
use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use models::{CancerNet, CancerNetConfig};
use trainer::optim::{KerasAdagrad, Optim};
use trainer::train::{images_tensor, weighted_loss};

/// A small CancerNet without dropout (the two backends draw masks from different generators).
fn config() -> CancerNetConfig {
    CancerNetConfig::default()
        .with_input_size(16)
        .with_widths(vec![6, 8])
        .with_depths(vec![1, 2])
        .with_dense(16)
        .with_conv_dropout(0.0)
        .with_dense_dropout(0.0)
        .with_bn_momentum(0.9)
}

/// Fixed batches: pseudo-random images, alternating labels.
fn batches(n: usize) -> Vec<trainer::data::Batch> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|b| {
            let images = (0..8 * 3 * 16 * 16)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 24) as f32
                })
                .collect();
            trainer::data::Batch {
                images,
                labels: (0..8).map(|j| ((b + j) % 2) as u8).collect(),
                indices: (0..8).collect(),
                failed: Vec::new(),
            }
        })
        .collect()
}

/// `model` (any backend) as a flex model, through the bytes of its record.
fn to_flex<B: Backend>(model: &CancerNet<B>) -> CancerNet<Flex> {
    let rec = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = rec.record(model.clone().into_record(), ()).unwrap();
    let dev = Default::default();
    config()
        .init::<Flex>(&dev)
        .load_record(rec.load(bytes, &dev).unwrap())
}

/// `steps` training steps from `model` on `batches`, cycling: the losses, and the model after.
fn train<B: AutodiffBackend>(
    mut model: CancerNet<B>,
    device: &B::Device,
    steps: usize,
) -> (Vec<f32>, CancerNet<B>) {
    let mut optim = Optim::Adagrad(KerasAdagrad::default().init());
    let batches = batches(4);
    let losses = (0..steps)
        .map(|step| {
            let b = &batches[step % batches.len()];
            let loss = weighted_loss(
                model.forward(images_tensor(b, 16, device)),
                &b.labels,
                [1.0, 2.0],
                device,
            );
            let value: f32 = loss.clone().into_scalar().elem();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(0.01, model.clone(), grads);
            value
        })
        .collect();
    (losses, model)
}

/// Steps on the device and on the CPU from the same weights and batches: losses and parameters
/// (BatchNorm statistics included) agree within 1e-4. Measured on lavapipe over 12 steps: losses
/// 2.4e-6 apart (relative), parameters at most 1.4e-6; the two backends sum in different orders.
/// A wrong gradient or a dropped running-statistics update is orders of magnitude above that.
pub(super) fn steps_match_flex<B: AutodiffBackend>(device: B::Device) {
    const STEPS: usize = 12;
    let cpu_dev = Default::default();
    <Autodiff<Flex> as Backend>::seed(&cpu_dev, 3);
    let cpu = config().init::<Autodiff<Flex>>(&cpu_dev);
    // Materialize the lazily initialized weights once, in one order, then copy them over.
    let rec = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = rec.record(cpu.clone().into_record(), ()).unwrap();
    let cpu = config()
        .init::<Autodiff<Flex>>(&cpu_dev)
        .load_record(rec.load(bytes.clone(), &cpu_dev).unwrap());
    let gpu = config()
        .init::<B>(&device)
        .load_record(rec.load(bytes, &device).unwrap());
    let (cpu_losses, cpu) = train(cpu, &cpu_dev, STEPS);
    let (gpu_losses, gpu) = train(gpu, &device, STEPS);
    let worst = cpu_losses
        .iter()
        .zip(&gpu_losses)
        .map(|(c, g)| (c - g).abs() / c.abs().max(1.0))
        .fold(0f32, f32::max);
    eprintln!("losses over {STEPS} steps: worst relative difference {worst:.2e}");
    for (step, (c, g)) in cpu_losses.iter().zip(&gpu_losses).enumerate() {
        assert!(
            (c - g).abs() <= 1e-4 * c.abs().max(1.0),
            "step {step}: cpu {c} vs device {g}"
        );
    }
    assert!(
        gpu_losses[STEPS - 1] < gpu_losses[0],
        "no learning on the device: {gpu_losses:?}"
    );
    let (c, g) = (to_flex(&cpu.valid()), to_flex(&gpu.valid()));
    let pairs: Vec<(&str, f32)> = vec![
        (
            "block1 depthwise",
            max_diff(
                c.blocks[0].units[0].sepconv.depthwise.weight.val(),
                g.blocks[0].units[0].sepconv.depthwise.weight.val(),
            ),
        ),
        (
            "block2 pointwise",
            max_diff(
                c.blocks[1].units[1].sepconv.pointwise.weight.val(),
                g.blocks[1].units[1].sepconv.pointwise.weight.val(),
            ),
        ),
        (
            "block2 bn running var",
            max_diff(
                c.blocks[1].units[1].bn.running_var.value(),
                g.blocks[1].units[1].bn.running_var.value(),
            ),
        ),
        (
            "dense bn running mean",
            max_diff(
                c.dense_bn.running_mean.value(),
                g.dense_bn.running_mean.value(),
            ),
        ),
        ("head", max_diff(c.head.weight.val(), g.head.weight.val())),
    ];
    for (name, d) in pairs {
        eprintln!("{name}: max |cpu - device| = {d:.2e}");
        assert!(
            d <= 1e-4,
            "{name}: parameters differ by {d} after {STEPS} steps"
        );
    }
}
