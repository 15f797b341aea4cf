//! Cross-validation's ablation from one training (`test_report.json`'s `variants`): the
//! configured checkpoint with and without TTA at threshold 0.5 and max-BAC, with neighbour
//! context; the last epoch's model and the means of the last epochs' weights; the last and the
//! mean of 10 with BatchNorm statistics recomputed on the training split; and the mean of 10
//! with each test patient's own statistics.

use crate::checkpoint::RunDir;
use crate::config::TrainConfig;
use crate::evaluate::{Evaluated, evaluate, patient_summary, with_context};
use crate::precise_bn::{evaluate_per_patient_bn, precise_bn};
use crate::splits::Data;
use crate::test_report::{PatientSummary, Variant};
use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use evaluation::report::Report;
use std::collections::BTreeMap;

/// The variants' weight averages: the mean of the last n epochs' checkpoints, for each n.
pub const AVERAGED: [usize; 3] = [5, 10, 20];

/// One entry per way of evaluating: the threshold, the report at it, the patients (whose
/// per-patient ranking does not depend on the threshold).
fn variant(test: &Evaluated, threshold: f64, patients: &PatientSummary) -> Variant {
    Variant {
        threshold,
        report: Report::new(&test.labels, &test.probs, threshold),
        patients: patients.clone(),
        epoch: None,
    }
}

fn view(tta: bool) -> &'static str {
    if tta { "tta" } else { "plain" }
}

/// Every variant, by name (`<view>@<threshold>`, `<model>-<view>@0.5`); `runs` holds the
/// configured model's validation and testing predictions without and with TTA.
pub fn all<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run: &RunDir,
    data: &Data,
    device: &B::Device,
    runs: &BTreeMap<bool, (Evaluated, Evaluated)>,
) -> Result<BTreeMap<String, Variant>> {
    let mut all = BTreeMap::new();
    for (t, (val, test)) in runs {
        let max_bac = evaluation::report::threshold_max_bac(&val.labels, &val.probs).unwrap_or(0.5);
        let patients = patient_summary(&data.test, test);
        for (name, threshold) in [("0.5", 0.5), ("max_bac", max_bac)] {
            all.insert(
                format!("{}@{name}", view(*t)),
                variant(test, threshold, &patients),
            );
        }
    }
    // With neighbour context, as `runtime eval --context` computes it.
    for (t, (_, test)) in runs {
        let test = with_context(&data.test, test, evaluation::context::DEFAULT_WEIGHT);
        all.insert(
            format!("{}-context@0.5", view(*t)),
            variant(&test, 0.5, &patient_summary(&data.test, &test)),
        );
    }
    let (last, last_dir) = run.latest().context("the run has no checkpoints")?;
    let model_cfg = &cfg.model;
    // The last epoch's model instead of the best by validation loss (which a small validation
    // split makes noisy), the means of the last n epochs' weights, and the last and the mean of
    // 10 with BatchNorm statistics recomputed on the training split.
    let last_model = run.load_model(model_cfg.init::<B>(device), &last_dir, device)?;
    let mut models = vec![("last".to_string(), last_model.valid())];
    let mut avg10 = None;
    for n in AVERAGED.into_iter().filter(|&n| n <= last) {
        let (mean, _) = run.mean_of_last::<B>(model_cfg, last, n, device)?;
        models.push((format!("avg{n}"), mean.valid()));
        if n == 10 {
            avg10 = Some(mean);
        }
    }
    // The mean of the last 10 epochs (fewer when the run has fewer) with BatchNorm statistics
    // from each test patient's own patches, and the last and that mean with statistics
    // recomputed on the training split.
    let avg10 = match avg10 {
        Some(mean) => mean,
        None => run.mean_of_last::<B>(model_cfg, last, 10, device)?.0,
    };
    let adapted = evaluate_per_patient_bn(cfg, &avg10, &data.test, &data.loader, device);
    models.push((
        "last-pbn".into(),
        precise_bn(cfg, last_model, data, device).valid(),
    ));
    models.push((
        "avg10-pbn".into(),
        precise_bn(cfg, avg10, data, device).valid(),
    ));
    let mut entry = |name: String, test: &Evaluated| {
        let mut e = variant(test, 0.5, &patient_summary(&data.test, test));
        e.epoch = Some(last);
        all.insert(name, e);
    };
    for (name, model) in &models {
        for t in [false, true] {
            let test = evaluate(model, &data.test, &data.loader, device, t);
            entry(format!("{name}-{}@0.5", view(t)), &test);
        }
    }
    for (t, test) in [false, true].into_iter().zip(&adapted) {
        entry(format!("avg10-adabn-{}@0.5", view(t)), test);
    }
    Ok(all)
}
