//! Forward-only cost of each layer kind in training mode (autodiff backend) on block 1's shape,
//! 32 x 32 x 48 x 48: what the train-mode forward is made of.
//! Run: cargo bench -p trainer --bench fwd
use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::prelude::*;

mod common;
type B = Autodiff<Flex>;
fn main() {
    let dev = Default::default();
    let x = Tensor::<B, 4>::random([32, 32, 48, 48], burn::tensor::Distribution::Default, &dev)
        .require_grad();
    let bn = burn::nn::BatchNormConfig::new(32).init::<B>(&dev);
    let dw = common::depthwise::<B>(32, &dev);
    let pw = burn::nn::conv::Conv2dConfig::new([32, 32], [1, 1]).init::<B>(&dev);
    let drop = burn::nn::DropoutConfig::new(0.25).init();
    common::time("bn train fwd", 0, 10, || {
        models::batch_norm_nchw(&bn, x.clone()).into_data();
    });
    common::time("relu fwd", 0, 10, || {
        burn::tensor::activation::relu(x.clone()).into_data();
    });
    common::time("depthwise fwd", 0, 10, || {
        dw.forward(x.clone()).into_data();
    });
    common::time("pointwise fwd", 0, 10, || {
        models::pointwise_matmul(&pw, x.clone()).into_data();
    });
    common::time("dropout fwd", 0, 10, || {
        drop.forward(x.clone()).into_data();
    });
    common::time("maxpool fwd", 0, 10, || {
        burn::tensor::module::max_pool2d(x.clone(), [2, 2], [2, 2], [0, 0], [1, 1], false)
            .into_data();
    });
    let xi = x.clone().inner();
    let dwi = dw.valid();
    common::time("depthwise fwd (inner)", 0, 10, || {
        dwi.forward(xi.clone()).into_data();
    });
}
