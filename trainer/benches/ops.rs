//! Micro-benchmark of the tensor primitives a BatchNorm is made of, on flex (32x32x48x48).
use burn::backend::Flex;
use burn::prelude::*;

mod common;

fn main() {
    let dev = Default::default();
    let x = Tensor::<Flex, 4>::random([32, 32, 48, 48], burn::tensor::Distribution::Default, &dev);
    let c = Tensor::<Flex, 4>::random([1, 32, 1, 1], burn::tensor::Distribution::Default, &dev);
    let y = x.clone() + 1.0;
    common::time("add tensors", 0, 10, || {
        (x.clone() + y.clone()).into_data();
    });
    common::time("add scalar", 0, 10, || {
        (x.clone() + 1.0).into_data();
    });
    common::time("mul broadcast [1,C,1,1]", 0, 10, || {
        (x.clone() * c.clone()).into_data();
    });
    common::time("relu", 0, 10, || {
        burn::tensor::activation::relu(x.clone()).into_data();
    });
    common::time("mean_dim(3)", 0, 10, || {
        x.clone().mean_dim(3).into_data();
    });
    common::time("mean_dim(0)", 0, 10, || {
        x.clone().mean_dim(0).into_data();
    });
    common::time("swap_dims(0,1).reshape([C,-1]).mean_dim(1)", 0, 10, || {
        x.clone()
            .swap_dims(0, 1)
            .reshape([32, -1])
            .mean_dim(1)
            .into_data();
    });
    common::time("powi_scalar(2)", 0, 10, || {
        x.clone().powi_scalar(2).into_data();
    });
    common::time("sqrt", 0, 10, || {
        x.clone().abs().sqrt().into_data();
    });
    let c3 = c.clone().reshape([1, 32, 1]);
    let x3 = x.clone().reshape([32, 32, 48 * 48]);
    common::time("mul broadcast [N,C,HW]*[1,C,1]", 0, 10, || {
        (x3.clone() * c3.clone()).into_data();
    });
    let xl = x.clone().permute([0, 2, 3, 1]).reshape([32 * 48 * 48, 32]);
    let cl = c.clone().reshape([1, 32]);
    common::time("mul broadcast channels-last [M,C]*[1,C]", 0, 10, || {
        (xl.clone() * cl.clone()).into_data();
    });
    let ce = c.clone().expand([32, 32, 48, 48]);
    common::time("mul by expanded", 0, 10, || {
        (x.clone() * ce.clone()).into_data();
    });
    let cr = c
        .clone()
        .repeat_dim(0, 32)
        .repeat_dim(2, 48)
        .repeat_dim(3, 48);
    common::time("mul by materialised repeat", 0, 10, || {
        (x.clone() * cr.clone()).into_data();
    });
    common::time("repeat materialise", 0, 10, || {
        c.clone()
            .repeat_dim(0, 32)
            .repeat_dim(2, 48)
            .repeat_dim(3, 48)
            .into_data();
    });
    let x2 = x.clone().reshape([32 * 32, 48 * 48]);
    let col = Tensor::<Flex, 2>::random([32 * 32, 1], burn::tensor::Distribution::Default, &dev);
    common::time("mul column broadcast [NC,HW]*[NC,1]", 0, 10, || {
        (x2.clone() * col.clone()).into_data();
    });
    common::time("permute NCHW->NHWC materialised", 0, 10, || {
        x.clone()
            .permute([0, 2, 3, 1])
            .reshape([32 * 48 * 48, 32])
            .into_data();
    });
    common::time("sum_dim(1) of [NC,HW]", 0, 10, || {
        x2.clone().sum_dim(1).into_data();
    });
    let bn = burn::nn::BatchNormConfig::new(32).init::<Flex>(&dev);
    common::time("batchnorm eval forward", 0, 10, || {
        bn.forward(x.clone()).into_data();
    });
}
