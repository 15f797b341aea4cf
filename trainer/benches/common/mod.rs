//! What the trainer's benchmarks share: a timer and block 1's depthwise convolution.
#![allow(dead_code)] // each bench uses part of it

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use std::time::Instant;

/// Ends the process on a panic on any thread: a GPU kernel that fails to compile panics on the
/// backend's own thread, and the bench's thread would go on timing steps that lack it.
pub fn exit_on_any_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(101);
    }));
}

/// Runs `f` once to warm up, then `reps` times; prints the mean time per run (and images/s
/// when `images` > 0) and returns the mean seconds.
pub fn time<F: FnMut()>(label: &str, images: usize, reps: usize, mut f: F) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    let secs = start.elapsed().as_secs_f64() / reps as f64;
    if images > 0 {
        println!(
            "{label:<52} {:>9.2} ms {:>9.1} img/s",
            secs * 1e3,
            images as f64 / secs
        );
    } else {
        println!("{label:<52} {:>9.2} ms", secs * 1e3);
    }
    secs
}

/// CancerNet's depthwise 3x3 convolution ('same', no bias) over `channels` channels.
pub fn depthwise<B: Backend>(channels: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([channels, channels], [3, 3])
        .with_groups(channels)
        .with_padding(PaddingConfig2d::Same)
        .with_bias(false)
        .init(device)
}
