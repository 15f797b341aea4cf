//! CancerNet learns: a few steps lower the loss on synthetic patches, and a short training on the
//! real patches (patient split) beats the majority-class baseline on held-out patients.

use burn::backend::{Autodiff, Flex};
use burn::optim::{GradientsParams, Optimizer};
use datasets::build::{BuildOptions, build};
use datasets::preprocess::Preprocess;
use datasets::split::SplitConfig;
use datasets::testdata::shared_data;
use models::{CancerNet, CancerNetConfig};
use std::process::Command;
use std::sync::Arc;
use trainer::data::{Loader, Split};
use trainer::optim::KerasAdagrad;
use trainer::train::{images_tensor, weighted_loss};

type B = Autodiff<Flex>;

#[test]
fn a_few_steps_lower_the_loss_on_synthetic_patches() {
    let tmp = tempfile::tempdir().unwrap();
    let orig = tmp.path().join("orig");
    datasets::testdata::small_synth(&orig, 6, 40.0);
    let split = Arc::new(Split::open(tmp.path(), "orig", true).unwrap());
    let loader = Loader::new(Preprocess::default(), 32, 2).unwrap();
    let batches: Vec<_> = loader
        .batches(&split, (0..split.len()).collect(), None, 0, Some(3))
        .into_iter()
        .collect();
    let dev = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&dev, 1); // initial weights and dropout masks
    let mut model: CancerNet<B> = CancerNetConfig::default().init(&dev);
    let mut optim = KerasAdagrad::default().init::<B, CancerNet<B>>();
    // Train-mode loss (batch statistics) is what the optimizer lowers; track it over the steps.
    let train_loss = |model: &CancerNet<B>| -> f32 {
        let losses: Vec<f32> = batches
            .iter()
            .map(|b| {
                weighted_loss(
                    model.forward(images_tensor(b, 48, &dev)),
                    &b.labels,
                    [1.0, 1.0],
                    &dev,
                )
                .into_scalar()
            })
            .collect();
        losses.iter().sum::<f32>() / losses.len() as f32
    };
    let before = train_loss(&model);
    for step in 0..8 {
        let b = &batches[step % batches.len()];
        let loss = weighted_loss(
            model.forward(images_tensor(b, 48, &dev)),
            &b.labels,
            [1.0, 1.0],
            &dev,
        );
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    let after = train_loss(&model);
    assert!(after < before * 0.8, "loss {before} -> {after}");
}

#[test]
fn short_training_on_real_patients_beats_the_majority_baseline() {
    let Some(real) = shared_data("idc-real") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let idc = tmp.path().join("idc");
    build(&BuildOptions {
        source: real,
        out: idc.clone(),
        split: SplitConfig::default(),
        force: false,
        ..Default::default()
    })
    .unwrap();
    // A narrower CancerNet, and BatchNorm momentum 0.9 so that the running statistics settle
    // within a short run (at Keras' 0.99 they need ~750 steps and eval predictions collapse).
    let config = tmp.path().join("real.yaml");
    std::fs::write(
        &config,
        format!(
            "data:\n  root: {}\nmodel:\n  widths: [16, 32, 64]\n  depths: [1, 1, 1]\n  dense: 64\n  bn_momentum: 0.9\ntrain:\n  epochs: 2\noutput: {}\n",
            idc.display(),
            tmp.path().join("run").display()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["--config", config.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("run/test_report.json")).unwrap(),
    )
    .unwrap();
    let r = &report["report"];
    let support = |c: usize| r["classes"][c]["support"].as_f64().unwrap();
    let majority = support(0).max(support(1)) / (support(0) + support(1));
    let accuracy = r["accuracy"].as_f64().unwrap();
    let auc = r["roc_auc"].as_f64().unwrap();
    assert!(
        accuracy > majority,
        "accuracy {accuracy} does not beat the majority baseline {majority}"
    );
    assert!(auc > 0.6, "ROC AUC {auc}");
}
