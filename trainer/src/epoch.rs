//! One epoch of a run, the training loop's inner stages: a pass over the training split
//! (`train_epoch`, one optimizer `step` a batch, from the epoch's own seeds), then validation,
//! the epoch's files and its checkpoint (`end_epoch`).

use crate::checkpoint::{self, EpochMetrics, EpochTiming, RunDir};
use crate::config::TrainConfig;
use crate::data::Batch;
use crate::evaluate::evaluate;
use crate::splits::Data;
use crate::train::{Options, Session, images_tensor, weighted_loss};
use anyhow::{Result, bail};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Transaction;
use burn::tensor::backend::AutodiffBackend;
use datasets::rng::Rng;
use evaluation::plot::{Series, line_chart};
use evaluation::report::Report;
use plotters::style::RGBColor;
use std::time::Instant;

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
pub(crate) struct Trained {
    epoch: usize,
    loss: f64,
    accuracy: f64,
    learning_rate: f64,
    images_per_second: f64,
    started: Instant,
}

/// Stage 5: one pass over the training split (augmented, shuffled from the epoch's own seeds).
pub(crate) fn train_epoch<B: AutodiffBackend>(
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
    let mut seen = Seen {
        tally: Tally::default(),
        queued: Vec::new(),
        bar,
        started,
    };
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
        let queued = step(session, &batch, (size, weights, lr), k, device);
        seen.queue(queued, epoch)?;
    }
    seen.read(epoch)?;
    let Seen { tally, bar, .. } = seen;
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

/// Steps whose losses and predictions are read from the device together. A read waits until the
/// device has run everything queued so far, and the device then idles while the host queues the
/// next step's launches: reading each step's loss before its backward pass and its predictions
/// after it, as the trainer did, left a GPU waiting twice a step. On the CPU nothing waits.
const READ_EVERY: usize = 8;

/// A step queued on the device, its loss and predicted classes not read yet.
struct Queued<B: Backend> {
    loss: Tensor<B, 1>,
    predicted: Tensor<B, 2, Int>,
    labels: Vec<u8>,
    /// The optimizer step and the epoch's batch it was (for the error of a loss not finite).
    step: usize,
    batch: usize,
}

/// One optimizer step on `batch` (batch `k` of the epoch) at learning rate `lr`, queued: its loss
/// and the classes the model predicted before the step, to be read later.
fn step<B: AutodiffBackend>(
    session: &mut Session<B>,
    batch: &Batch,
    (size, weights, lr): (usize, [f64; 2], f64),
    k: usize,
    device: &B::Device,
) -> Queued<B::InnerBackend> {
    let logits = session
        .model
        .forward(images_tensor::<B>(batch, size, device));
    let loss = weighted_loss(logits.clone(), &batch.labels, weights, device);
    let grads = GradientsParams::from_grads(loss.backward(), &session.model);
    session.model = session.optim.step(lr, session.model.clone(), grads);
    session.state.step += 1;
    Queued {
        loss: loss.inner(),
        predicted: logits.inner().argmax(1),
        labels: batch.labels.clone(),
        step: session.state.step - 1,
        batch: k,
    }
}

/// An epoch's progress: its totals over the steps read, and the steps not read yet.
struct Seen<B: Backend> {
    tally: Tally,
    queued: Vec<Queued<B>>,
    bar: indicatif::ProgressBar,
    started: Instant,
}

impl<B: Backend> Seen<B> {
    /// Adds a step, and reads the queue once it holds `READ_EVERY`.
    fn queue(&mut self, step: Queued<B>, epoch: usize) -> Result<()> {
        self.queued.push(step);
        match self.queued.len() >= READ_EVERY {
            true => self.read(epoch),
            false => Ok(()),
        }
    }

    /// Reads the queued steps in one transaction and counts them, in order; a loss that is not
    /// finite stops the run naming its step.
    fn read(&mut self, epoch: usize) -> Result<()> {
        // burn's cubecl backends panic on a transaction of nothing (no device to read from).
        if self.queued.is_empty() {
            return Ok(());
        }
        let queued = std::mem::take(&mut self.queued);
        let data = queued
            .iter()
            .fold(Transaction::<B>::default(), |t, q| {
                t.register(q.loss.clone()).register(q.predicted.clone())
            })
            .execute();
        for (q, d) in queued.iter().zip(data.chunks(2)) {
            let loss = d[0]
                .clone()
                .convert::<f64>()
                .into_vec::<f64>()
                .expect("loss")[0];
            finite_loss(loss, epoch, q.step, q.batch)?;
            let predicted: Vec<i64> = d[1].clone().convert::<i64>().into_vec().expect("argmax");
            self.tally
                .add(loss, right_answers(&predicted, &q.labels), q.labels.len());
            self.bar.inc(1);
        }
        let tally = &self.tally;
        self.bar.set_message(format!(
            "loss {:.4} acc {:.4} {:.0} img/s",
            tally.loss(),
            tally.accuracy(),
            tally.per_second(self.started.elapsed().as_secs_f64())
        ));
        Ok(())
    }
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
pub(crate) fn end_epoch<B: AutodiffBackend>(
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

pub(crate) fn plot_history(run: &RunDir, history: &[EpochMetrics]) -> Result<()> {
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
