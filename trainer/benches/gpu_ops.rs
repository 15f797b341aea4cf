//! Where a training step's time goes on each device this build and machine have: forward and
//! forward + backward of each of CancerNet's layer kinds (summed over the network's layers of
//! that kind) and of a whole training step, with burn's own layer ops (`Kernels::Burn`, the GPU
//! path before the project's kernels) and with the model's default (`Kernels::Fast`: the fused
//! CPU kernels on flex, the CubeCL kernels of `models::cube` on CUDA and wgpu), side by side.
//! `Kernels` picks the layers only: the step's loss and Adagrad update are the trainer's, the
//! project's kernels on CUDA and wgpu in both columns (burn's ops took some 31 launches for the
//! loss and 7 for each tensor's update).
//!
//! Run: cargo bench -p trainer --features wgpu,cuda --bench gpu_ops
//! Env: BATCHES (default "32,256"), REPS (timed repetitions, default 5), DEVICES (default
//! "cpu,wgpu,cuda"; those the build or the machine lacks are reported and skipped), KERNELS
//! (default "burn,fast"; "fast" alone leaves burn's columns at 0, for quicker runs), PARTS (default
//! "layers,forward,step": the layer kinds, the whole model's forward, the training step; those
//! left out read 0; bench/nvrtc-check.sh counts one step's kernel launches with PARTS=step).
//! Each repetition waits for the device (`Backend::sync`), so a time is a latency, launches
//! included. A panic on any thread ends the run (`common::exit_on_any_panic`).

mod common;

use burn::backend::{Autodiff, Flex};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::backend::AutodiffBackend;
use models::fast_ops::{self, Kernels};
use models::{CancerNet, CancerNetConfig};
use std::time::Instant;
use trainer::optim::{KerasAdagrad, Optim};
use trainer::train::weighted_loss;

/// Seconds per call of `f` (after one warm-up call that also compiles the kernels).
fn seconds<B: Backend>(device: &B::Device, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    B::sync(device).expect("the device runs");
    let start = Instant::now();
    for _ in 0..reps {
        f();
        B::sync(device).expect("the device runs");
    }
    start.elapsed().as_secs_f64() / reps as f64
}

/// One of CancerNet's separable units: its shapes, and whether it ends a block (pool + dropout).
struct Unit {
    c_in: usize,
    c_out: usize,
    side: usize,
    block_end: bool,
}

fn units(cfg: &CancerNetConfig) -> Vec<Unit> {
    let (mut c_in, mut side, mut all) = (cfg.channels, cfg.input_size, Vec::new());
    for (&width, &depth) in cfg.widths.iter().zip(&cfg.depths) {
        for d in 0..depth {
            let block_end = d + 1 == depth;
            all.push(Unit {
                c_in,
                c_out: width,
                side,
                block_end,
            });
            c_in = width;
        }
        side /= 2;
    }
    all
}

/// (forward, forward + backward) seconds of `op` on an input `[n, c, side, side]`.
fn op_times<B: AutodiffBackend>(
    device: &B::Device,
    reps: usize,
    dims: [usize; 4],
    op: &dyn Fn(Tensor<B, 4>) -> Tensor<B, 4>,
) -> (f64, f64) {
    let x = Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), device).require_grad();
    let fwd = seconds::<B>(device, reps, || drop(op(x.clone())));
    let both = seconds::<B>(device, reps, || drop(op(x.clone()).sum().backward()));
    (fwd, both)
}

/// A table row: (layer kind, [burn fwd, burn fwd+bwd, ours fwd, ours fwd+bwd] in seconds).
type Row = (&'static str, [f64; 4]);

fn layer_rows<B: AutodiffBackend>(device: &B::Device, batch: usize, reps: usize) -> Vec<Row> {
    let cfg = CancerNetConfig::default();
    let mut rows: Vec<Row> = Vec::new();
    let mut add = |kind: &'static str, k: Kernels, t: (f64, f64)| {
        let at = match rows.iter().position(|r| r.0 == kind) {
            Some(i) => i,
            None => {
                rows.push((kind, [0.0; 4]));
                rows.len() - 1
            }
        };
        let col = if k == Kernels::Burn { 0 } else { 2 };
        rows[at].1[col] += t.0;
        rows[at].1[col + 1] += t.1;
    };
    let units = if part("layers") { units(&cfg) } else { vec![] };
    for u in units {
        let dw: Conv2d<B> = Conv2dConfig::new([u.c_in, u.c_in], [3, 3])
            .with_groups(u.c_in)
            .with_padding(PaddingConfig2d::Same)
            .with_bias(false)
            .init(device);
        let pw: Conv2d<B> = Conv2dConfig::new([u.c_in, u.c_out], [1, 1]).init(device);
        let bn: BatchNorm<B> = BatchNormConfig::new(u.c_out).init(device);
        let (before, after) = (
            [batch, u.c_in, u.side, u.side],
            [batch, u.c_out, u.side, u.side],
        );
        for k in kernels() {
            let t = op_times(device, reps, before, &|x| fast_ops::depthwise3x3(&dw, x, k));
            add("depthwise 3x3", k, t);
            let t = op_times(device, reps, before, &|x| fast_ops::pointwise(&pw, x, k));
            add("pointwise 1x1 + bias", k, t);
            let t = if u.block_end {
                op_times(device, reps, after, &|x| {
                    fast_ops::relu_batch_norm_pool(&bn, x, cfg.conv_dropout, k)
                })
            } else {
                op_times(device, reps, after, &|x| {
                    fast_ops::relu_batch_norm(&bn, x, k)
                })
            };
            let kind = if u.block_end {
                "ReLU + BatchNorm + pool + dropout"
            } else {
                "ReLU + BatchNorm"
            };
            add(kind, k, t);
        }
    }
    for k in kernels() {
        add(
            "training step (fwd+bwd: + Adagrad)",
            k,
            step_times::<B>(device, batch, reps, k),
        );
    }
    rows
}

/// (forward, whole step: forward, loss, backward, Adagrad) seconds of the full CancerNet.
fn step_times<B: AutodiffBackend>(
    device: &B::Device,
    batch: usize,
    reps: usize,
    k: Kernels,
) -> (f64, f64) {
    let cfg = CancerNetConfig::default();
    let mut model: CancerNet<B> = cfg.init_seeded(1, device);
    let mut optim = Optim::Adagrad(KerasAdagrad::default().init());
    let x = Tensor::<B, 4>::random(
        [batch, 3, cfg.input_size, cfg.input_size],
        Distribution::Uniform(0.0, 1.0),
        device,
    );
    let labels: Vec<u8> = (0..batch).map(|i| (i % 2) as u8).collect();
    let mut fwd = 0.0;
    if part("forward") {
        fwd = seconds::<B>(device, reps, || drop(model.forward_with(x.clone(), k)));
    }
    if !part("step") {
        return (fwd, 0.0);
    }
    let step = seconds::<B>(device, reps, || {
        let loss = weighted_loss(
            model.forward_with(x.clone(), k),
            &labels,
            [1.0, 2.5],
            device,
        );
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model.clone(), grads);
    });
    (fwd, step)
}

fn print(device: &str, batch: usize, rows: &[Row]) {
    println!("\n{device}, batch {batch} (ms; burn's ops vs CancerNet's own)");
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "layer kind (all layers of it)", "burn fwd", "burn f+b", "ours fwd", "ours f+b", "f+b x"
    );
    for (kind, t) in rows {
        println!(
            "{kind:<36} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>7.1}x",
            t[0] * 1e3,
            t[1] * 1e3,
            t[2] * 1e3,
            t[3] * 1e3,
            t[1] / t[3]
        );
    }
    if let Some((_, t)) = rows.last().filter(|(_, t)| t[1] > 0.0 && t[3] > 0.0) {
        println!(
            "training step: {:.0} img/s with burn's ops, {:.0} img/s with CancerNet's own",
            batch as f64 / t[1],
            batch as f64 / t[3]
        );
    }
}

fn run<B: AutodiffBackend>(label: &str, device: B::Device, batches: &[usize], reps: usize) {
    for &batch in batches {
        print(label, batch, &layer_rows::<B>(&device, batch, reps));
    }
}

/// Whether PARTS names `name`.
fn part(name: &str) -> bool {
    env_or("PARTS", "layers,forward,step")
        .split(',')
        .any(|p| p.trim() == name)
}

/// The implementations KERNELS names.
fn kernels() -> Vec<Kernels> {
    env_or("KERNELS", "burn,fast")
        .split(',')
        .map(|k| match k.trim() {
            "burn" => Kernels::Burn,
            "fast" => Kernels::Fast,
            other => panic!("KERNELS: unknown kernels {other} (burn, fast)"),
        })
        .collect()
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() {
    common::exit_on_any_panic();
    trainer::alloc::keep_freed_buffers();
    let batches: Vec<usize> = env_or("BATCHES", "32,256")
        .split(',')
        .map(|b| {
            b.trim()
                .parse()
                .expect("BATCHES: comma-separated batch sizes")
        })
        .collect();
    let reps: usize = env_or("REPS", "5").parse().expect("REPS: a count");
    let devices = env_or("DEVICES", "cpu,wgpu,cuda");
    for device in devices.split(',').map(str::trim) {
        match device {
            "cpu" => run::<Autodiff<Flex>>(
                &format!("cpu (flex, {} threads)", rayon::current_num_threads()),
                Default::default(),
                &batches,
                reps,
            ),
            "wgpu" => wgpu(&batches, reps),
            "cuda" => cuda(&batches, reps),
            other => panic!("DEVICES: unknown device {other} (cpu, wgpu, cuda)"),
        }
    }
}

#[cfg(feature = "wgpu")]
fn wgpu(batches: &[usize], reps: usize) {
    match trainer::device::wgpu::device() {
        Ok((device, name)) => {
            run::<Autodiff<burn::backend::Wgpu>>(&format!("wgpu: {name}"), device, batches, reps)
        }
        Err(e) => println!("\nwgpu: not measured ({e:#})"),
    }
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_: &[usize], _: usize) {
    println!("\nwgpu: not measured (built without --features wgpu)");
}

#[cfg(feature = "cuda")]
fn cuda(batches: &[usize], reps: usize) {
    match trainer::device::cuda::device() {
        Ok((device, name)) => {
            run::<Autodiff<burn::backend::Cuda>>(&format!("cuda: {name}"), device, batches, reps)
        }
        Err(e) => println!("\ncuda: not measured ({e:#})"),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &[usize], _: usize) {
    println!("\ncuda: not measured (built without --features cuda)");
}
