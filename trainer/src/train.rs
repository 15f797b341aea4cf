//! The training loop, in named stages: decide where a run starts (`plan_start`), open the data
//! (`Data`), write the run's files, build or restore the model and optimizer (`Session`), then per
//! epoch train (`train_epoch`), validate and checkpoint (`end_epoch`), and finally report on the
//! testing split with the best checkpoint (`final_report`). The device is a type parameter: the
//! CPU and GPU backends share every line.

use crate::checkpoint::{self, EpochMetrics, EpochTiming, RunDir, State};
use crate::config::{AutoWeights, CheckpointChoice, ClassWeights, TrainConfig};
use crate::data::{Batch, Loader, Split};
use crate::optim::Optim;
use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use datasets::Shown;
use datasets::fsutil::write_atomic;
use datasets::manifest;
use datasets::plot::{Series, line_chart};
use datasets::report::Report;
use datasets::rng::Rng;
use models::CancerNet;
use plotters::style::RGBColor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// A model's predictions over a split (eval mode).
#[derive(Default, Clone)]
pub struct Evaluated {
    pub labels: Vec<u8>,
    /// Probability of IDC per image.
    pub probs: Vec<f32>,
    /// Each image's index in the split (files that failed to decode are missing).
    pub indices: Vec<usize>,
    /// Mean unweighted cross-entropy.
    pub loss: f64,
    pub failed: Vec<datasets::Problem>,
}

/// Runs `model` over `split`, averaging the eight flips and quarter turns of each patch when `tta`.
pub fn evaluate<B: Backend>(
    model: &CancerNet<B>,
    split: &Arc<Split>,
    loader: &Loader,
    device: &B::Device,
    tta: bool,
) -> Evaluated {
    evaluate_some(
        model,
        split,
        (0..split.len()).collect(),
        loader,
        device,
        tta,
    )
}

/// `evaluate` over the patches `order` of `split`.
fn evaluate_some<B: Backend>(
    model: &CancerNet<B>,
    split: &Arc<Split>,
    order: Vec<usize>,
    loader: &Loader,
    device: &B::Device,
    tta: bool,
) -> Evaluated {
    let size = loader.pre.size as usize;
    let mut e = Evaluated::default();
    for batch in loader.batches(split, order, None, 0, None) {
        e.failed.extend(batch.failed.iter().cloned());
        if batch.is_empty() {
            continue;
        }
        let p = model.predict(images_tensor::<B>(&batch, size, device), tta);
        let p: Vec<f32> = p
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("f32 probabilities");
        for (i, &y) in batch.labels.iter().enumerate() {
            e.loss -= (p[i * 2 + y as usize] as f64).max(1e-7).ln();
            e.probs.push(p[i * 2 + 1]);
        }
        e.labels.extend_from_slice(&batch.labels);
        e.indices.extend_from_slice(&batch.indices);
    }
    e.loss /= e.labels.len().max(1) as f64;
    e
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

/// The three splits, the loader that feeds them, and every file skipped so far.
pub struct Data {
    pub loader: Loader,
    pub train: Arc<Split>,
    pub val: Arc<Split>,
    pub test: Arc<Split>,
    pub skipped: SkipLog,
    /// Which patients are in which split, when the splits were made from a list (cross-validation).
    pub provenance: serde_json::Value,
}

impl Data {
    /// Stage 2: opens the split folders under `data.root` (and caches them when asked).
    pub fn open(cfg: &TrainConfig, opts: &Options) -> Result<Data> {
        let splits = [
            Split::open(&cfg.data.root, "training", true)?,
            Split::open(&cfg.data.root, "validation", false)?,
            Split::open(&cfg.data.root, "testing", false)?,
        ];
        Data::new(cfg, opts, splits, serde_json::Value::Null)
    }

    /// The data of three splits made elsewhere; their scan problems are logged (an error under
    /// `strict`).
    pub fn new(
        cfg: &TrainConfig,
        opts: &Options,
        splits: [Split; 3],
        provenance: serde_json::Value,
    ) -> Result<Data> {
        let pre = cfg.preprocess();
        let workers = datasets::cli::threads_or_cores(cfg.data.workers);
        let loader = Loader::new(pre, cfg.train.batch_size, workers)?;
        let mut skipped = SkipLog::new(opts.strict);
        for s in &splits {
            skipped.add(&s.name, &s.problems)?;
        }
        let [mut train, mut val, mut test] = splits;
        if cfg.data.cache {
            let t = Instant::now();
            for s in [&mut train, &mut val, &mut test] {
                s.fill_cache(&pre, &loader.pool);
            }
            println!(
                "cached {} patches in memory in {:.1}s",
                train.len() + val.len() + test.len(),
                t.elapsed().as_secs_f64()
            );
        }
        Ok(Data {
            loader,
            train: Arc::new(train),
            val: Arc::new(val),
            test: Arc::new(test),
            skipped,
            provenance,
        })
    }
}

/// Every file skipped in a run (by its path, once): printed as it is found, and kept for
/// `run.json` and the final report. Under `strict` the first one is an error.
#[derive(Debug, Default)]
pub struct SkipLog {
    strict: bool,
    entries: BTreeMap<PathBuf, (String, String)>,
}

impl SkipLog {
    pub fn new(strict: bool) -> SkipLog {
        SkipLog {
            strict,
            entries: BTreeMap::new(),
        }
    }

    /// Records problems met in `split`; returns whether any was new.
    pub fn add(&mut self, split: &str, problems: &[datasets::Problem]) -> Result<bool> {
        let mut new = false;
        for p in problems {
            if self.strict {
                bail!("{split}: cannot use {p} (--strict)");
            }
            if !self.entries.contains_key(&p.path) {
                eprintln!("warning: {split}: skipped {p}");
                self.entries
                    .insert(p.path.clone(), (split.to_string(), p.reason.clone()));
                new = true;
            }
        }
        Ok(new)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every skipped file as JSON: split, path (losslessly escaped), reason.
    pub fn to_json(&self) -> serde_json::Value {
        self.entries
            .iter()
            .map(|(path, (split, reason))| {
                serde_json::json!({ "split": split, "path": path.shown(), "reason": reason })
            })
            .collect()
    }
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
    let test = final_report::<B>(cfg, &run, &session.state, &mut data, &device, opts.variants)?;
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
        cfg.model_config().to_string().as_bytes(),
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
            model: cfg.model_config().init_seeded(cfg.train.seed, device),
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
            if s.state.best_epoch > 0 && best_on_disk != Some(s.state.best_epoch) {
                run.mark_best(&run.epoch_dir(s.state.best_epoch))?;
            }
            println!("resuming after epoch {epoch} (step {})", s.state.step);
        }
        Ok(s)
    }
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
    // Every epoch draws from its own seeds, so a resumed run repeats an uninterrupted one.
    B::seed(
        device,
        cfg.train.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9),
    );
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    Rng::derive(cfg.train.seed, epoch as u64).shuffle(&mut order);
    let bar = progress(
        steps as u64,
        &format!("epoch {epoch}/{}", cfg.train.epochs),
        opts.quiet,
    );
    let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
    let aug_seed = cfg.train.seed ^ 0xA06 ^ (epoch as u64) << 32;
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
        let logits = session
            .model
            .forward(images_tensor::<B>(&batch, size, device));
        let loss = weighted_loss(logits.clone(), &batch.labels, weights, device);
        let loss_value: f64 = loss.clone().into_scalar().elem();
        finite_loss(loss_value, epoch, session.state.step, k)?;
        let grads = GradientsParams::from_grads(loss.backward(), &session.model);
        lr = cfg.learning_rate_at(session.state.step, total_steps);
        session.model = session.optim.step(lr, session.model.clone(), grads);
        session.state.step += 1;
        let pred: Vec<i64> = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .into_vec()
            .expect("argmax");
        correct += pred
            .iter()
            .zip(&batch.labels)
            .filter(|(p, y)| **p == **y as i64)
            .count();
        loss_sum += loss_value * batch.len() as f64;
        seen += batch.len();
        bar.set_message(format!(
            "loss {:.4} acc {:.4} {:.0} img/s",
            loss_sum / seen as f64,
            correct as f64 / seen as f64,
            seen as f64 / started.elapsed().as_secs_f64()
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Trained {
        epoch,
        loss: loss_sum / seen.max(1) as f64,
        accuracy: correct as f64 / seen.max(1) as f64,
        learning_rate: lr,
        images_per_second: seen as f64 / started.elapsed().as_secs_f64(),
        started,
    })
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

/// Stage 7: the checkpoint `eval.checkpoint` names (best by validation loss, the last, or the
/// mean of the last epochs, written to `checkpoints/average/`; with `eval.precise_bn` its
/// BatchNorm statistics recomputed, written to `checkpoints/precise-bn/`) on
/// held-out patients, the same report as `runtime eval`, at the threshold `eval.threshold` gives
/// (chosen on the validation split for a rule; written to `threshold.json` for the exporter), with
/// test-time augmentation when `eval.tta`. With `variants`, also every combination of TTA on/off
/// and threshold 0.5 / max-BAC for that checkpoint, and the last epoch's model and the means of
/// the last epochs' weights with and without TTA (cross-validation's ablation, one training).
fn final_report<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run: &RunDir,
    state: &State,
    data: &mut Data,
    device: &B::Device,
    variants: bool,
) -> Result<Report> {
    let which = cfg.eval.checkpoint;
    let model_cfg = cfg.model_config();
    // Loaded on the autodiff backend, which recomputing BatchNorm statistics needs.
    let load = |dir: &Path| run.load_model(model_cfg.init::<B>(device), dir, device);
    let (last, last_dir) = run.latest().context("the run has no checkpoints")?;
    let (epoch, model, mut what, source) = match which {
        CheckpointChoice::Best => (
            state.best_epoch,
            load(&run.best_dir())?,
            String::new(),
            run.best_dir(),
        ),
        CheckpointChoice::Last => (last, load(&last_dir)?, String::new(), last_dir.clone()),
        CheckpointChoice::Average => {
            let n = cfg.eval.average_epochs;
            let (mean, first) = run.mean_of_last::<B>(&model_cfg, last, n, device)?;
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
    let tta = cfg.eval.tta;
    let mut runs: BTreeMap<bool, (Evaluated, Evaluated)> = BTreeMap::new();
    for t in [tta, !tta].into_iter().take(if variants { 2 } else { 1 }) {
        let val = evaluate(&model, &data.val, &data.loader, device, t);
        let test = evaluate(&model, &data.test, &data.loader, device, t);
        data.skipped.add("validation", &val.failed)?;
        data.skipped.add("testing", &test.failed)?;
        runs.insert(t, (val, test));
    }
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
    println!(
        "\ntesting split, {} checkpoint (epoch {epoch}{what}), loss {:.4}{}{}, threshold {:.4} ({}):\n{report}",
        which.name(),
        test.loss,
        if tta {
            ", test-time augmentation (8 views)"
        } else {
            ""
        },
        cfg.eval.context.map_or(String::new(), |w| format!(
            ", neighbour context (weight {w})"
        )),
        chosen.threshold,
        chosen.source
    );
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
    let mut json = serde_json::json!({
        "split": "testing",
        "checkpoint": which.name(),
        "checkpoint_epoch": epoch,
        "precise_bn": cfg.eval.precise_bn,
        "loss": test.loss,
        "tta": tta,
        "context": cfg.eval.context,
        "threshold": chosen,
        "report": report,
        "patients": patient_summary(&data.test, &test),
        "skipped": test_skipped,
    });
    if variants {
        // One entry per way of evaluating: the threshold, the report at it, the patients (whose
        // per-patient ranking does not depend on the threshold).
        let variant = |test: &Evaluated, threshold: f64, patients: &serde_json::Value| {
            serde_json::json!({
                "threshold": threshold,
                "report": Report::new(&test.labels, &test.probs, threshold),
                "patients": patients,
            })
        };
        let view = |tta: bool| if tta { "tta" } else { "plain" };
        let mut all = serde_json::Map::new();
        for (t, (val, test)) in &runs {
            let max_bac =
                datasets::report::threshold_max_bac(&val.labels, &val.probs).unwrap_or(0.5);
            let patients = patient_summary(&data.test, test);
            for (name, threshold) in [("0.5", 0.5), ("max_bac", max_bac)] {
                all.insert(
                    format!("{}@{name}", view(*t)),
                    variant(test, threshold, &patients),
                );
            }
        }
        // With neighbour context, as `runtime eval --context` computes it.
        for (t, (_, test)) in &runs {
            let test = with_context(&data.test, test, datasets::context::DEFAULT_WEIGHT);
            all.insert(
                format!("{}-context@0.5", view(*t)),
                variant(&test, 0.5, &patient_summary(&data.test, &test)),
            );
        }
        // The last epoch's model instead of the best by validation loss (which a small
        // validation split makes noisy), the means of the last n epochs' weights, and the last
        // and the mean of 10 with BatchNorm statistics recomputed on the training split.
        let last_model = load(&last_dir)?;
        let mut models = vec![("last".to_string(), last_model.valid())];
        let mut avg10 = None;
        for n in AVERAGED.into_iter().filter(|&n| n <= last) {
            let (mean, _) = run.mean_of_last::<B>(&model_cfg, last, n, device)?;
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
            None => run.mean_of_last::<B>(&model_cfg, last, 10, device)?.0,
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
            e["epoch"] = last.into();
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
        json["variants"] = all.into();
    }
    write_atomic(
        &run.root.join(checkpoint::TEST_REPORT_FILE),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    Ok(report)
}

/// Writes `model`, derived from the checkpoint `source` (an average, recomputed statistics), to
/// `dir` with `source`'s state and the model's own validation loss and accuracy (the exporter
/// writes them into the ONNX metadata).
fn write_derived<B: Backend>(
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

/// `model` with precise BatchNorm statistics (`CancerNet::precise_batch_norm`) from one
/// unaugmented pass over the training split, shuffled and batched as in training.
pub fn precise_bn<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model: CancerNet<B>,
    data: &Data,
    device: &B::Device,
) -> CancerNet<B> {
    let order = (0..data.train.len()).collect();
    bn_statistics_from(cfg, model, &data.train, order, &data.loader, device)
}

/// `model` with its BatchNorm statistics recomputed on the patches `order` of `split`, in a
/// seeded shuffle, batched as in training (files that fail are left out; evaluation reports them).
fn bn_statistics_from<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model: CancerNet<B>,
    split: &Arc<Split>,
    mut order: Vec<usize>,
    loader: &Loader,
    device: &B::Device,
) -> CancerNet<B> {
    // A stream no epoch's shuffle uses.
    Rng::derive(cfg.train.seed, u64::MAX).shuffle(&mut order);
    let size = cfg.model.input_size;
    let batches = loader
        .batches(split, order, None, 0, None)
        .into_iter()
        .filter(|batch| !batch.is_empty())
        .map(|batch| images_tensor::<B>(&batch, size, device));
    model.precise_batch_norm(batches)
}

/// Each patient of `split` evaluated by `model` with BatchNorm statistics recomputed on that
/// patient's own patches, without their labels (AdaBN, Li et al. 2016): the stain and scanner
/// shift between patients, taken out per patient in feature space. Without and with TTA.
fn evaluate_per_patient_bn<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model: &CancerNet<B>,
    split: &Arc<Split>,
    loader: &Loader,
    device: &B::Device,
) -> [Evaluated; 2] {
    let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in split.patients.iter().enumerate() {
        by.entry(p.as_str()).or_default().push(i);
    }
    let mut all = [Evaluated::default(), Evaluated::default()];
    for order in by.into_values() {
        let adapted =
            bn_statistics_from(cfg, model.clone(), split, order.clone(), loader, device).valid();
        for (all, tta) in all.iter_mut().zip([false, true]) {
            let e = evaluate_some(&adapted, split, order.clone(), loader, device, tta);
            let n = (all.labels.len(), e.labels.len());
            all.loss = (all.loss * n.0 as f64 + e.loss * n.1 as f64) / (n.0 + n.1).max(1) as f64;
            all.labels.extend(e.labels);
            all.probs.extend(e.probs);
            all.indices.extend(e.indices);
            all.failed.extend(e.failed);
        }
    }
    all
}

/// The variants' weight averages: the mean of the last n epochs' checkpoints, for each n.
pub const AVERAGED: [usize; 3] = [5, 10, 20];

/// A threshold and where it came from. One chosen on validation holds for the model it was
/// chosen with (the configured checkpoint, averaged or not, with precise BatchNorm or not, with or
/// without TTA and neighbour context); a fixed one for any.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChosenThreshold {
    pub threshold: f64,
    pub source: String,
    /// Fixed in the config, not chosen on a model's predictions.
    #[serde(default)]
    pub fixed: bool,
    /// The evaluation it was chosen with (its fields sit beside these in `threshold.json`).
    #[serde(flatten)]
    pub chosen_with: Evaluation,
}

/// How a run's model is evaluated: which model, and which views and context it sees. Every field
/// defaults, so a `threshold.json` written before a field existed still loads.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// The checkpoint's epoch.
    #[serde(default)]
    pub epoch: usize,
    #[serde(default)]
    pub tta: bool,
    /// The average of the epochs up to `epoch` (`eval.checkpoint: average`).
    #[serde(default)]
    pub averaged: bool,
    /// BatchNorm statistics recomputed on the training split (`eval.precise_bn`).
    #[serde(default)]
    pub precise_bn: bool,
    /// Neighbour context at this weight (`eval.context`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<f64>,
}

impl Evaluation {
    /// "epoch 40 (averaged, precise BatchNorm) with TTA and neighbour context 0.5".
    pub fn in_words(&self) -> String {
        let how: Vec<&str> = [
            (self.averaged, "averaged"),
            (self.precise_bn, "precise BatchNorm"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let with: Vec<String> = [
            self.tta.then(|| "TTA".to_string()),
            self.context.map(|w| format!("neighbour context {w}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        format!(
            "epoch {}{}{}",
            self.epoch,
            if how.is_empty() {
                String::new()
            } else {
                format!(" ({})", how.join(", "))
            },
            if with.is_empty() {
                String::new()
            } else {
                format!(" with {}", with.join(" and "))
            }
        )
    }
}

impl ChosenThreshold {
    /// What it holds for, as the model's metadata says it (`threshold.context`).
    pub fn chosen_for(&self) -> contract::ChosenFor {
        contract::ChosenFor::new(self.fixed, self.chosen_with.context)
    }

    /// Whether it holds for evaluation `e`: a fixed one for any; one chosen on predictions for
    /// the same model and views, and the context `ChosenFor` says.
    pub fn holds_for(&self, e: &Evaluation) -> bool {
        let same_model = Evaluation {
            context: e.context,
            ..self.chosen_with
        } == *e;
        self.chosen_for().holds_for(e.context) && (self.fixed || same_model)
    }
}

fn choose_threshold(cfg: &TrainConfig, val: &Evaluated, epoch: usize) -> ChosenThreshold {
    use crate::config::{Threshold, ThresholdRule};
    use datasets::report::{threshold_for_sensitivity, threshold_max_bac};
    let averaged = cfg.eval.checkpoint == crate::config::CheckpointChoice::Average;
    let fixed = |threshold: f64, source: String| ChosenThreshold {
        threshold,
        source,
        fixed: true,
        chosen_with: Evaluation {
            epoch,
            tta: cfg.eval.tta,
            averaged,
            precise_bn: cfg.eval.precise_bn,
            context: cfg.eval.context,
        },
    };
    let (rule, chosen) = match cfg.eval.threshold {
        Threshold::Fixed(t) => {
            return fixed(t, "fixed in the trainer config (eval.threshold)".into());
        }
        Threshold::Rule(ThresholdRule::MaxBac) => (
            "highest balanced accuracy".to_string(),
            threshold_max_bac(&val.labels, &val.probs),
        ),
        Threshold::Rule(ThresholdRule::Sensitivity) => (
            format!("sensitivity >= {}", cfg.eval.target_sensitivity),
            threshold_for_sensitivity(&val.labels, &val.probs, cfg.eval.target_sensitivity),
        ),
    };
    match chosen {
        Some(t) => {
            let chosen = fixed(
                t,
                format!(
                    "{rule} on the validation split ({} patches)",
                    val.labels.len()
                ),
            );
            ChosenThreshold {
                source: format!("{}, {}", chosen.source, chosen.chosen_with.in_words()),
                fixed: false,
                ..chosen
            }
        }
        None => fixed(
            0.5,
            format!("0.5: the validation split has one class only, so {rule} cannot be chosen"),
        ),
    }
}

/// `e` with neighbour context (`datasets::context` at `weight`): each patch's log-odds
/// averaged with those of its slide-grid neighbours in the split, named as `runtime` names them.
fn with_context(split: &Split, e: &Evaluated, weight: f64) -> Evaluated {
    let names: Vec<_> = e
        .indices
        .iter()
        .map(|&i| datasets::scan::patch_name(&split.paths[i]).ok())
        .collect();
    let names: Vec<_> = names.iter().map(Option::as_ref).collect();
    Evaluated {
        probs: datasets::context::smooth(&names, &e.probs, weight).probs,
        labels: e.labels.clone(),
        indices: e.indices.clone(),
        loss: e.loss,
        failed: e.failed.clone(),
    }
}

/// Per-patient ranking quality: ROC AUC within each patient that has both classes, and the
/// median of those (the guide's "each patient is ranked well, levels shift between patients").
fn patient_summary(split: &Split, e: &Evaluated) -> serde_json::Value {
    let mut by: BTreeMap<&str, (Vec<u8>, Vec<f32>)> = BTreeMap::new();
    for ((&i, &y), &p) in e.indices.iter().zip(&e.labels).zip(&e.probs) {
        let entry = by.entry(split.patients[i].as_str()).or_default();
        entry.0.push(y);
        entry.1.push(p);
    }
    let mut aucs: Vec<f64> = by
        .values()
        .filter_map(|(labels, probs)| datasets::report::roc_auc(labels, probs))
        .collect();
    aucs.sort_by(f64::total_cmp);
    let median = match aucs.len() {
        0 => None,
        n if n % 2 == 1 => Some(aucs[n / 2]),
        n => Some((aucs[n / 2 - 1] + aucs[n / 2]) / 2.0),
    };
    serde_json::json!({ "patients": by.len(), "with_both_classes": aucs.len(), "median_roc_auc": median })
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
        datasets::cli::progress_bar(len, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `threshold.json` keeps its layout (the evaluation's fields beside the threshold's, in
    /// the order the trainer wrote before), and a file from before `context` existed loads.
    #[test]
    fn threshold_json_layout_is_stable() {
        let json = r#"{
  "threshold": 0.5,
  "source": "fixed in the trainer config (eval.threshold)",
  "fixed": true,
  "epoch": 40,
  "tta": true,
  "averaged": true,
  "precise_bn": true,
  "context": 0.5
}"#;
        let t: ChosenThreshold = serde_json::from_str(json).unwrap();
        assert_eq!(t.chosen_with.context, Some(0.5));
        assert_eq!(serde_json::to_string_pretty(&t).unwrap(), json);
        let old = r#"{"threshold": 0.3, "source": "max_bac", "epoch": 2, "averaged": true}"#;
        let t: ChosenThreshold = serde_json::from_str(old).unwrap();
        let want = Evaluation {
            epoch: 2,
            averaged: true,
            ..Evaluation::default()
        };
        assert!(!t.fixed && t.chosen_with == want);
        let json = serde_json::to_string(&t).unwrap();
        assert!(!json.contains("context"), "{json}");
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
