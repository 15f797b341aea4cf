//! Each of CancerNet's own layer kernels, its loss and its optimizer on the device against burn's
//! ops on the CPU.

use super::{check, data, leaf};
use burn::backend::{Autodiff, Flex};
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use trainer::optim::KerasAdagrad;

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
pub(super) fn kernels_match_burns<B: AutodiffBackend>(device: B::Device) {
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
        // 200 vectors of positions: the product's last cube has 72 of its 128, units with two
        // vectors and with one (units with none: [1, 5, 3, 7] above, 21 of 32); the weight
        // gradient's tiles of 8 end past 7 inputs and 19 outputs.
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
