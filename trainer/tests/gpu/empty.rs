//! The device's kernels at the edges of their shapes, as `models/tests/kernels.rs` checks the
//! CPU's: an empty batch, no channels, planes of no pixels. Each gives results of the right
//! (empty) sizes and weight gradients of zeros (sums over nothing), and launches nothing it need
//! not: CUDA refuses a launch of no cubes, and a load clamped into a tensor of no values has no
//! index to take. BatchNorm in training has no statistics of an empty batch, and a loss no
//! classes: each says so (the CPU's BatchNorm kernel gives NaN statistics there).
//!
//! burn-cubecl itself launches kernels of no cubes for some empty tensors: its backward pass
//! seeds an empty output's gradient with one (and the gradient of a sum of no values has one
//! image where the batch has none), its `ones` and a BatchNorm layer of no channels (its `init`)
//! too; on CUDA its copies to and from the device refuse an empty shape. So inputs are slices of
//! tensors that have values, gradients start at each output, BatchNorm has channels, and only
//! results with values are read; on CUDA, where the seed's launch is refused (seen on
//! bench/nvrtc-check's compile-only driver), gradients start only at outputs with values.

use burn::module::AutodiffModule;
use burn::nn::BatchNormConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// `t`'s values (none read where it has none: burn-cubecl's CUDA copy refuses an empty shape).
fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    match t.shape().num_elements() {
        0 => Vec::new(),
        _ => t.into_data().convert::<f32>().into_vec().unwrap(),
    }
}

/// Ones of `dims`, tracked for gradients: a slice of a tensor with a place where `dims` has
/// none (burn-cubecl on CUDA neither uploads nor reads back a tensor of no values: its copy's
/// check of the strides refuses an empty shape).
fn ones<B: AutodiffBackend, const D: usize>(dims: [usize; D], device: &B::Device) -> Tensor<B, D> {
    let whole = dims.map(|d| d.max(1));
    let data = TensorData::new(vec![1f32; whole.iter().product()], whole);
    let t = Tensor::<B::InnerBackend, D>::from_data(data, device);
    Tensor::from_inner(t.slice(dims.map(|d| 0..d))).require_grad()
}

/// Whether a backward pass can start at `y`: where it has values, or on a backend whose backward
/// can start at an output of none (`seeds_empty`).
fn can_backward<B: Backend, const D: usize>(seeds_empty: bool, y: &Tensor<B, D>) -> bool {
    seeds_empty || y.shape().num_elements() > 0
}

/// `seeds_empty`: whether burn's backward can start at an output of no values (not on CUDA);
/// gradients from outputs with values are checked on every backend.
pub(super) fn empty_shapes_give_empty_results<B: AutodiffBackend>(
    device: B::Device,
    seeds_empty: bool,
) {
    let co = 5;
    let zero = |t: Tensor<B::InnerBackend, 4>| values(t).iter().all(|&v| v == 0.0);
    for dims in [[0, 3, 8, 8], [2, 0, 8, 8], [2, 3, 0, 8], [2, 3, 8, 0]] {
        let [n, c, h, w] = dims;
        // The depthwise convolution: its filter gradient sums over nothing.
        let (x, f) = (
            ones::<B, 4>(dims, &device),
            ones::<B, 4>([c, 1, 3, 3], &device),
        );
        let y = models::cube::depthwise3x3(x.clone(), f.clone())
            .ok()
            .unwrap();
        assert_eq!(y.dims(), dims, "depthwise {dims:?}");
        if can_backward(seeds_empty, &y) {
            let g = y.backward();
            assert_eq!(x.grad(&g).unwrap().dims(), dims, "depthwise {dims:?}");
            let df = f.grad(&g).unwrap();
            assert_eq!(df.dims(), [c, 1, 3, 3], "depthwise {dims:?}");
            assert!(zero(df), "depthwise {dims:?}: filter gradient");
        }
        // The pointwise convolution: without inputs (no channels) its output is the bias.
        let (x, wt, b) = (
            ones::<B, 4>(dims, &device),
            ones::<B, 4>([co, c, 1, 1], &device),
            ones::<B, 1>([co], &device),
        );
        let y = models::cube::pointwise(x.clone(), wt.clone(), b.clone())
            .ok()
            .unwrap();
        assert_eq!(y.dims(), [n, co, h, w], "pointwise {dims:?}");
        if c == 0 {
            let bias_only = values(y.clone().inner()).iter().all(|&v| v == 1.0);
            assert!(bias_only, "pointwise {dims:?}: not the bias");
        }
        if can_backward(seeds_empty, &y) {
            let g = y.backward();
            assert_eq!(x.grad(&g).unwrap().dims(), dims, "pointwise {dims:?}");
            let (dw, db) = (wt.grad(&g).unwrap(), b.grad(&g).unwrap());
            assert_eq!(dw.dims(), [co, c, 1, 1], "pointwise {dims:?}");
            assert!(zero(dw), "pointwise {dims:?}: weight gradient");
            let want = (n * h * w) as f32;
            let db = values(db);
            assert!(db.iter().all(|&v| v == want), "pointwise {dims:?}: {db:?}");
        }
        // ReLU + BatchNorm and a block's end, in inference.
        if c > 0 {
            let bn = BatchNormConfig::new(c).init::<B>(&device).valid();
            let z = ones::<B, 4>(dims, &device).inner();
            let y = models::cube::relu_batch_norm(&bn, z.clone()).ok().unwrap();
            assert_eq!(y.dims(), dims, "BatchNorm {dims:?}");
            let y = models::cube::relu_batch_norm_pool(&bn, z, 0.5)
                .ok()
                .unwrap();
            assert_eq!(y.dims(), [n, c, h / 2, w / 2], "block end {dims:?}");
        }
    }
    // Planes too small to pool: a block's end has no output, and in training no gradient
    // reaches its input (zeros).
    let dims = [2, 3, 1, 8];
    let bn = BatchNormConfig::new(3).init::<B>(&device);
    let z = ones::<B, 4>(dims, &device);
    let inference = bn.valid();
    let y = models::cube::relu_batch_norm_pool(&inference, z.clone().inner(), 0.5);
    assert_eq!(y.ok().unwrap().dims(), [2, 3, 0, 4], "block end {dims:?}");
    let y = models::cube::relu_batch_norm_pool(&bn, z.clone(), 0.5)
        .ok()
        .unwrap();
    assert_eq!(y.dims(), [2, 3, 0, 4], "block end {dims:?}, training");
    if can_backward(seeds_empty, &y) {
        let dz = z.grad(&y.backward()).unwrap();
        assert_eq!(dz.dims(), dims, "block end {dims:?}");
        assert!(zero(dz), "block end {dims:?}: a gradient reached the input");
    }
    // The dense layer of an empty batch, and of no features.
    for (n, ins) in [(0, 6), (3, 0)] {
        let (x, wt, b) = (
            ones::<B, 2>([n, ins], &device),
            ones::<B, 2>([ins, co], &device),
            ones::<B, 1>([co], &device),
        );
        let y = models::cube::linear(x.clone(), wt.clone(), b.clone())
            .ok()
            .unwrap();
        assert_eq!(y.dims(), [n, co], "dense {n}x{ins}");
        let bias_only = values(y.clone().inner()).iter().all(|&v| v == 1.0);
        assert!(bias_only, "dense {n}x{ins}: not the bias");
        if can_backward(seeds_empty, &y) {
            let g = y.backward();
            assert_eq!(x.grad(&g).unwrap().dims(), [n, ins], "dense {n}x{ins}");
            let dw = values(wt.grad(&g).unwrap());
            assert!(dw.iter().all(|&v| v == 0.0), "dense {n}x{ins}: {dw:?}");
            let db = values(b.grad(&g).unwrap());
            assert!(db.iter().all(|&v| v == n as f32), "dense {n}x{ins}: {db:?}");
        }
    }
    // A dense layer of no outputs.
    let (x, wt, b) = (
        ones::<B, 2>([3, 4], &device),
        ones::<B, 2>([4, 0], &device),
        ones::<B, 1>([0], &device),
    );
    let y = models::cube::linear(x, wt, b).ok().unwrap();
    assert_eq!(y.dims(), [3, 0], "dense of no outputs");
    // BatchNorm in training of an empty batch: a clear message.
    let e = models::catch_quietly(|| {
        models::cube::relu_batch_norm(&bn, ones::<B, 4>([0, 3, 8, 8], &device)).map(drop)
    })
    .expect_err("BatchNorm in training of an empty batch");
    assert!(e.contains("BatchNorm in training needs values"), "{e}");
    // The loss of no rows (its gradient has none), of no classes (a message), and Adagrad with
    // a tensor of no values among others.
    let x = ones::<B, 2>([0, 2], &device);
    let loss = models::cube::cross_entropy(x.clone(), ones::<B, 2>([0, 2], &device))
        .ok()
        .unwrap();
    assert_eq!(loss.dims(), [1]);
    assert_eq!(x.grad(&loss.backward()).unwrap().dims(), [0, 2]);
    let e = models::catch_quietly(|| {
        let x = ones::<B, 2>([3, 0], &device);
        models::cube::cross_entropy(x.clone(), x).map(drop)
    })
    .expect_err("cross-entropy of no classes");
    assert!(e.contains("cross-entropy of no classes"), "{e}");
    let updates = [0, 9]
        .map(|len| ones::<B, 1>([len], &device).inner())
        .map(|t| (t.clone(), t.clone(), t))
        .to_vec();
    let Ok(new) = models::cube::adagrad((updates, 0.01, 1e-7)) else {
        panic!("Adagrad does not use the device's kernel on this backend")
    };
    let lens: Vec<[usize; 2]> = new
        .iter()
        .map(|(p, a)| [p.dims()[0], a.dims()[0]])
        .collect();
    assert_eq!(lens, [[0, 0], [9, 9]]);
}
