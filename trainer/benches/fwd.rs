//! Forward-only cost of each layer kind in training mode (autodiff backend) on block 1's shape,
//! 32 x 32 x 48 x 48: what the train-mode forward is made of.
//! Run: cargo bench -p trainer --bench fwd
use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::prelude::*;
use std::time::Instant;
type B = Autodiff<Flex>;
fn t<F: FnMut()>(label: &str, mut f: F) {
    f();
    let s = Instant::now();
    for _ in 0..10 {
        f();
    }
    println!("{label:<50} {:>8.2} ms", s.elapsed().as_secs_f64() * 100.0);
}
fn main() {
    let dev = Default::default();
    let x = Tensor::<B, 4>::random([32, 32, 48, 48], burn::tensor::Distribution::Default, &dev)
        .require_grad();
    let bn = burn::nn::BatchNormConfig::new(32).init::<B>(&dev);
    let dw = burn::nn::conv::Conv2dConfig::new([32, 32], [3, 3])
        .with_groups(32)
        .with_padding(burn::nn::PaddingConfig2d::Same)
        .with_bias(false)
        .init::<B>(&dev);
    let pw = burn::nn::conv::Conv2dConfig::new([32, 32], [1, 1]).init::<B>(&dev);
    let drop = burn::nn::DropoutConfig::new(0.25).init();
    t("bn train fwd", || {
        models::batch_norm_nchw(&bn, x.clone()).into_data();
    });
    t("relu fwd", || {
        burn::tensor::activation::relu(x.clone()).into_data();
    });
    t("depthwise fwd", || {
        dw.forward(x.clone()).into_data();
    });
    t("pointwise fwd", || {
        models::pointwise_matmul(&pw, x.clone()).into_data();
    });
    t("dropout fwd", || {
        drop.forward(x.clone()).into_data();
    });
    t("maxpool fwd", || {
        burn::tensor::module::max_pool2d(x.clone(), [2, 2], [2, 2], [0, 0], [1, 1], false)
            .into_data();
    });
    let xi = x.clone().inner();
    let dwi = dw.valid();
    t("depthwise fwd (inner)", || {
        dwi.forward(xi.clone()).into_data();
    });
}
