//! Micro-benchmark of the tensor primitives a BatchNorm is made of, on flex (32x32x48x48).
use burn::backend::Flex;
use burn::prelude::*;
use std::time::Instant;

fn t<F: FnMut()>(label: &str, mut f: F) {
    f();
    let s = Instant::now();
    for _ in 0..10 {
        f();
    }
    println!("{label:<40} {:>8.2} ms", s.elapsed().as_secs_f64() * 100.0);
}

fn main() {
    let dev = Default::default();
    let x = Tensor::<Flex, 4>::random([32, 32, 48, 48], burn::tensor::Distribution::Default, &dev);
    let c = Tensor::<Flex, 4>::random([1, 32, 1, 1], burn::tensor::Distribution::Default, &dev);
    let y = x.clone() + 1.0;
    t("add tensors", || {
        (x.clone() + y.clone()).into_data();
    });
    t("add scalar", || {
        (x.clone() + 1.0).into_data();
    });
    t("mul broadcast [1,C,1,1]", || {
        (x.clone() * c.clone()).into_data();
    });
    t("relu", || {
        burn::tensor::activation::relu(x.clone()).into_data();
    });
    t("mean_dim(3)", || {
        x.clone().mean_dim(3).into_data();
    });
    t("mean_dim(0)", || {
        x.clone().mean_dim(0).into_data();
    });
    t("swap_dims(0,1).reshape([C,-1]).mean_dim(1)", || {
        x.clone()
            .swap_dims(0, 1)
            .reshape([32, -1])
            .mean_dim(1)
            .into_data();
    });
    t("powi_scalar(2)", || {
        x.clone().powi_scalar(2).into_data();
    });
    t("sqrt", || {
        x.clone().abs().sqrt().into_data();
    });
    let c3 = c.clone().reshape([1, 32, 1]);
    let x3 = x.clone().reshape([32, 32, 48 * 48]);
    t("mul broadcast [N,C,HW]*[1,C,1]", || {
        (x3.clone() * c3.clone()).into_data();
    });
    let xl = x.clone().permute([0, 2, 3, 1]).reshape([32 * 48 * 48, 32]);
    let cl = c.clone().reshape([1, 32]);
    t("mul broadcast channels-last [M,C]*[1,C]", || {
        (xl.clone() * cl.clone()).into_data();
    });
    let ce = c.clone().expand([32, 32, 48, 48]);
    t("mul by expanded", || {
        (x.clone() * ce.clone()).into_data();
    });
    let cr = c
        .clone()
        .repeat_dim(0, 32)
        .repeat_dim(2, 48)
        .repeat_dim(3, 48);
    t("mul by materialised repeat", || {
        (x.clone() * cr.clone()).into_data();
    });
    t("repeat materialise", || {
        c.clone()
            .repeat_dim(0, 32)
            .repeat_dim(2, 48)
            .repeat_dim(3, 48)
            .into_data();
    });
    let x2 = x.clone().reshape([32 * 32, 48 * 48]);
    let col = Tensor::<Flex, 2>::random([32 * 32, 1], burn::tensor::Distribution::Default, &dev);
    t("mul column broadcast [NC,HW]*[NC,1]", || {
        (x2.clone() * col.clone()).into_data();
    });
    t("permute NCHW->NHWC materialised", || {
        x.clone()
            .permute([0, 2, 3, 1])
            .reshape([32 * 48 * 48, 32])
            .into_data();
    });
    t("sum_dim(1) of [NC,HW]", || {
        x2.clone().sum_dim(1).into_data();
    });
    let bn = burn::nn::BatchNormConfig::new(32).init::<Flex>(&dev);
    t("batchnorm eval forward", || {
        bn.forward(x.clone()).into_data();
    });
}
