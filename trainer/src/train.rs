//! The training loop: epochs of augmented batches through CancerNet with Keras-style Adagrad and
//! class-weighted cross-entropy, validation after each epoch, checkpoints, metrics, plot, resume,
//! and a final report on the testing split with the best checkpoint.

use crate::checkpoint::{self, EpochMetrics, RunDir, State};
use crate::config::{AutoWeights, ClassWeights, TrainConfig};
use crate::data::{Batch, Loader, Split};
use crate::optim::KerasAdagrad;
use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::AutodiffBackend;
use datasets::fsutil::write_atomic;
use datasets::manifest;
use datasets::plot::{Series, line_chart};
use datasets::report::Report;
use datasets::rng::Rng;
use models::CancerNet;
use plotters::style::RGBColor;
use std::sync::Arc;
use std::time::Instant;

/// The final report on the testing split; its presence marks a complete run.
pub const TEST_REPORT: &str = "test_report.json";

/// How a run ended.
pub struct Outcome {
    /// Stopped by `stop_after` before the last epoch.
    pub interrupted: bool,
    pub epochs_run: usize,
    pub already_done: bool,
}

pub struct Options {
    pub resume: bool,
    pub force: bool,
    pub quiet: bool,
    /// Stop after this many epochs in this session (the run can be resumed).
    pub stop_after: Option<usize>,
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

/// Probabilities of IDC and the mean unweighted cross-entropy over a split (model in eval mode).
pub fn evaluate<B: Backend>(
    model: &CancerNet<B>,
    split: &Arc<Split>,
    loader: &Loader,
    device: &B::Device,
    skipped: &mut Vec<datasets::Problem>,
) -> (Vec<u8>, Vec<f32>, f64) {
    let size = loader.pre.size as usize;
    let (mut labels, mut probs, mut loss) = (Vec::new(), Vec::new(), 0.0);
    for batch in loader.batches(split, (0..split.len()).collect(), None, 0, None) {
        skipped.extend(batch.failed.iter().cloned());
        if batch.is_empty() {
            continue;
        }
        let p = softmax(model.forward(images_tensor::<B>(&batch, size, device)), 1);
        let p: Vec<f32> = p
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("f32 probabilities");
        for (i, &y) in batch.labels.iter().enumerate() {
            loss -= (p[i * 2 + y as usize] as f64).max(1e-7).ln();
            probs.push(p[i * 2 + 1]);
        }
        labels.extend_from_slice(&batch.labels);
    }
    let n = labels.len().max(1) as f64;
    (labels, probs, loss / n)
}

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
    let latest = run.latest();
    let mut start_epoch = 1;
    if let Some((epoch, dir)) = &latest {
        let old_config =
            std::fs::read_to_string(run.root.join(checkpoint::CONFIG_FILE)).unwrap_or_default();
        if opts.force {
            std::fs::remove_dir_all(run.checkpoints())?;
        } else if old_config != config_yaml {
            bail!(
                "{} holds a run with a different config; pass --force to start over there, or choose another output",
                run.root.display()
            );
        } else if RunDir::read_state(dir)?.finished {
            if run.root.join(TEST_REPORT).is_file() {
                return Ok(Outcome {
                    interrupted: false,
                    epochs_run: 0,
                    already_done: true,
                });
            }
            // Trained, but stopped before the final report: do just that.
            start_epoch = epoch + 1;
        } else if !opts.resume {
            bail!(
                "{} holds an unfinished run (last checkpoint: epoch {epoch}); pass --resume to continue it or --force to start over",
                run.root.display()
            );
        } else {
            start_epoch = epoch + 1;
        }
    } else if opts.resume {
        eprintln!(
            "note: nothing to resume in {}; starting from epoch 1",
            run.root.display()
        );
    }

    let pre = cfg.preprocess();
    let workers = datasets::cli::threads_or_cores(cfg.data.workers);
    let loader = Loader::new(pre, cfg.train.batch_size, workers)?;
    let mut train = Split::open(&cfg.data.root, "training", true)?;
    let mut val = Split::open(&cfg.data.root, "validation", false)?;
    let mut test = Split::open(&cfg.data.root, "testing", false)?;
    for s in [&train, &val, &test] {
        if !s.problems.is_empty() {
            eprintln!(
                "warning: {}: {} files skipped, e.g. {}",
                s.name,
                s.problems.len(),
                s.problems[0]
            );
        }
    }
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
    let weights = class_weights(cfg, train.class_counts());
    let (train, val, test) = (Arc::new(train), Arc::new(val), Arc::new(test));

    std::fs::create_dir_all(&run.root)
        .with_context(|| format!("cannot create {}", run.root.display()))?;
    write_atomic(
        &run.root.join(checkpoint::CONFIG_FILE),
        config_yaml.as_bytes(),
    )?;
    let model_cfg = cfg.model_config();
    write_atomic(
        &run.root.join(checkpoint::MODEL_CONFIG_FILE),
        model_cfg.to_string().as_bytes(),
    )?;
    write_provenance(
        cfg,
        &run,
        &config_yaml,
        weights,
        [train.len(), val.len(), test.len()],
    )?;
    let [c0, c1] = train.class_counts();
    println!(
        "training on {} patches ({c0} no IDC, {c1} IDC; class weights {:.3} / {:.3}), validating on {}, testing on {}; device {:?}",
        train.len(),
        weights[0],
        weights[1],
        val.len(),
        test.len(),
        device
    );

    B::seed(&device, cfg.train.seed);
    let mut model: CancerNet<B> = model_cfg.init(&device);
    let mut optim = KerasAdagrad {
        initial_accumulator: cfg.train.initial_accumulator,
        epsilon: cfg.train.epsilon,
    }
    .init::<B, CancerNet<B>>();
    let mut history = Vec::new();
    let mut state = State {
        epoch: 0,
        step: 0,
        best_epoch: 0,
        best_val_loss: f64::INFINITY,
        epochs_without_improvement: 0,
        finished: false,
        val_loss: f64::NAN,
        val_accuracy: f64::NAN,
    };
    if start_epoch > 1 {
        let (epoch, dir) = latest.clone().expect("checked above");
        model = run.load_model(model, &dir, &device)?;
        optim = run.load_optim(optim, &dir, &device)?;
        state = RunDir::read_state(&dir)?;
        history = run.read_metrics()?;
        history.retain(|m: &EpochMetrics| m.epoch <= epoch);
        // A stop between an epoch's checkpoint and its `best/` copy leaves `best/` behind.
        let best_on_disk = RunDir::read_state(&run.best_dir()).map(|s| s.epoch).ok();
        if state.best_epoch > 0 && best_on_disk != Some(state.best_epoch) {
            run.mark_best(&run.epoch_dir(state.best_epoch))?;
        }
        println!("resuming after epoch {epoch} (step {})", state.step);
    }

    let size = pre.size as usize;
    let steps_per_epoch = train
        .len()
        .div_ceil(cfg.train.batch_size)
        .min(cfg.train.max_steps_per_epoch.unwrap_or(usize::MAX));
    let mut epochs_run = 0;
    for epoch in start_epoch..=cfg.train.epochs {
        if state.finished {
            break; // stopped early before; only the final report is left
        }
        let started = Instant::now();
        // Every epoch draws from its own seeds, so a resumed run repeats an uninterrupted one.
        B::seed(
            &device,
            cfg.train.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9),
        );
        let mut order: Vec<usize> = (0..train.len()).collect();
        Rng::derive(cfg.train.seed, epoch as u64).shuffle(&mut order);
        let bar = progress(
            steps_per_epoch as u64,
            &format!("epoch {epoch}/{}", cfg.train.epochs),
            opts.quiet,
        );
        let (mut loss_sum, mut correct, mut seen, mut skipped) = (0.0, 0usize, 0usize, Vec::new());
        let aug_seed = cfg.train.seed ^ 0xA06 ^ (epoch as u64) << 32;
        let mut lr = cfg.learning_rate_at(state.step);
        for (k, batch) in loader
            .batches(
                &train,
                order,
                Some(cfg.augment),
                aug_seed,
                Some(steps_per_epoch),
            )
            .into_iter()
            .enumerate()
        {
            skipped.extend(batch.failed.iter().cloned());
            if batch.is_empty() {
                continue;
            }
            let logits = model.forward(images_tensor::<B>(&batch, size, &device));
            let loss = weighted_loss(logits.clone(), &batch.labels, weights, &device);
            let loss_value: f64 = loss.clone().into_scalar().elem();
            if !loss_value.is_finite() {
                bail!(
                    "loss became {loss_value} at epoch {epoch}, step {} (batch {k}); lower train.learning_rate",
                    state.step
                );
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            lr = cfg.learning_rate_at(state.step);
            model = optim.step(lr, model, grads);
            state.step += 1;
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
        let train_secs = started.elapsed().as_secs_f64();
        let inner = model.valid();
        let (labels, probs, val_loss) = evaluate(&inner, &val, &loader, &device, &mut skipped);
        let report = Report::new(&labels, &probs, 0.5);
        let metrics = EpochMetrics {
            epoch,
            step: state.step,
            learning_rate: lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_loss,
            val_accuracy: report.accuracy,
            val_sensitivity: report.sensitivity,
            val_specificity: report.specificity,
            val_roc_auc: report.roc_auc.unwrap_or(f64::NAN),
            seconds: started.elapsed().as_secs_f64(),
            train_images_per_second: seen as f64 / train_secs,
            skipped_images: skipped.len(),
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
            metrics.train_images_per_second,
            metrics.seconds
        );
        for p in skipped.iter().take(5) {
            eprintln!("warning: skipped {p}");
        }
        let improved = val_loss < state.best_val_loss;
        if improved {
            state.best_val_loss = val_loss;
            state.best_epoch = epoch;
            state.epochs_without_improvement = 0;
        } else {
            state.epochs_without_improvement += 1;
        }
        state.epoch = epoch;
        state.val_loss = val_loss;
        state.val_accuracy = report.accuracy;
        let stop_early = cfg
            .train
            .early_stopping
            .is_some_and(|p| state.epochs_without_improvement >= p);
        state.finished = epoch == cfg.train.epochs || stop_early;
        history.push(metrics);
        let dir = run.save_epoch(&model, &optim, &state)?;
        if improved {
            run.mark_best(&dir)?;
        }
        run.write_metrics(&history)?;
        plot_history(&run, &history)?;
        epochs_run += 1;
        if stop_early {
            println!(
                "early stopping: no validation improvement for {} epochs",
                state.epochs_without_improvement
            );
            break;
        }
        if opts.stop_after == Some(epochs_run) && !state.finished {
            return Ok(Outcome {
                interrupted: true,
                epochs_run,
                already_done: false,
            });
        }
    }

    // The final report, with the best checkpoint, on held-out patients.
    let best = run
        .load_model(model_cfg.init::<B>(&device), &run.best_dir(), &device)?
        .valid();
    let mut skipped = Vec::new();
    let (labels, probs, test_loss) = evaluate(&best, &test, &loader, &device, &mut skipped);
    let report = Report::new(&labels, &probs, 0.5);
    println!(
        "\ntesting split, best checkpoint (epoch {}), loss {test_loss:.4}:\n{report}",
        state.best_epoch
    );
    if !skipped.is_empty() {
        println!("skipped {} unreadable test images", skipped.len());
    }
    let json = serde_json::json!({ "split": "testing", "checkpoint_epoch": state.best_epoch, "loss": test_loss, "report": report, "skipped": skipped.len() });
    write_atomic(
        &run.root.join(TEST_REPORT),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    Ok(Outcome {
        interrupted: false,
        epochs_run,
        already_done: false,
    })
}

fn write_provenance(
    cfg: &TrainConfig,
    run: &RunDir,
    config_yaml: &str,
    weights: [f64; 2],
    sizes: [usize; 3],
) -> Result<()> {
    let manifest_path = cfg.data.root.join(manifest::FILE_NAME);
    let manifest_sha = manifest::sha256_file(&manifest_path)
        .unwrap_or_else(|_| "unknown (no manifest.csv)".into());
    let json = serde_json::json!({
        "trainer": env!("CARGO_PKG_VERSION"),
        "burn": "0.21.0",
        "config_sha256": manifest::sha256_hex(config_yaml.as_bytes()),
        "dataset_manifest_sha256": manifest_sha,
        "dataset_root": cfg.data.root,
        "split_sizes": { "training": sizes[0], "validation": sizes[1], "testing": sizes[2] },
        "class_weights": weights,
        "preprocess": cfg.preprocess(),
        "epochs": cfg.train.epochs,
    });
    write_atomic(
        &run.root.join(checkpoint::RUN_FILE),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )
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
        &run.root.join("plot.png"),
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
