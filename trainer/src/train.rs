//! The training loop, in named stages: decide where a run starts (`plan_start`), open the data
//! (`splits::Data`), write the run's files, build or restore the model and optimizer
//! (`Session`), then per epoch train (`train_epoch`), validate and checkpoint (`end_epoch`), and
//! finally report on the testing split (`report::final_report`). The device is a type parameter: the
//! CPU and GPU backends share every line.

use crate::checkpoint::{self, EpochMetrics, EpochTiming, RunDir, State};
use crate::config::{AutoWeights, ClassWeights, TrainConfig};
use crate::data::Batch;
use crate::evaluate::evaluate;
use crate::optim::Optim;
use crate::splits::Data;
use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use common::Shown;
use common::fsutil::write_atomic;
use datasets::manifest;
use datasets::rng::Rng;
use evaluation::plot::{Series, line_chart};
use evaluation::report::Report;
use models::CancerNet;
use plotters::style::RGBColor;
use std::path::PathBuf;
use std::time::Instant;

/// How a run ended.
pub struct Outcome {
    /// Stopped by `stop_after` before the last epoch.
    pub interrupted: bool,
    pub epochs_run: usize,
    pub already_done: bool,
    /// The testing split's report (absent when interrupted or already done).
    pub test: Option<Report>,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub resume: bool,
    pub force: bool,
    pub quiet: bool,
    /// Stop after this many epochs in this session (the run can be resumed).
    pub stop_after: Option<usize>,
    /// Any skipped image (unreadable, corrupt, colliding) is an error.
    pub strict: bool,
    /// The final report also for TTA on/off x threshold 0.5/max-BAC (cross-validation).
    pub variants: bool,
    /// The device as the run header and run.json name it (e.g. the GPU's adapter).
    pub device_name: String,
}

/// Class weights: max(count) / count per class (the tutorial's), or fixed ones.
pub fn class_weights(cfg: &TrainConfig, counts: [usize; 2]) -> [f64; 2] {
    match &cfg.train.class_weights {
        ClassWeights::Fixed(w) => *w,
        ClassWeights::Auto(AutoWeights::None) => [1.0, 1.0],
        ClassWeights::Auto(AutoWeights::Auto) => {
            let max = *counts.iter().max().unwrap() as f64;
            counts.map(|c| max / c.max(1) as f64)
        }
    }
}

pub fn images_tensor<B: Backend>(batch: &Batch, size: usize, device: &B::Device) -> Tensor<B, 4> {
    Tensor::from_data(
        TensorData::new(batch.images.clone(), [batch.len(), 3, size, size]),
        device,
    )
}

/// Mean over the batch of -w[y] * log p[y] (Keras' class_weight with sum-over-batch-size).
pub fn weighted_loss<B: Backend>(
    logits: Tensor<B, 2>,
    labels: &[u8],
    weights: [f64; 2],
    device: &B::Device,
) -> Tensor<B, 1> {
    let n = labels.len();
    let mut target = vec![0f32; n * 2];
    for (i, &y) in labels.iter().enumerate() {
        target[i * 2 + y as usize] = weights[y as usize] as f32;
    }
    let target = Tensor::<B, 2>::from_data(TensorData::new(target, [n, 2]), device);
    (log_softmax(logits, 1) * target)
        .sum()
        .neg()
        .div_scalar(n as f32)
}

/// Trains the run `cfg` describes on the `training`, `validation` and `testing` folders under
/// `data.root`.
pub fn run<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: B::Device,
    opts: &Options,
) -> Result<Outcome> {
    cfg.validate()?;
    let run = RunDir {
        root: cfg.output.clone(),
    };
    let config_yaml = cfg.to_yaml()?;
    let start = match plan_start(&run, &config_yaml, opts)? {
        Start::AlreadyDone => {
            return Ok(Outcome {
                interrupted: false,
                epochs_run: 0,
                already_done: true,
                test: None,
            });
        }
        start => start,
    };
    let data = Data::open(cfg, opts)?;
    train_on::<B>(cfg, device, opts, &config_yaml, start, data)
}

/// Where a run starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Epoch 1, from freshly initialized weights.
    Fresh,
    /// After the checkpoint of this epoch.
    After(usize, PathBuf),
    AlreadyDone,
}

/// Stage 1: what the output folder holds decides where this run starts; a different config, an
/// unfinished run without `--resume`, and torn checkpoints are dealt with here.
pub fn plan_start(run: &RunDir, config_yaml: &str, opts: &Options) -> Result<Start> {
    let Some((epoch, dir)) = run.latest() else {
        if opts.resume {
            eprintln!(
                "note: nothing to resume in {}; starting from epoch 1",
                run.root.shown()
            );
        }
        run.clear_outputs()?;
        return Ok(Start::Fresh);
    };
    let old_config =
        std::fs::read_to_string(run.root.join(checkpoint::CONFIG_FILE)).unwrap_or_default();
    let same_run = yaml_serde::from_str::<TrainConfig>(&old_config)
        .ok()
        .zip(yaml_serde::from_str::<TrainConfig>(config_yaml).ok())
        .is_some_and(|(old, new)| old.same_run(&new));
    if opts.force {
        run.clear_outputs()?;
        return Ok(Start::Fresh);
    }
    if !same_run {
        bail!(
            "{} holds a run with a different config; pass --force to start over there, or choose another output",
            run.root.shown()
        );
    }
    if RunDir::read_state(&dir)?.finished {
        if run.root.join(checkpoint::TEST_REPORT_FILE).is_file() {
            return Ok(Start::AlreadyDone);
        }
        // Trained, but stopped before the final report: do just that.
        return Ok(Start::After(epoch, dir));
    }
    if !opts.resume {
        bail!(
            "{} holds an unfinished run (last checkpoint: epoch {epoch}); pass --resume to continue it or --force to start over",
            run.root.shown()
        );
    }
    Ok(Start::After(epoch, dir))
}

/// Trains from `start` on `data`, with every stage after the data is open.
pub fn train_on<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: B::Device,
    opts: &Options,
    config_yaml: &str,
    start: Start,
    mut data: Data,
) -> Result<Outcome> {
    let run = RunDir {
        root: cfg.output.clone(),
    };
    let weights = class_weights(cfg, data.train.class_counts());
    write_run_files(cfg, &run, config_yaml, weights, &data, &opts.device_name)?;
    let [c0, c1] = data.train.class_counts();
    println!(
        "training on {} patches ({c0} no IDC, {c1} IDC; class weights {:.3} / {:.3}), validating on {}, testing on {}; device {}",
        data.train.len(),
        weights[0],
        weights[1],
        data.val.len(),
        data.test.len(),
        if opts.device_name.is_empty() {
            format!("{device:?}")
        } else {
            opts.device_name.clone()
        }
    );
    let mut session = Session::<B>::start(cfg, &run, &start, &device)?;
    let mut epochs_run = 0;
    for epoch in session.state.epoch + 1..=cfg.train.epochs {
        if session.state.finished {
            break; // stopped early before; only the final report is left
        }
        let trained = train_epoch(cfg, &mut session, &mut data, epoch, weights, opts, &device)?;
        let stop_early = end_epoch(cfg, &run, &mut session, &mut data, trained, &device)?;
        write_run_files(cfg, &run, config_yaml, weights, &data, &opts.device_name)?;
        epochs_run += 1;
        if stop_early {
            println!(
                "early stopping: no validation improvement for {} epochs",
                session.state.epochs_without_improvement
            );
            break;
        }
        if opts.stop_after == Some(epochs_run) && !session.state.finished {
            return Ok(Outcome {
                interrupted: true,
                epochs_run,
                already_done: false,
                test: None,
            });
        }
    }
    let test = crate::report::final_report::<B>(
        cfg,
        &run,
        &session.state,
        &mut data,
        &device,
        opts.variants,
    )?;
    write_run_files(cfg, &run, config_yaml, weights, &data, &opts.device_name)?;
    Ok(Outcome {
        interrupted: false,
        epochs_run,
        already_done: false,
        test: Some(test),
    })
}

/// Stage 3: the resolved config, the model config and the provenance (`run.json`, with every
/// file skipped so far), all beside the checkpoints.
fn write_run_files(
    cfg: &TrainConfig,
    run: &RunDir,
    config_yaml: &str,
    weights: [f64; 2],
    data: &Data,
    device: &str,
) -> Result<()> {
    std::fs::create_dir_all(&run.root)
        .with_context(|| format!("cannot create {}", run.root.shown()))?;
    write_atomic(
        &run.root.join(checkpoint::CONFIG_FILE),
        config_yaml.as_bytes(),
    )?;
    write_atomic(
        &run.root.join(checkpoint::MODEL_CONFIG_FILE),
        cfg.model.to_string().as_bytes(),
    )?;
    let manifest_path = cfg.data.root.join(manifest::FILE_NAME);
    let manifest_sha = manifest::sha256_file(&manifest_path)
        .unwrap_or_else(|_| "unknown (no manifest.csv)".into());
    let file = checkpoint::RunFile {
        trainer: env!("CARGO_PKG_VERSION").into(),
        burn: contract::BURN_VERSION.into(),
        config_sha256: manifest::sha256_hex(config_yaml.as_bytes()),
        dataset_manifest_sha256: manifest_sha,
        dataset_root: cfg.data.root.shown().to_string(),
        split_sizes: checkpoint::SplitSizes {
            training: data.train.len(),
            validation: data.val.len(),
            testing: data.test.len(),
        },
        splits: data.provenance.clone(),
        class_weights: weights,
        preprocess: cfg.preprocess(),
        device: device.into(),
        epochs: cfg.train.epochs,
        skipped: data.skipped.to_json(),
    };
    write_atomic(
        &run.root.join(checkpoint::RUN_FILE),
        serde_json::to_string_pretty(&file)?.as_bytes(),
    )
}

/// The model, its optimizer and where the run is: built fresh or restored from a checkpoint.
pub struct Session<B: AutodiffBackend> {
    pub model: CancerNet<B>,
    pub optim: Optim<B>,
    pub state: State,
    pub history: Vec<EpochMetrics>,
    pub timing: Vec<EpochTiming>,
}

impl<B: AutodiffBackend> Session<B> {
    /// Stage 4: fresh weights from the seed, or the checkpoint `start` names.
    fn start(cfg: &TrainConfig, run: &RunDir, start: &Start, device: &B::Device) -> Result<Self> {
        B::seed(device, cfg.train.seed);
        let mut s = Session {
            model: cfg.model.init_seeded(cfg.train.seed, device),
            optim: Optim::new(&cfg.train),
            state: State::new(),
            history: Vec::new(),
            timing: Vec::new(),
        };
        if let Start::After(epoch, dir) = start {
            s.model = run.load_model(s.model, dir, device)?;
            s.optim = run.load_optim(s.optim, dir, device)?;
            s.state = RunDir::read_state(dir)?;
            s.history = run.read_metrics(dir, *epoch)?;
            s.timing = run.read_timing(dir, *epoch)?;
            // A stop between the checkpoint and the run-level files leaves those behind.
            run.write_metrics(&s.history)?;
            run.write_timing(&s.timing)?;
            plot_history(run, &s.history)?;
            // A stop between an epoch's checkpoint and its `best/` copy leaves `best/` behind.
            let best_on_disk = RunDir::read_state(&run.best_dir()).map(|s| s.epoch).ok();
            if best_is_stale(s.state.best_epoch, best_on_disk) {
                run.mark_best(&run.epoch_dir(s.state.best_epoch))?;
            }
            println!("resuming after epoch {epoch} (step {})", s.state.step);
        }
        Ok(s)
    }
}

/// Whether `best/` must be copied again on a resume: the state names a best epoch (0: none yet)
/// that `best/` (holding `on_disk`, or nothing) is not.
fn best_is_stale(best_epoch: usize, on_disk: Option<usize>) -> bool {
    best_epoch > 0 && on_disk != Some(best_epoch)
}

/// The seeds epoch `epoch` of a run seeded `seed` draws from: burn's (dropout) and the
/// augmentation stream's. Each (seed, epoch) has its own, so a resumed run repeats a straight one
/// and no two epochs see the same dropout masks or augmentations.
fn epoch_seeds(seed: u64, epoch: usize) -> (u64, u64) {
    let epoch = epoch as u64;
    (
        seed ^ epoch.wrapping_mul(0x9E37_79B9),
        seed ^ 0xA06 ^ epoch << 32,
    )
}

/// What one epoch of training measured.
struct Trained {
    epoch: usize,
    loss: f64,
    accuracy: f64,
    learning_rate: f64,
    images_per_second: f64,
    started: Instant,
}

/// Stage 5: one pass over the training split (augmented, shuffled from the epoch's own seeds).
fn train_epoch<B: AutodiffBackend>(
    cfg: &TrainConfig,
    session: &mut Session<B>,
    data: &mut Data,
    epoch: usize,
    weights: [f64; 2],
    opts: &Options,
    device: &B::Device,
) -> Result<Trained> {
    let started = Instant::now();
    let size = cfg.model.input_size;
    let steps = data
        .train
        .len()
        .div_ceil(cfg.train.batch_size)
        .min(cfg.train.max_steps_per_epoch.unwrap_or(usize::MAX));
    let (burn_seed, aug_seed) = epoch_seeds(cfg.train.seed, epoch);
    B::seed(device, burn_seed);
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    Rng::derive(cfg.train.seed, epoch as u64).shuffle(&mut order);
    let bar = progress(
        steps as u64,
        &format!("epoch {epoch}/{}", cfg.train.epochs),
        opts.quiet,
    );
    let mut tally = Tally::default();
    let total_steps = steps.saturating_mul(cfg.train.epochs);
    let mut lr = cfg.learning_rate_at(session.state.step, total_steps);
    let batches = data
        .loader
        .batches(&data.train, order, Some(cfg.augment), aug_seed, Some(steps));
    for (k, batch) in batches.into_iter().enumerate() {
        data.skipped.add("training", &batch.failed)?;
        if batch.is_empty() {
            continue;
        }
        lr = cfg.learning_rate_at(session.state.step, total_steps);
        let (loss_value, right) = step(session, &batch, (size, weights, lr), (epoch, k), device)?;
        tally.add(loss_value, right, batch.len());
        bar.set_message(format!(
            "loss {:.4} acc {:.4} {:.0} img/s",
            tally.loss(),
            tally.accuracy(),
            tally.per_second(started.elapsed().as_secs_f64())
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Trained {
        epoch,
        loss: tally.loss(),
        accuracy: tally.accuracy(),
        learning_rate: lr,
        images_per_second: tally.per_second(started.elapsed().as_secs_f64()),
        started,
    })
}

/// One optimizer step on `batch` (batch `k` of `epoch`) at learning rate `lr`: the batch's loss,
/// and how many of its patches the model got right before the step.
fn step<B: AutodiffBackend>(
    session: &mut Session<B>,
    batch: &Batch,
    (size, weights, lr): (usize, [f64; 2], f64),
    (epoch, k): (usize, usize),
    device: &B::Device,
) -> Result<(f64, usize)> {
    let logits = session
        .model
        .forward(images_tensor::<B>(batch, size, device));
    let loss = weighted_loss(logits.clone(), &batch.labels, weights, device);
    let loss_value: f64 = loss.clone().into_scalar().elem();
    finite_loss(loss_value, epoch, session.state.step, k)?;
    let grads = GradientsParams::from_grads(loss.backward(), &session.model);
    session.model = session.optim.step(lr, session.model.clone(), grads);
    session.state.step += 1;
    let pred: Vec<i64> = logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .into_vec()
        .expect("argmax");
    Ok((loss_value, right_answers(&pred, &batch.labels)))
}

/// How many of the predicted classes are the labels.
fn right_answers(predicted: &[i64], labels: &[u8]) -> usize {
    predicted
        .iter()
        .zip(labels)
        .filter(|(p, y)| **p == **y as i64)
        .count()
}

/// An epoch's running totals over its training batches.
#[derive(Default)]
struct Tally {
    loss_sum: f64,
    right: usize,
    seen: usize,
}

impl Tally {
    /// A batch of `n` patches with mean loss `loss`, `right` of them predicted right.
    fn add(&mut self, loss: f64, right: usize, n: usize) {
        self.loss_sum += loss * n as f64;
        self.right += right;
        self.seen += n;
    }

    /// The mean loss per patch so far (0 before any).
    fn loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    fn accuracy(&self) -> f64 {
        self.right as f64 / self.seen.max(1) as f64
    }

    fn per_second(&self, seconds: f64) -> f64 {
        self.seen as f64 / seconds
    }
}

/// A loss that is not a number stops the run, saying where (the checkpoints so far stay).
pub fn finite_loss(loss: f64, epoch: usize, step: usize, batch: usize) -> Result<()> {
    if !loss.is_finite() {
        bail!(
            "loss became {loss} at epoch {epoch}, step {step} (batch {batch}); lower \
             train.learning_rate (or train.class_weights, when set by hand)"
        );
    }
    Ok(())
}

/// Stage 6: validation, the epoch's line, metrics.csv and timing.csv, the plot, the checkpoint
/// (and `best/` when validation loss improved). Returns whether to stop early.
fn end_epoch<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run: &RunDir,
    session: &mut Session<B>,
    data: &mut Data,
    trained: Trained,
    device: &B::Device,
) -> Result<bool> {
    let epoch = trained.epoch;
    let inner = session.model.valid();
    let val = evaluate(&inner, &data.val, &data.loader, device, false);
    data.skipped.add("validation", &val.failed)?;
    let report = Report::new(&val.labels, &val.probs, 0.5);
    let val_loss = val.loss;
    let metrics = EpochMetrics {
        epoch,
        step: session.state.step,
        learning_rate: trained.learning_rate,
        train_loss: trained.loss,
        train_accuracy: trained.accuracy,
        val_loss,
        val_accuracy: report.accuracy,
        val_sensitivity: report.sensitivity,
        val_specificity: report.specificity,
        val_roc_auc: report.roc_auc.unwrap_or(f64::NAN),
        skipped_images: data.skipped.len(),
    };
    let timing = EpochTiming {
        epoch,
        seconds: trained.started.elapsed().as_secs_f64(),
        train_images_per_second: trained.images_per_second,
    };
    println!(
        "epoch {epoch}/{}: loss {:.4} acc {:.4} | val_loss {:.4} val_acc {:.4} sens {:.4} spec {:.4} auc {:.4} | {:.0} img/s, {:.1}s",
        cfg.train.epochs,
        metrics.train_loss,
        metrics.train_accuracy,
        metrics.val_loss,
        metrics.val_accuracy,
        metrics.val_sensitivity,
        metrics.val_specificity,
        metrics.val_roc_auc,
        timing.train_images_per_second,
        timing.seconds
    );
    let (improved, stop_early) = session.state.record(
        epoch,
        (val_loss, report.accuracy),
        cfg.train.epochs,
        cfg.train.early_stopping,
    );
    session.history.push(metrics);
    session.timing.push(timing);
    let dir = run.save_epoch(
        &session.model,
        &session.optim,
        &session.state,
        (&session.history, &session.timing),
    )?;
    if improved {
        run.mark_best(&dir)?;
    }
    run.write_metrics(&session.history)?;
    run.write_timing(&session.timing)?;
    plot_history(run, &session.history)?;
    Ok(stop_early)
}

fn plot_history(run: &RunDir, history: &[EpochMetrics]) -> Result<()> {
    let pts = |f: fn(&EpochMetrics) -> f64| {
        history
            .iter()
            .map(|m| (m.epoch as f64, f(m)))
            .collect::<Vec<_>>()
    };
    let series = |name, f: fn(&EpochMetrics) -> f64, (r, g, b)| Series {
        name,
        points: pts(f),
        color: RGBColor(r, g, b),
    };
    line_chart(
        &run.root.join(checkpoint::PLOT_FILE),
        "Training loss and accuracy on the IDC dataset",
        "epoch",
        "loss / accuracy",
        &[
            series("train_loss", |m| m.train_loss, (31, 119, 180)),
            series("val_loss", |m| m.val_loss, (255, 127, 14)),
            series("train_acc", |m| m.train_accuracy, (44, 160, 44)),
            series("val_acc", |m| m.val_accuracy, (214, 39, 40)),
        ],
        None,
    )
}

fn progress(len: u64, what: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        common::cli::progress_bar(len, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn an_epochs_loss_and_accuracy_are_per_patch_over_its_batches() {
        assert_eq!(right_answers(&[1, 0, 1, 1], &[1, 1, 1, 1]), 3);
        let mut t = Tally::default();
        assert_eq!((t.loss(), t.accuracy()), (0.0, 0.0));
        t.add(0.5, 3, 4);
        t.add(2.0, 0, 2); // a smaller batch weighs less
        assert!((t.loss() - 1.0).abs() < 1e-12, "{}", t.loss());
        assert!((t.accuracy() - 0.5).abs() < 1e-12, "{}", t.accuracy());
        assert!((t.per_second(1.5) - 4.0).abs() < 1e-12);
    }

    #[test]
    fn best_is_copied_again_only_when_the_state_names_another() {
        assert!(
            !best_is_stale(0, None),
            "no best epoch yet: nothing to copy"
        );
        assert!(!best_is_stale(3, Some(3)), "best/ already holds epoch 3");
        assert!(
            best_is_stale(3, Some(2)),
            "the stop came before best/ was updated"
        );
        assert!(best_is_stale(3, None), "best/ missing or unreadable");
    }

    #[test]
    fn every_seed_and_epoch_draws_its_own_numbers() {
        // Seeds near the constants mixed in, and the extremes, where a weaker mixing collides.
        let seeds = [0, 1, 2, 42, 0xA06, 0x9E37_79B9, u64::MAX];
        let (mut burn, mut aug) = (HashSet::new(), HashSet::new());
        for seed in seeds {
            for epoch in 1..=100 {
                let (b, a) = epoch_seeds(seed, epoch);
                assert!(
                    burn.insert(b),
                    "burn's seed repeats at seed {seed}, epoch {epoch}"
                );
                assert!(
                    aug.insert(a),
                    "the augmentation seed repeats at seed {seed}, epoch {epoch}"
                );
            }
        }
        assert_eq!(epoch_seeds(42, 7), epoch_seeds(42, 7));
    }

    #[test]
    fn a_loss_that_is_not_a_number_stops_the_run_naming_where() {
        assert!(finite_loss(0.7, 1, 0, 0).is_ok());
        assert!(finite_loss(1e30, 1, 0, 0).is_ok());
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = finite_loss(bad, 3, 1234, 56).unwrap_err().to_string();
            assert!(
                err.contains("epoch 3, step 1234 (batch 56)")
                    && err.contains("train.learning_rate"),
                "{err}"
            );
        }
    }
}
