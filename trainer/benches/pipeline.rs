//! Training throughput, batch 32, one run: (a) the full pipeline streaming augmented PNGs from
//! disk, (b) in-memory tensors, and the loader alone (decode + augment, without and with the
//! stain jitter), which must outrun (a).
//! Run: cargo bench -p trainer --bench pipeline   (STEPS=n to change the 60 measured steps)

use burn::backend::{Autodiff, Flex};
use burn::optim::{GradientsParams, Optimizer};
use datasets::augment::Augment;
use datasets::preprocess::Preprocess;
use models::{CancerNet, CancerNetConfig};
use std::sync::Arc;
use std::time::Instant;
use trainer::data::{Batch, Loader, Split};
use trainer::optim::KerasAdagrad;
use trainer::train::{images_tensor, weighted_loss};

type B = Autodiff<Flex>;

fn main() {
    trainer::alloc::keep_freed_buffers(); // as the trainer binary does
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let bs = 32;
    let tmp = tempfile::tempdir().unwrap();
    let orig = tmp.path().join("orig");
    datasets::testdata::small_synth(&orig, 12, 150.0);
    let split = Arc::new(Split::open(tmp.path(), "orig", true).unwrap());
    let cores = common::cli::cores();
    let loader = Loader::new(Preprocess::default(), bs, cores).unwrap();
    let order = || (0..split.len()).collect::<Vec<_>>();
    println!(
        "{} patches, batch {bs}, {steps} steps, {cores} cores, {} compute threads",
        split.len(),
        rayon::current_num_threads()
    );

    let t = Instant::now();
    let n: usize = loader
        .batches(&split, order(), Some(Augment::default()), 1, Some(steps))
        .into_iter()
        .map(|b| b.len())
        .sum();
    let loader_rate = n as f64 / t.elapsed().as_secs_f64();
    println!("loader alone (decode + augment, {cores} workers)   {loader_rate:>8.0} img/s");
    // The same with the stain jitter of bench/cv/stain.yaml (HED + colour).
    let stained = Augment {
        hed: 0.05,
        brightness: 0.1,
        contrast: 0.1,
        saturation: 0.1,
        hue: 0.02,
        ..Augment::default()
    };
    let t = Instant::now();
    let n: usize = loader
        .batches(&split, order(), Some(stained), 1, Some(steps))
        .into_iter()
        .map(|b| b.len())
        .sum();
    let stained_rate = n as f64 / t.elapsed().as_secs_f64();
    println!("loader alone + HED and colour jitter       {stained_rate:>8.0} img/s");

    let dev = Default::default();
    let step = |model: CancerNet<B>, optim: &mut _, b: &Batch| -> CancerNet<B> {
        let loss = weighted_loss(
            model.forward(images_tensor(b, 48, &dev)),
            &b.labels,
            [1.0, 2.5],
            &dev,
        );
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        Optimizer::<CancerNet<B>, B>::step(optim, 1e-2, model, grads)
    };
    let fresh = || {
        (
            CancerNetConfig::default().init::<B>(&dev),
            KerasAdagrad::default().init::<B, CancerNet<B>>(),
        )
    };

    let batches: Vec<Batch> = loader
        .batches(&split, order(), None, 3, Some(4))
        .into_iter()
        .collect();
    // Steady state for both: a few untimed steps first (the first ones also grow the heap).
    let warm = |(mut model, mut optim): (CancerNet<B>, _)| {
        for b in &batches {
            model = step(model, &mut optim, b);
        }
        (model, optim)
    };

    let (mut model, mut optim) = warm(fresh());
    let t = Instant::now();
    let mut seen = 0;
    for b in loader.batches(&split, order(), Some(Augment::default()), 2, Some(steps)) {
        seen += b.len();
        model = step(model, &mut optim, &b);
    }
    let streaming = seen as f64 / t.elapsed().as_secs_f64();

    let (mut model, mut optim) = warm(fresh());
    let t = Instant::now();
    for k in 0..steps {
        model = step(model, &mut optim, &batches[k % batches.len()]);
    }
    let memory = (steps * bs) as f64 / t.elapsed().as_secs_f64();
    println!("(a) training, streaming augmented PNGs  {streaming:>8.1} img/s");
    println!("(b) training, in-memory tensors         {memory:>8.1} img/s");
    println!(
        "streaming / in-memory                   {:>8.2}",
        streaming / memory
    );
    println!(
        "CancerNet costs ~71 MFLOP per trained image: (b) = {:.1} GFLOP/s",
        memory * 0.071
    );
}
