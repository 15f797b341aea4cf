//! The GPU code path, run for real: burn's cubecl backends run CancerNet with its own CubeCL
//! kernels (`models::cube`, each checked here against burn's ops), with batches on a device,
//! autodiff, the optimizer, BatchNorm
//! statistics, checkpoints written from device tensors and exported from them. On `wgpu` this
//! runs anywhere with a Vulkan device, Mesa's lavapipe on the CPU included, which is how CI runs
//! it on every build (`cargo test --release -p trainer --features wgpu --test gpu`); the same
//! suite runs on `cuda` where the trainer is built with `--features cuda` and a GPU is present.
//!
//! Without a device the wgpu tests print `SKIPPED` with what to install (under
//! `IDC_REQUIRE_ALL`, as in `make test`, they fail instead); the CUDA ones, where there is no GPU,
//! check the error that says so and are counted apart as "no GPU" (a build without CUDA fails them
//! under `IDC_REQUIRE_ALL`).
#![cfg(any(feature = "wgpu", feature = "cuda"))]
#![allow(dead_code)] // each backend uses the suite's parts it can

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use models::{CancerNet, CancerNetConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
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

fn max_diff<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

/// Steps on the device and on the CPU from the same weights and batches: losses and parameters
/// (BatchNorm statistics included) agree within 1e-4. Measured on lavapipe over 12 steps: losses
/// 2.4e-6 apart (relative), parameters at most 1.4e-6; the two backends sum in different orders.
/// A wrong gradient or a dropped running-statistics update is orders of magnitude above that.
fn steps_match_flex<B: AutodiffBackend>(device: B::Device) {
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

/// Pseudo-random values in [-1, 1) from `seed` (xorshift): the same data for both backends.
fn data(dims: &[usize], seed: u64) -> TensorData {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    TensorData::new(values, dims.to_vec())
}

/// `d + offset`.
fn shifted(d: TensorData, offset: f32) -> TensorData {
    let values = d.iter::<f32>().map(|v| v + offset).collect();
    TensorData::new(values, d.shape.clone())
}

/// A tensor of data on a backend's device, tracked for gradients.
fn leaf<B: AutodiffBackend, const D: usize>(d: &TensorData, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(d.clone(), device).require_grad()
}

/// Asserts `got` (any backend) is within `tol` of `want` relative to want's largest magnitude
/// (at least 1); returns that relative difference.
fn check<B: Backend, const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<Flex, D>) -> f32 {
    let got = Tensor::<Flex, D>::from_data(got.into_data(), &Default::default());
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let scale: f32 = want.clone().abs().max().into_scalar();
    let d = max_diff(got, want) / scale.max(1.0);
    assert!(d < 1e-5, "{what}: relative difference {d:.2e}");
    d
}

/// The device's own kernels (`models::cube`) against burn's own ops on the CPU (flex, f32), from
/// the same data: outputs and the gradients of every input, for the depthwise convolution, the
/// pointwise convolution, the dense layer and ReLU + BatchNorm (training and inference, running
/// statistics included), the trainer's loss (burn's log-softmax times the weighted target) and its
/// Adagrad update against the CPU's, on CancerNet's
/// shapes and on edge shapes (planes of one row or column, one image, channel counts that fill no
/// tile). Both compute in f32, so the
/// tolerance is f32's, on every device: 1e-5 of the largest value. Measured on lavapipe: at most
/// 1.8e-6 (sums over whole batches); a tap read from the wrong neighbour, a lost
/// part of a sum or a weight read transposed is > 1e-2. Also: the model's layers use these
/// kernels on this backend, and the same inputs give the same bytes twice.
fn kernels_match_burns<B: AutodiffBackend>(device: B::Device) {
    use burn::tensor::module::{conv2d, linear};
    use burn::tensor::ops::ConvOptions;
    type Cpu = Autodiff<Flex>;
    let cpu = Default::default();
    assert!(
        models::cube::serves::<B>() && models::cube::serves::<B::InnerBackend>(),
        "the model does not use the device's own kernels on this backend"
    );
    let mut worst = 0f32;
    let mut seed = 0;
    let mut next = |dims: &[usize]| {
        seed += 1;
        data(dims, seed)
    };
    for dims in [
        [2, 3, 48, 48],
        [3, 32, 24, 24],
        [4, 128, 12, 12],
        [1, 5, 7, 9],
        [2, 3, 1, 1],
        [2, 2, 5, 1],
        [1, 2, 1, 6],
        // Rows read as vectors of 4, 8 columns a unit: a row of one vector, and a row whose
        // last unit has one vector inside it and one past its end.
        [2, 3, 6, 4],
        [1, 2, 9, 20],
        // Enough images for the filter gradient's sum to come in several parts (29 and 28).
        [57, 2, 48, 48],
    ] {
        let (xd, wd, gd) = (next(&dims), next(&[dims[1], 1, 3, 3]), next(&dims));
        let run_gpu = || {
            let (x, w) = (leaf::<B, 4>(&xd, &device), leaf::<B, 4>(&wd, &device));
            let y = models::cube::depthwise3x3(x.clone(), w.clone())
                .ok()
                .unwrap();
            let g = (y.clone() * Tensor::from_data(gd.clone(), &device))
                .sum()
                .backward();
            (y.inner(), x.grad(&g).unwrap(), w.grad(&g).unwrap())
        };
        let (x, w) = (leaf::<Cpu, 4>(&xd, &cpu), leaf::<Cpu, 4>(&wd, &cpu));
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], dims[1]);
        let y = conv2d(x.clone(), w.clone(), None, options);
        let g = (y.clone() * Tensor::from_data(gd.clone(), &cpu))
            .sum()
            .backward();
        let (gy, gx, gw) = run_gpu();
        let what = |t: &str| format!("depthwise {dims:?} {t}");
        worst = worst
            .max(check(&what("output"), gy.clone(), y.inner()))
            .max(check(&what("input grad"), gx.clone(), x.grad(&g).unwrap()))
            .max(check(&what("filter grad"), gw.clone(), w.grad(&g).unwrap()));
        let again = run_gpu();
        assert!(
            again.0.into_data() == gy.into_data()
                && again.1.into_data() == gx.into_data()
                && again.2.into_data() == gw.into_data(),
            "depthwise {dims:?}: the same inputs gave other bytes"
        );
    }
    for (dims, co) in [
        ([2, 3, 48, 48], 32),
        ([3, 64, 12, 12], 128),
        ([1, 5, 3, 7], 9),
        ([2, 1, 1, 1], 1),
        // 200 vectors of positions: the product's last cube has units with two vectors, with
        // one and with none; the weight gradient's tiles of 8 end past 7 inputs and 19 outputs.
        ([2, 7, 20, 20], 19),
        // Outputs 12 of a tile of 16 (the input gradient's: 8).
        ([2, 8, 5, 5], 12),
        // The weight gradient's sum in several parts.
        ([40, 3, 48, 48], 5),
    ] {
        let (xd, wd, bd) = (next(&dims), next(&[co, dims[1], 1, 1]), next(&[co]));
        let gd = next(&[dims[0], co, dims[2], dims[3]]);
        let (x, w, b) = (
            leaf::<B, 4>(&xd, &device),
            leaf::<B, 4>(&wd, &device),
            leaf::<B, 1>(&bd, &device),
        );
        let y = models::cube::pointwise(x.clone(), w.clone(), b.clone())
            .ok()
            .unwrap();
        let g = (y.clone() * Tensor::from_data(gd.clone(), &device))
            .sum()
            .backward();
        let (cx, cw, cb) = (
            leaf::<Cpu, 4>(&xd, &cpu),
            leaf::<Cpu, 4>(&wd, &cpu),
            leaf::<Cpu, 1>(&bd, &cpu),
        );
        let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let cy = conv2d(cx.clone(), cw.clone(), Some(cb.clone()), options);
        let cg = (cy.clone() * Tensor::from_data(gd, &cpu)).sum().backward();
        let what = |t: &str| format!("pointwise {dims:?} -> {co} {t}");
        worst = worst
            .max(check(&what("output"), y.inner(), cy.inner()))
            .max(check(
                &what("input grad"),
                x.grad(&g).unwrap(),
                cx.grad(&cg).unwrap(),
            ))
            .max(check(
                &what("weight grad"),
                w.grad(&g).unwrap(),
                cw.grad(&cg).unwrap(),
            ))
            .max(check(
                &what("bias grad"),
                b.grad(&g).unwrap(),
                cb.grad(&cg).unwrap(),
            ));
    }
    // The first: the product's inputs split into parts (too few outputs for the GPU otherwise).
    for (n, d_in, d_out) in [(32, 4608, 256), (32, 256, 2), (3, 5, 7), (1, 1, 1)] {
        let (xd, wd, bd, gd) = (
            next(&[n, d_in]),
            next(&[d_in, d_out]),
            next(&[d_out]),
            next(&[n, d_out]),
        );
        let (x, w, b) = (
            leaf::<B, 2>(&xd, &device),
            leaf::<B, 2>(&wd, &device),
            leaf::<B, 1>(&bd, &device),
        );
        let y = models::cube::linear(x.clone(), w.clone(), b.clone())
            .ok()
            .unwrap();
        let g = (y.clone() * Tensor::from_data(gd.clone(), &device))
            .sum()
            .backward();
        let (cx, cw, cb) = (
            leaf::<Cpu, 2>(&xd, &cpu),
            leaf::<Cpu, 2>(&wd, &cpu),
            leaf::<Cpu, 1>(&bd, &cpu),
        );
        let cy = linear(cx.clone(), cw.clone(), Some(cb.clone()));
        let cg = (cy.clone() * Tensor::from_data(gd, &cpu)).sum().backward();
        let what = |t: &str| format!("dense {n}x{d_in} -> {d_out} {t}");
        worst = worst
            .max(check(&what("output"), y.inner(), cy.inner()))
            .max(check(
                &what("input grad"),
                x.grad(&g).unwrap(),
                cx.grad(&cg).unwrap(),
            ))
            .max(check(
                &what("weight grad"),
                w.grad(&g).unwrap(),
                cw.grad(&cg).unwrap(),
            ))
            .max(check(
                &what("bias grad"),
                b.grad(&g).unwrap(),
                cb.grad(&cg).unwrap(),
            ));
    }
    // The trainer's loss (cross-entropy against a weighted target) and its gradient, scaled by
    // 3 on the way back so that the loss's own gradient is read. Batches of 32 and 256, one
    // walked by the cube's units (300 rows), and odd class counts.
    for (n, k) in [(32, 2), (256, 2), (300, 2), (3, 5), (1, 1)] {
        let (xd, td) = (next(&[n, k]), next(&[n, k]));
        let x = leaf::<B, 2>(&xd, &device);
        let loss = models::cube::cross_entropy(x.clone(), Tensor::from_data(td.clone(), &device))
            .ok()
            .unwrap();
        let g = loss.clone().mul_scalar(3.0).backward();
        let cx = leaf::<Cpu, 2>(&xd, &cpu);
        let closs = (burn::tensor::activation::log_softmax(cx.clone(), 1)
            * Tensor::from_data(td, &cpu))
        .sum()
        .neg()
        .div_scalar(n as f32);
        let cg = closs.clone().mul_scalar(3.0).backward();
        let what = |t: &str| format!("cross-entropy {n}x{k} {t}");
        worst = worst
            .max(check(&what("loss"), loss.inner(), closs.inner()))
            .max(check(
                &what("grad"),
                x.grad(&g).unwrap(),
                cx.grad(&cg).unwrap(),
            ));
    }
    // Keras' Adagrad, the trainer's optimizer, takes the device's kernel: more tensors than
    // CancerNet has (36), of lengths read in vectors of 4 and odd ones, mixed, updated twice from
    // Keras' initial accumulator, each against the CPU's update of it.
    {
        use burn::optim::SimpleOptimizer;
        type Inner<B> = <B as AutodiffBackend>::InnerBackend;
        let opt = KerasAdagrad::default();
        let lens: Vec<usize> = (0..40)
            .map(|k| [36, 15, 4, 1, 4608][k % 5] + 8 * (k / 5))
            .collect();
        let values: Vec<(TensorData, TensorData)> =
            lens.iter().map(|&n| (next(&[n]), next(&[n]))).collect();
        let on = |d: &TensorData| Tensor::<Inner<B>, 1>::from_data(d.clone(), &device);
        let off = |d: &TensorData| Tensor::<Flex, 1>::from_data(d.clone(), &cpu);
        let mut updates: Vec<_> = values
            .iter()
            .map(|(p, g)| (on(p), on(g), on(g).zeros_like().add_scalar(0.1)))
            .collect();
        let mut device_steps = Vec::new();
        for lr in [0.01, 0.02] {
            let Ok(new) = models::cube::adagrad((updates.clone(), lr, 1e-7)) else {
                panic!("Adagrad does not use the device's kernel on this backend")
            };
            updates = new
                .iter()
                .zip(&updates)
                .map(|((p, a), (_, g, _))| (p.clone(), g.clone(), a.clone()))
                .collect();
            device_steps = new;
        }
        for ((n, (p, g)), (dp, da)) in lens.iter().zip(&values).zip(device_steps) {
            let (cp, cs) = opt.step(0.01, off(p), off(g), None);
            let (cp, cs) = opt.step(0.02, cp, off(g), cs);
            let what = |t: &str| format!("adagrad of {n} values: {t}");
            worst = worst.max(check(&what("parameter"), dp, cp)).max(check(
                &what("accumulator"),
                da,
                cs.unwrap().accumulator,
            ));
        }
        // burn's optimizer interface (one tensor a call, as burn's `OptimizerAdaptor` calls it)
        // takes the same kernel, on a tensor of any rank.
        let (p, g) = (next(&[4, 9]), next(&[4, 9]));
        let on = |d: &TensorData| Tensor::<Inner<B>, 2>::from_data(d.clone(), &device);
        let off = |d: &TensorData| Tensor::<Flex, 2>::from_data(d.clone(), &cpu);
        let (dp, ds) = opt.step(0.01, on(&p), on(&g), None);
        let (dp, ds) = opt.step(0.02, dp, on(&g), ds);
        let (cp, cs) = opt.step(0.01, off(&p), off(&g), None);
        let (cp, cs) = opt.step(0.02, cp, off(&g), cs);
        worst = worst
            .max(check("adagrad [4, 9]: parameter", dp, cp))
            .max(check(
                "adagrad [4, 9]: accumulator",
                ds.unwrap().accumulator,
                cs.unwrap().accumulator,
            ));
    }
    // The trainer's step of a whole module (`optim::fused`) where a parameter stands twice (a
    // shared weight) does what burn's adaptor does on the CPU, three steps: the first place is
    // updated once a step, the second keeps its value (burn does not keep the two tied).
    {
        let values = [next(&[6]), next(&[6]), next(&[6]), next(&[6])];
        let (d, c) = (
            tied_steps::<B>(&values, &device),
            tied_steps::<Cpu>(&values, &cpu),
        );
        let pairs = [
            ("shared", d.shared, c.shared),
            ("shared again", d.again, c.again),
            ("own", d.own, c.own),
        ];
        for (what, got, want) in pairs {
            let what = format!("adagrad over a module with a shared parameter: {what}");
            worst = worst.max(check(&what, got.val().inner(), want.val().inner()));
        }
    }
    eprintln!(
        "the device's kernels vs burn's ops on the CPU: worst relative difference {worst:.1e}"
    );
}

/// A module holding one parameter twice, as modules sharing a weight do, and one once.
#[derive(Module, Debug)]
struct Tied<B: Backend> {
    shared: Param<Tensor<B, 1>>,
    again: Param<Tensor<B, 1>>,
    own: Param<Tensor<B, 1>>,
}

/// `Tied` from `[shared, own, x, y]` after three of the trainer's Adagrad steps (`optim::fused`:
/// the fused kernel on a cubecl backend, burn's adaptor elsewhere) on `sum(shared * x + again * y
/// + own^2)`.
fn tied_steps<B: AutodiffBackend>(values: &[TensorData; 4], device: &B::Device) -> Tied<B> {
    let tensor = |d: &TensorData| Tensor::<B, 1>::from_data(d.clone(), device);
    let shared = Param::from_tensor(tensor(&values[0]));
    let mut model = Tied {
        again: shared.clone(),
        shared,
        own: Param::from_tensor(tensor(&values[1])),
    };
    let (x, y) = (tensor(&values[2]), tensor(&values[3]));
    let mut optim = KerasAdagrad::default().init();
    for lr in [0.01, 0.02, 0.03] {
        let own = model.own.val();
        let loss =
            (model.shared.val() * x.clone() + model.again.val() * y.clone() + own.clone() * own)
                .sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = trainer::optim::fused::step(&mut optim, lr, model, grads);
    }
    model
}

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
fn batch_norm_kernels_match_burns<B: AutodiffBackend>(device: B::Device) {
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

/// A small synthetic split and a config for `trainer --device <device>` (a short run). Dropout
/// is off: the CPU's fused kernels and burn's ops draw their masks from different generators, so
/// with dropout two devices train like two seeds; without it they train alike. 8 steps an epoch:
/// the trainer reads steps back from the device in groups of 8, and a whole last group must leave
/// nothing (no empty read) behind.
fn setup(tmp: &Path, device: &str) -> PathBuf {
    let orig = tmp.join("orig");
    datasets::testdata::small_synth(&orig, 6, 30.0);
    datasets::build::build(&datasets::build::BuildOptions {
        source: orig,
        out: tmp.join("idc"),
        ..Default::default()
    })
    .unwrap();
    let config = tmp.join(format!("{device}.yaml"));
    std::fs::write(
        &config,
        format!(
            "data:\n  root: {}\nmodel:\n  input_size: 16\n  widths: [6, 8]\n  depths: [1, 2]\n  dense: 16\n  bn_momentum: 0.9\n  conv_dropout: 0.0\n  dense_dropout: 0.0\n\
             train:\n  epochs: 2\n  batch_size: 8\n  max_steps_per_epoch: 8\ndevice: {device}\n",
            tmp.join("idc").display()
        ),
    )
    .unwrap();
    config
}

fn run(exe: &Path, args: &[&str]) -> String {
    let o: Output = Command::new(exe).args(args).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{} {args:?}:\n{out}\n{}",
        exe.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A workspace binary beside the trainer being tested (built by the workspace's tests).
fn sibling(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_trainer")).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is not built: run the workspace's tests first (`make test` does)",
        p.display()
    );
    p
}

/// The whole chain on the device: `trainer --device` (checkpoints, metrics, plot, test report),
/// `exporter` on its checkpoint (verified against ONNX Runtime), `runtime eval` of the file; and
/// the device model's eval-mode outputs equal ONNX Runtime's on the exported file.
fn whole_run_exports_and_evaluates<B: Backend>(flag: &str, device: B::Device) {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path(), flag);
    let out = tmp.path().join("run");
    let trainer = Path::new(env!("CARGO_BIN_EXE_trainer"));
    let text = run(
        trainer,
        &[
            "--config",
            config.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert!(
        text.contains(&format!("device {flag}: ")),
        "the header names no adapter:\n{text}"
    );
    assert!(
        text.contains("epoch 2/2") && text.contains("testing split"),
        "{text}"
    );
    for f in [
        "metrics.csv",
        "plot.png",
        "test_report.json",
        "checkpoints/best/model.mpk",
        "checkpoints/epoch-002/optim.mpk",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let onnx = tmp.path().join("m.onnx");
    let exported = run(
        &sibling("exporter"),
        &[
            "--model",
            out.to_str().unwrap(),
            "--out",
            onnx.to_str().unwrap(),
        ],
    );
    assert!(
        exported.contains("verified with ONNX Runtime"),
        "{exported}"
    );
    let json = tmp.path().join("eval.json");
    let preds = tmp.path().join("p.csv");
    let testing = tmp.path().join("idc/testing");
    run(
        &sibling("runtime"),
        &[
            "eval",
            testing.to_str().unwrap(),
            "--model",
            onnx.to_str().unwrap(),
            "--ep",
            "cpu",
            "--json",
            json.to_str().unwrap(),
            "--predictions",
            preds.to_str().unwrap(),
        ],
    );
    // The device model, loaded from the checkpoint onto the device, against ONNX Runtime's
    // probabilities of the same files.
    let cfg = CancerNetConfig::load(out.join("model.json")).unwrap();
    let run_dir = trainer::checkpoint::RunDir { root: out.clone() };
    let model = run_dir
        .load_model(cfg.init::<B>(&device), &run_dir.best_dir(), &device)
        .unwrap();
    let pre = datasets::preprocess::Preprocess {
        size: 16,
        filter: datasets::preprocess::Filter::Nearest,
    };
    let rows: Vec<csv::StringRecord> = csv::Reader::from_path(&preds)
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .collect();
    let mut x = vec![0f32; rows.len() * pre.len()];
    for (i, r) in rows.iter().enumerate() {
        pre.load_into(Path::new(&r[0]), &mut x[i * pre.len()..(i + 1) * pre.len()])
            .unwrap();
    }
    let t = Tensor::<B, 4>::from_data(TensorData::new(x, [rows.len(), 3, 16, 16]), &device);
    let probs: Vec<f32> = model
        .probabilities(t)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap();
    let mut worst = 0f32;
    for (i, r) in rows.iter().enumerate() {
        let ort: f32 = r[5].parse().unwrap();
        worst = worst.max((ort - probs[i * 2 + 1]).abs());
    }
    eprintln!(
        "device vs ONNX Runtime on {} patches: max |diff| = {worst:.2e}",
        rows.len()
    );
    assert!(
        worst <= 1e-4,
        "device vs ONNX Runtime: max |diff| = {worst}"
    );
}

/// A run stopped on one device resumes on the other and ends as a straight CPU run does: its
/// losses within `tolerance` (relative) of the straight run's, the resumed epochs included.
fn resume_across_devices(flag: &str, tolerance: f64) {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path(), flag);
    let trainer = Path::new(env!("CARGO_BIN_EXE_trainer"));
    let c = config.to_str().unwrap();
    let metrics = |d: &Path| -> Vec<(f64, f64)> {
        csv::Reader::from_path(d.join("metrics.csv"))
            .unwrap()
            .deserialize::<std::collections::HashMap<String, String>>()
            .map(|r| {
                let r = r.unwrap();
                (
                    r["train_loss"].parse().unwrap(),
                    r["val_loss"].parse().unwrap(),
                )
            })
            .collect()
    };
    let straight = tmp.path().join("straight");
    run(
        trainer,
        &[
            "--config",
            c,
            "--output",
            straight.to_str().unwrap(),
            "--quiet",
            "--device",
            "cpu",
        ],
    );
    let want = metrics(&straight);
    for (first, second) in [(flag, "cpu"), ("cpu", flag)] {
        let out = tmp.path().join(format!("{first}-then-{second}"));
        let o = out.to_str().unwrap();
        run(
            trainer,
            &[
                "--config",
                c,
                "--output",
                o,
                "--quiet",
                "--device",
                first,
                "--stop-after",
                "1",
            ],
        );
        let resumed = run(
            trainer,
            &[
                "--config", c, "--output", o, "--quiet", "--device", second, "--resume",
            ],
        );
        assert!(
            resumed.contains("resuming after epoch 1")
                && resumed.contains(&format!("device {second}")),
            "{resumed}"
        );
        let got = metrics(&out);
        assert_eq!(
            got.len(),
            want.len(),
            "{first} then {second}: epochs in metrics.csv"
        );
        for (epoch, ((tl, vl), (wtl, wvl))) in got.iter().zip(&want).enumerate() {
            eprintln!(
                "{first} then {second}, epoch {}: train loss {tl} vs {wtl}, val loss {vl} vs {wvl}",
                epoch + 1
            );
            assert!(
                (tl - wtl).abs() <= tolerance * wtl && (vl - wvl).abs() <= tolerance * wvl,
                "{first} then {second}, epoch {}: losses {tl} {vl} vs straight {wtl} {wvl}",
                epoch + 1
            );
        }
    }
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    use burn::backend::Wgpu;
    use burn::backend::wgpu::WgpuDevice;

    /// The wgpu device, or `None` after saying what to install (an error under IDC_REQUIRE_ALL).
    fn device() -> Option<WgpuDevice> {
        match trainer::device::wgpu::device() {
            Ok((d, name)) => {
                eprintln!("wgpu adapter: {name}");
                Some(d)
            }
            Err(e) => {
                datasets::testdata::skip(&format!(
                    "no wgpu device ({e:#}); for the CPU's Vulkan device: apt-get install mesa-vulkan-drivers libvulkan1"
                ));
                None
            }
        }
    }

    #[test]
    fn wgpu_kernels_match_burns() {
        if let Some(d) = device() {
            kernels_match_burns::<Autodiff<Wgpu>>(d);
        }
    }

    #[test]
    fn wgpu_batch_norm_kernels_match_burns() {
        if let Some(d) = device() {
            batch_norm_kernels_match_burns::<Autodiff<Wgpu>>(d);
        }
    }

    #[test]
    fn wgpu_steps_match_the_cpu() {
        if let Some(d) = device() {
            steps_match_flex::<Autodiff<Wgpu>>(d);
        }
    }

    #[test]
    fn wgpu_whole_run_exports_and_evaluates() {
        if let Some(d) = device() {
            whole_run_exports_and_evaluates::<Wgpu>("wgpu", d);
        }
    }

    #[test]
    fn wgpu_run_resumes_on_the_cpu_and_back() {
        if device().is_some() {
            // Measured on lavapipe: 7e-7 apart on one machine, 1.2e-5 on another (its LLVM
            // vectorizes the kernels' sums differently); 1e-4 as for CUDA.
            resume_across_devices("wgpu", 1e-4);
        }
    }
}

/// The same suite on CUDA: where the trainer is built with `--features cuda` and a GPU is there.
mod cuda {
    #[allow(unused_imports)]
    use super::*;

    /// The CUDA device, or `None` where there is none. Then the error must say what is missing
    /// (never a panic's leftovers such as `RecvError`), and `trainer --device cuda` must exit
    /// with it; under IDC_REQUIRE_CUDA (bench/gpu.sh, on a GPU machine) a missing device fails
    /// the test instead. CI has no GPU: there these tests check the error and say SKIPPED.
    #[cfg(feature = "cuda")]
    fn device() -> Option<burn::backend::cuda::CudaDevice> {
        let e = match trainer::device::cuda::device() {
            Ok((d, name)) => {
                eprintln!("CUDA: {name}");
                return Some(d);
            }
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("CUDA cannot be used here: ")
                && !e.contains("RecvError")
                && !e.contains("unwrap"),
            "unclear error: {e}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("c.yaml");
        std::fs::write(&config, "data:\n  root: /nonexistent\ndevice: cuda\n").unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args(["--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && stderr.contains(&e),
            "trainer --device cuda: {stderr}"
        );
        if std::env::var_os("IDC_REQUIRE_CUDA").is_some() {
            panic!("IDC_REQUIRE_CUDA is set, and {e}");
        }
        datasets::testdata::not_on_this_machine(&format!("no CUDA device here ({e})"));
        None
    }

    #[cfg(not(feature = "cuda"))]
    fn device() -> Option<()> {
        datasets::testdata::skip(
            "this test build has no CUDA (cargo test -p trainer --features cuda --test gpu)",
        );
        None
    }

    #[test]
    fn cuda_kernels_match_burns() {
        #[cfg(feature = "cuda")]
        if let Some(d) = device() {
            kernels_match_burns::<Autodiff<burn::backend::Cuda>>(d);
        }
        #[cfg(not(feature = "cuda"))]
        device();
    }

    #[test]
    fn cuda_batch_norm_kernels_match_burns() {
        #[cfg(feature = "cuda")]
        if let Some(d) = device() {
            batch_norm_kernels_match_burns::<Autodiff<burn::backend::Cuda>>(d);
        }
        #[cfg(not(feature = "cuda"))]
        device();
    }

    #[test]
    fn cuda_steps_match_the_cpu() {
        #[cfg(feature = "cuda")]
        if let Some(d) = device() {
            steps_match_flex::<Autodiff<burn::backend::Cuda>>(d);
        }
        #[cfg(not(feature = "cuda"))]
        device();
    }

    #[test]
    fn cuda_whole_run_exports_and_evaluates() {
        #[cfg(feature = "cuda")]
        if let Some(d) = device() {
            whole_run_exports_and_evaluates::<burn::backend::Cuda>("cuda", d);
        }
        #[cfg(not(feature = "cuda"))]
        device();
    }

    #[test]
    fn cuda_run_resumes_on_the_cpu_and_back() {
        if device().is_some() {
            // Unmeasured on a GPU yet: the cross-backend tolerance of the other CUDA tests.
            resume_across_devices("cuda", 1e-4);
        }
    }
}
