//! Stage 7, the final report: the checkpoint `eval.checkpoint` names (best by validation loss, the
//! last, or the mean of the last epochs, written to `checkpoints/average/`; with
//! `eval.precise_bn` its BatchNorm statistics recomputed, written to `checkpoints/precise-bn/`) on
//! held-out patients, the same report as `runtime eval`, at the threshold `eval.threshold` gives
//! (chosen on the validation split for a rule; written to `threshold.json` for the exporter), with
//! test-time augmentation when `eval.tta` and neighbour context when `eval.context`; written to
//! `test_report.json`, with cross-validation's variants when asked (`variants`).

use crate::checkpoint::{self, RunDir, State};
use crate::config::{CheckpointChoice, TrainConfig};
use crate::data::Split;
use crate::evaluate::{Evaluated, evaluate, patient_rows, patient_summary, with_context};
use crate::precise_bn::precise_bn;
use crate::splits::Data;
use crate::test_report::TestReport;
use crate::threshold::{ChosenThreshold, choose_threshold};
use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use common::fsutil::write_atomic;
use evaluation::report::Report;
use models::CancerNet;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The model the run's report stands for, in eval mode: its epoch, what was done to it (in
/// words, for the report's line), and the checkpoint it came from.
struct Configured<B: AutodiffBackend> {
    epoch: usize,
    model: CancerNet<B::InnerBackend>,
    what: String,
}

/// The configured checkpoint, averaged and with precise BatchNorm statistics as the config says;
/// each derived model is written beside the checkpoints.
fn configured<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run: &RunDir,
    state: &State,
    data: &mut Data,
    device: &B::Device,
) -> Result<Configured<B>> {
    let model_cfg = &cfg.model;
    // Loaded on the autodiff backend, which recomputing BatchNorm statistics needs.
    let load = |dir: &Path| run.load_model(model_cfg.init::<B>(device), dir, device);
    let (last, last_dir) = run.latest().context("the run has no checkpoints")?;
    let (epoch, model, mut what, source): (usize, CancerNet<B>, String, PathBuf) =
        match cfg.eval.checkpoint {
            CheckpointChoice::Best => (
                state.best_epoch,
                load(&run.best_dir())?,
                String::new(),
                run.best_dir(),
            ),
            CheckpointChoice::Last => (last, load(&last_dir)?, String::new(), last_dir.clone()),
            CheckpointChoice::Average => {
                let n = cfg.eval.average_epochs;
                let (mean, first) = run.mean_of_last::<B>(model_cfg, last, n, device)?;
                write_derived(
                    run,
                    &run.average_dir(),
                    &mean.valid(),
                    &last_dir,
                    data,
                    device,
                )?;
                let what = format!(", the mean of epochs {first}-{last}");
                (last, mean, what, last_dir.clone())
            }
        };
    let model = if cfg.eval.precise_bn {
        let precise = precise_bn(cfg, model, data, device).valid();
        write_derived(run, &run.precise_bn_dir(), &precise, &source, data, device)?;
        what.push_str(", BatchNorm statistics recomputed on the training split");
        precise
    } else {
        model.valid()
    };
    Ok(Configured { epoch, model, what })
}

/// The final report on the testing split, printed and written (see the module's notes).
pub fn final_report<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run: &RunDir,
    state: &State,
    data: &mut Data,
    device: &B::Device,
    variants: bool,
) -> Result<Report> {
    let Configured { epoch, model, what } = configured::<B>(cfg, run, state, data, device)?;
    let tta = cfg.eval.tta;
    // The configured views; with `variants`, the other too.
    let views = [tta, !tta].into_iter().take(if variants { 2 } else { 1 });
    let runs = evaluate_views(&model, data, device, views)?;
    // Neighbour context (eval.context) on the configured model, validation included: the
    // threshold is chosen on what `runtime` will compute.
    let configured = |split: &Split, e: &Evaluated| match cfg.eval.context {
        Some(w) => with_context(split, e, w),
        None => e.clone(),
    };
    let (val, test) = (
        configured(&data.val, &runs[&tta].0),
        configured(&data.test, &runs[&tta].1),
    );
    let chosen = choose_threshold(cfg, &val, epoch);
    write_atomic(
        &run.root.join(checkpoint::THRESHOLD_FILE),
        serde_json::to_string_pretty(&chosen)?.as_bytes(),
    )?;
    let report = Report::new(&test.labels, &test.probs, chosen.threshold);
    let heading = heading(cfg, epoch, &what, test.loss, &chosen);
    println!("\n{heading}:\n{report}");
    let test_skipped: Vec<serde_json::Value> = test
        .failed
        .iter()
        .chain(&data.test.problems)
        .map(datasets::Problem::to_json)
        .collect();
    if !test_skipped.is_empty() {
        println!(
            "skipped {} testing images (named above and in {})",
            test_skipped.len(),
            checkpoint::TEST_REPORT_FILE
        );
    }
    let variants = if variants {
        crate::variants::all::<B>(cfg, run, data, device, &runs)?
    } else {
        BTreeMap::new()
    };
    TestReport {
        split: "testing".into(),
        checkpoint: cfg.eval.checkpoint.name().into(),
        checkpoint_epoch: epoch,
        precise_bn: cfg.eval.precise_bn,
        loss: test.loss,
        tta,
        context: cfg.eval.context,
        threshold: chosen,
        report: report.clone(),
        patients: patient_summary(&data.test, &test),
        per_patient: patient_rows(&data.test, &test, report.threshold),
        skipped: test_skipped,
        variants,
    }
    .write(&run.root)?;
    Ok(report)
}

/// `model`'s validation and testing predictions for each of `views` (TTA or not).
fn evaluate_views<B: Backend>(
    model: &CancerNet<B>,
    data: &mut Data,
    device: &B::Device,
    views: impl Iterator<Item = bool>,
) -> Result<BTreeMap<bool, (Evaluated, Evaluated)>> {
    let mut runs = BTreeMap::new();
    for t in views {
        let val = evaluate(model, &data.val, &data.loader, device, t);
        let test = evaluate(model, &data.test, &data.loader, device, t);
        data.skipped.add("validation", &val.failed)?;
        data.skipped.add("testing", &test.failed)?;
        runs.insert(t, (val, test));
    }
    Ok(runs)
}

/// The report's first line: which model, how it saw the patches, at which threshold.
fn heading(
    cfg: &TrainConfig,
    epoch: usize,
    what: &str,
    loss: f64,
    chosen: &ChosenThreshold,
) -> String {
    let tta = if cfg.eval.tta {
        ", test-time augmentation (8 views)"
    } else {
        ""
    };
    let context = cfg.eval.context.map_or(String::new(), |w| {
        format!(", neighbour context (weight {w})")
    });
    format!(
        "testing split, {} checkpoint (epoch {epoch}{what}), loss {loss:.4}{tta}{context}, threshold {:.4} ({})",
        cfg.eval.checkpoint.name(),
        chosen.threshold,
        chosen.source
    )
}

/// Writes `model`, derived from the checkpoint `source` (an average, recomputed statistics), to
/// `dir` with `source`'s state and the model's own validation loss and accuracy (the exporter
/// writes them into the ONNX metadata).
pub fn write_derived<B: Backend>(
    run: &RunDir,
    dir: &Path,
    model: &CancerNet<B>,
    source: &Path,
    data: &mut Data,
    device: &B::Device,
) -> Result<()> {
    let val = evaluate(model, &data.val, &data.loader, device, false);
    data.skipped.add("validation", &val.failed)?;
    let mut state = RunDir::read_state(source)?;
    state.val_loss = val.loss;
    state.val_accuracy = Report::new(&val.labels, &val.probs, 0.5).accuracy;
    run.write_derived(dir, model, &state)
}
