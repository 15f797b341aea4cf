//! Eval-mode (inference) forward of each layer kind on block 1's shape, 32 x 32 x 48 x 48,
//! with burn's ops and with the fast kernels: what validation and `runtime`-free inference in
//! burn cost. Run: cargo bench -p trainer --bench fwd
use burn::backend::Flex;
use burn::prelude::*;
use models::{Kernels, fast_ops};

mod common;
type B = Flex;

fn main() {
    let dev = Default::default();
    let x = Tensor::<B, 4>::random([32, 32, 48, 48], burn::tensor::Distribution::Default, &dev);
    let bn = burn::nn::BatchNormConfig::new(32).init::<B>(&dev);
    let dw = common::depthwise::<B>(32, &dev);
    let pw = burn::nn::conv::Conv2dConfig::new([32, 32], [1, 1]).init::<B>(&dev);
    for (kernels, name) in [(Kernels::Burn, "burn"), (Kernels::Fast, "fast")] {
        common::time(&format!("depthwise 3x3, {name}"), 0, 10, || {
            fast_ops::depthwise3x3(&dw, x.clone(), kernels).into_data();
        });
        common::time(&format!("relu + batchnorm, {name}"), 0, 10, || {
            fast_ops::relu_batch_norm(&bn, x.clone(), kernels).into_data();
        });
        common::time(&format!("maxpool 2, {name}"), 0, 10, || {
            fast_ops::max_pool2_dropout(x.clone(), 0.25, kernels).into_data();
        });
    }
    common::time("pointwise 1x1, batched matmul", 0, 10, || {
        models::pointwise_matmul(&pw, x.clone()).into_data();
    });
    common::time("pointwise 1x1, fast", 0, 10, || {
        fast_ops::pointwise(&pw, x.clone(), Kernels::Fast).into_data();
    });
}
