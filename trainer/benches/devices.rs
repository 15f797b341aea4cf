//! A training step of the full CancerNet at batch 32 on each device the build has, side by side in
//! one run: `cpu` (flex, fused kernels) and `wgpu` (CancerNet's own GPU kernels, `models::cube`,
//! on the wgpu backend; on machines without a GPU that is Mesa's lavapipe, a Vulkan device on the
//! CPU), so that a regression in the device-generic path shows up as a number. The per-op bench
//! (`gpu_ops`) times each layer kind, and burn's ops beside these kernels.
//! Run: cargo bench -p trainer --features wgpu --bench devices   (REPS=n timed steps on the GPU
//! device, default 3; 10 times as many on the CPU, whose steps are shorter)

use burn::backend::{Autodiff, Flex};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use models::{CancerNet, CancerNetConfig};
use trainer::data::Batch;
use trainer::optim::{KerasAdagrad, Optim};
use trainer::train::{images_tensor, weighted_loss};

mod common;
use common::time;

/// Seconds per training step of `B` on `device` (after warm-up steps that also compile kernels).
fn step_seconds<B: AutodiffBackend>(label: &str, device: B::Device, reps: usize) -> f64 {
    let cfg = CancerNetConfig::default();
    let mut model: CancerNet<B> = cfg.init_seeded(1, &device);
    let mut optim = Optim::Adagrad(KerasAdagrad::default().init());
    let batch = Batch {
        images: (0..32 * 3 * 48 * 48)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect(),
        labels: (0..32).map(|i| (i % 2) as u8).collect(),
        indices: (0..32).collect(),
        failed: Vec::new(),
    };
    let mut step = || {
        let loss = weighted_loss(
            model.forward(images_tensor(&batch, 48, &device)),
            &batch.labels,
            [1.0, 2.5],
            &device,
        );
        let _: f32 = loss.clone().into_scalar().elem(); // waits for the device
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model.clone(), grads);
    };
    step(); // kernels compiled, memory pools grown
    time(label, 32, reps, step)
}

fn main() {
    common::exit_on_any_panic();
    trainer::alloc::keep_freed_buffers();
    let reps = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!(
        "training step, full CancerNet, batch 32, {reps} timed steps a GPU device, {} on the CPU",
        reps * 10
    );
    let cpu =
        step_seconds::<Autodiff<Flex>>("cpu (flex, fused kernels)", Default::default(), reps * 10);
    #[cfg(feature = "wgpu")]
    match trainer::device::wgpu::device() {
        Ok((device, name)) => {
            let gpu = step_seconds::<Autodiff<burn::backend::Wgpu>>(
                &format!("wgpu: {name}"),
                device,
                reps,
            );
            println!("wgpu / cpu step time: {:.1}x", gpu / cpu);
        }
        Err(e) => println!("wgpu: not measured ({e:#})"),
    }
    #[cfg(not(feature = "wgpu"))]
    let _ = cpu;
}
