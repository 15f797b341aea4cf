use super::*;
use burn::backend::Flex;

#[test]
fn parameter_count_matches_keras() {
    let model = CancerNetConfig::default().init::<Flex>(&Default::default());
    assert_eq!(parameter_counts(&model), (1_235_133, 1_233_533));
}

#[test]
fn output_shape_and_probabilities() {
    let cfg = CancerNetConfig::default()
        .with_input_size(32)
        .with_widths(vec![8, 16])
        .with_depths(vec![1, 1])
        .with_dense(16);
    assert_eq!(cfg.flat_features(), 8 * 8 * 16);
    let dev = Default::default();
    let model = cfg.init::<Flex>(&dev);
    let x = Tensor::<Flex, 4>::random([3, 3, 32, 32], burn::tensor::Distribution::Default, &dev);
    let logits: Vec<f32> = model.forward(x.clone()).into_data().to_vec().unwrap();
    let p = model.probabilities(x);
    assert_eq!(p.dims(), [3, 2]);
    let p: Vec<f32> = p.into_data().to_vec().unwrap();
    // Probabilities are the softmax of the logits, computed here in f64.
    for i in 0..3 {
        let (a, b) = (logits[2 * i] as f64, logits[2 * i + 1] as f64);
        let idc = 1.0 / (1.0 + (a - b).exp());
        assert!(
            (p[2 * i + 1] as f64 - idc).abs() < 1e-6,
            "{} vs {idc}",
            p[2 * i + 1]
        );
    }
    // Different images, different outputs: the network is not a constant.
    assert!(logits[0] != logits[2] || logits[2] != logits[4]);
}

#[test]
fn fast_batch_norm_matches_burns() {
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;
    type A = Autodiff<Flex>;
    let dev = Default::default();
    let bn = BatchNormConfig::new(5).with_momentum(0.1).init::<A>(&dev);
    let bn_ref = bn.clone();
    let x = Tensor::<A, 4>::random(
        [4, 5, 6, 7],
        burn::tensor::Distribution::Normal(1.0, 2.0),
        &dev,
    )
    .require_grad();
    let close = |a: Tensor<Flex, 4>, b: Tensor<Flex, 4>| {
        let d: f32 = (a - b).abs().max().into_scalar();
        assert!(d < 1e-4, "max diff {d}");
    };
    // Training mode: outputs, input gradients, running statistics.
    let (y, y_ref) = (batch_norm_nchw(&bn, x.clone()), bn_ref.forward(x.clone()));
    close(y.clone().inner(), y_ref.clone().inner());
    let w = Tensor::<A, 4>::random([4, 5, 6, 7], burn::tensor::Distribution::Default, &dev);
    let g = (y * w.clone()).sum().backward();
    let g_ref = (y_ref * w).sum().backward();
    close(x.grad(&g).unwrap(), x.grad(&g_ref).unwrap());
    let gamma_diff: f32 = (bn.gamma.grad(&g).unwrap() - bn_ref.gamma.grad(&g_ref).unwrap())
        .abs()
        .max()
        .into_scalar();
    assert!(gamma_diff < 1e-3, "gamma grad diff {gamma_diff}");
    // Eval mode with the updated running statistics.
    let (e, e_ref) = (bn.valid(), bn_ref.valid());
    let xi = x.inner();
    close(batch_norm_nchw(&e, xi.clone()), e_ref.forward(xi));
}

#[test]
fn precise_batch_norm_makes_eval_mode_see_the_batch_statistics() {
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;
    type A = Autodiff<Flex>;
    let dev = Default::default();
    let cfg = CancerNetConfig::default()
        .with_input_size(16)
        .with_widths(vec![4, 8])
        .with_depths(vec![2, 1])
        .with_dense(8);
    // Seeded: its parameters are initialized, so clones share weights (lazy ones would not).
    let model = cfg.init_seeded::<A>(7, &dev);
    let image = |seed| {
        Flex::seed(&dev, seed);
        Tensor::<A, 4>::random([6, 3, 16, 16], burn::tensor::Distribution::Default, &dev)
    };
    let (x, y) = (image(1), image(2));
    // Training mode without dropout normalizes with each batch's own statistics.
    let mut no_dropout = model.clone();
    (no_dropout.conv_dropout.prob, no_dropout.dense_dropout.prob) = (0.0, 0.0);
    let batch_stats = no_dropout.clone().forward(x.clone()).inner();
    let running = |m: &CancerNet<A>| -> Vec<f32> {
        let mut v = Vec::new();
        let units = m.blocks.iter().flat_map(|b| &b.units);
        for bn in units.map(|u| &u.bn).chain([&m.dense_bn]) {
            v.extend(
                bn.running_mean
                    .value_sync()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap(),
            );
            v.extend(
                bn.running_var
                    .value_sync()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap(),
            );
        }
        v
    };
    // Running statistics left by training (here: by two other batches) are forgotten, and
    // the model cloned from keeps its own.
    let trained = cfg
        .init_seeded::<A>(7, &dev)
        .load_record(model.clone().into_record());
    drop(trained.forward(y.clone()));
    drop(trained.forward(image(3)));
    for start in [model.clone(), trained] {
        let before = running(&start);
        let precise = start.clone().precise_batch_norm([x.clone()]);
        assert_eq!(running(&start), before);
        assert_ne!(running(&precise), before);
        // Dropout and momentum are as before; only the statistics moved.
        assert_eq!(
            (precise.conv_dropout.prob, precise.dense_dropout.prob),
            (0.25, 0.5)
        );
        assert!((precise.dense_bn.momentum - 0.01).abs() < 1e-12);
        let eval = precise.valid().forward(x.clone().inner());
        let d: f32 = (eval - batch_stats.clone()).abs().max().into_scalar();
        assert!(d < 1e-4, "eval mode vs batch statistics: {d}");
    }
    // Batches of 6, 2 and 4 images: in training mode each layer's batch statistics depend
    // only on the batch, so every statistic is the size-weighted mean of the batches' own,
    // in any order.
    let z = image(4).narrow(0, 0, 2);
    let w = image(5).narrow(0, 0, 4);
    let batches = [x, z, w];
    let alone: Vec<Vec<f32>> = batches
        .iter()
        .map(|b| running(&model.clone().precise_batch_norm([b.clone()])))
        .collect();
    let weights = [6.0, 2.0, 4.0];
    let want: Vec<f32> = (0..alone[0].len())
        .map(|i| (0..3).map(|b| weights[b] * alone[b][i]).sum::<f32>() / 12.0)
        .collect();
    for order in [[0, 1, 2], [2, 0, 1]] {
        let got = running(
            &model
                .clone()
                .precise_batch_norm(order.map(|b| batches[b].clone())),
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() < 1e-5 * (1.0 + w.abs()),
                "statistic {i}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn pointwise_matmul_matches_conv2d() {
    use burn::backend::Autodiff;
    type A = Autodiff<Flex>;
    let dev = Default::default();
    let conv = Conv2dConfig::new([6, 5], [1, 1]).init::<A>(&dev);
    let x = Tensor::<A, 4>::random([3, 6, 7, 4], burn::tensor::Distribution::Default, &dev)
        .require_grad();
    let (a, b) = (pointwise_matmul(&conv, x.clone()), conv.forward(x.clone()));
    let d: f32 = (a.clone().inner() - b.clone().inner())
        .abs()
        .max()
        .into_scalar();
    assert!(d < 1e-5, "forward diff {d}");
    let ga = a.sum().backward();
    let gb = b.sum().backward();
    let dx: f32 = (x.grad(&ga).unwrap() - x.grad(&gb).unwrap())
        .abs()
        .max()
        .into_scalar();
    let dw: f32 = (conv.weight.grad(&ga).unwrap() - conv.weight.grad(&gb).unwrap())
        .abs()
        .max()
        .into_scalar();
    assert!(dx < 1e-4 && dw < 1e-3, "grad diffs {dx} {dw}");
}

#[test]
fn config_validation_names_the_field() {
    assert!(CancerNetConfig::default().validate().is_ok());
    let err = CancerNetConfig::default()
        .with_input_size(4)
        .validate()
        .unwrap_err();
    assert!(err.contains("input_size"), "{err}");
    let err = CancerNetConfig::default()
        .with_depths(vec![1])
        .validate()
        .unwrap_err();
    assert!(err.contains("depths"), "{err}");
}
