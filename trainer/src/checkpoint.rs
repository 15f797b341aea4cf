//! The run folder: resolved config, provenance, per-epoch checkpoints (model + optimizer +
//! state), the best checkpoint by validation loss, metrics.csv. Every file lands atomically:
//! checkpoints are written into a hidden temp folder and renamed into place.

use crate::optim::Optim;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::module::ParamId;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::AdaptorRecord;
use burn::optim::{Optimizer, SimpleOptimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use common::Shown;
use common::fsutil::{link_or_copy, remove_stale_siblings, temp_sibling, write_atomic};
use models::CancerNet;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MODEL_FILE: &str = "model.mpk";
pub const OPTIM_FILE: &str = "optim.mpk";
pub const STATE_FILE: &str = "state.json";
pub const RUN_FILE: &str = "run.json";
pub const MODEL_CONFIG_FILE: &str = "model.json";
pub const CONFIG_FILE: &str = "config.yaml";
pub const METRICS_FILE: &str = "metrics.csv";
pub const TIMING_FILE: &str = "timing.csv";
pub const PLOT_FILE: &str = "plot.png";
/// The final report on the testing split: its presence marks a complete run (cross-validation
/// reads it back).
pub const TEST_REPORT_FILE: &str = "test_report.json";
/// The threshold the final report used, and what it holds for (`threshold::ChosenThreshold`): the
/// exporter writes it into the model.
pub const THRESHOLD_FILE: &str = "threshold.json";
/// The folders of `checkpoints/` besides the epochs' (`epoch-NNN`).
const BEST_DIR: &str = "best";
const AVERAGE_DIR: &str = "average";
const PRECISE_BN_DIR: &str = "precise-bn";
/// What a run writes at the top of its folder besides `run.json` and `checkpoints/`, each
/// replaced or removed when a run starts over.
const RUN_OUTPUTS: [&str; 7] = [
    CONFIG_FILE,
    MODEL_CONFIG_FILE,
    METRICS_FILE,
    TIMING_FILE,
    PLOT_FILE,
    TEST_REPORT_FILE,
    THRESHOLD_FILE,
];

/// Whether an entry of `checkpoints/` named `name` is the trainer's: an epoch's folder,
/// `best/`, `average/`, `precise-bn/`, or a leftover of writing one (`.<name>.saving-<pid>`).
fn is_trainers(name: &str) -> bool {
    let name = name
        .strip_prefix('.')
        .and_then(|n| n.split_once(".saving-"))
        .map_or(name, |(n, _)| n);
    [BEST_DIR, AVERAGE_DIR, PRECISE_BN_DIR].contains(&name)
        || name
            .strip_prefix("epoch-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `run.json`: where a run came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunFile {
    /// The trainer's and burn's versions.
    pub trainer: String,
    pub burn: String,
    /// SHA-256 of the resolved config and of the dataset's `manifest.csv`.
    pub config_sha256: String,
    pub dataset_manifest_sha256: String,
    pub dataset_root: String,
    pub split_sizes: SplitSizes,
    /// Which patients are in which split, when the splits were made from a list (cross-validation).
    pub splits: serde_json::Value,
    pub class_weights: [f64; 2],
    pub preprocess: datasets::Preprocess,
    pub device: String,
    pub epochs: usize,
    /// Every file skipped so far, with the reason.
    pub skipped: serde_json::Value,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SplitSizes {
    pub training: usize,
    pub validation: usize,
    pub testing: usize,
}

impl RunFile {
    /// The run's `run.json`, if it has one that parses (a random test run has none).
    pub fn read(dir: &Path) -> Option<RunFile> {
        let text = std::fs::read_to_string(dir.join(RUN_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// The optimizer state as saved: (parameter id, state) sorted by id. burn's own record is a hash
/// map, written in an order that differs on every run; this makes checkpoints the same bytes.
type OptimRecord<O, B> = Vec<(String, AdaptorRecord<O, B>)>;

pub fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

fn save_optim<B: AutodiffBackend, O: SimpleOptimizer<B::InnerBackend>>(
    optim: &OptimizerAdaptor<O, CancerNet<B>, B>,
    dir: &Path,
    rec: &NamedMpkFileRecorder<FullPrecisionSettings>,
) -> Result<()> {
    let mut sorted: OptimRecord<O, B> = optim
        .to_record()
        .into_iter()
        .map(|(id, r)| (id.val().to_string(), r))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    rec.record(sorted, dir.join("optim"))
        .context("cannot save optimizer state")
}

fn load_optim<B: AutodiffBackend, O: SimpleOptimizer<B::InnerBackend>>(
    optim: OptimizerAdaptor<O, CancerNet<B>, B>,
    checkpoint: &Path,
    device: &B::Device,
) -> Result<OptimizerAdaptor<O, CancerNet<B>, B>> {
    let shown = || checkpoint.join(OPTIM_FILE).shown().to_string();
    let record: OptimRecord<O, B> = recorder()
        .load(checkpoint.join("optim"), device)
        .with_context(|| format!("cannot load optimizer state {}", shown()))?;
    let by_id = record
        .into_iter()
        .map(|(id, r)| Ok((ParamId::from(id.parse::<u64>()?), r)))
        .collect::<Result<_>>()
        .with_context(|| format!("malformed optimizer state {}", shown()))?;
    Ok(optim.load_record(by_id))
}

/// Where the run is after an epoch: enough to resume it exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub epoch: usize,
    pub step: usize,
    pub best_epoch: usize,
    pub best_val_loss: f64,
    pub epochs_without_improvement: usize,
    pub finished: bool,
    pub val_loss: f64,
    pub val_accuracy: f64,
}

impl State {
    /// Before the first epoch.
    pub fn new() -> State {
        State {
            epoch: 0,
            step: 0,
            best_epoch: 0,
            best_val_loss: f64::INFINITY,
            epochs_without_improvement: 0,
            finished: false,
            val_loss: f64::NAN,
            val_accuracy: f64::NAN,
        }
    }
}

impl State {
    /// Records epoch `epoch`'s validation (loss, accuracy): the best epoch is the one with the
    /// lowest validation loss (strictly lower than every earlier one); with `patience`, the run
    /// stops after that many epochs without a new best. Returns (improved, stop early).
    pub fn record(
        &mut self,
        epoch: usize,
        (val_loss, val_accuracy): (f64, f64),
        epochs: usize,
        patience: Option<usize>,
    ) -> (bool, bool) {
        let improved = val_loss < self.best_val_loss;
        if improved {
            self.best_val_loss = val_loss;
            self.best_epoch = epoch;
            self.epochs_without_improvement = 0;
        } else {
            self.epochs_without_improvement += 1;
        }
        self.epoch = epoch;
        self.val_loss = val_loss;
        self.val_accuracy = val_accuracy;
        let stop = patience.is_some_and(|p| self.epochs_without_improvement >= p);
        self.finished = epoch == epochs || stop;
        (improved, stop)
    }
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

/// One row of metrics.csv: what the run computed, the same bytes on every rerun.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub step: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_sensitivity: f64,
    pub val_specificity: f64,
    pub val_roc_auc: f64,
    /// Files skipped so far in the run (all named in run.json).
    pub skipped_images: usize,
}

/// One row of timing.csv: how long the epoch took (differs between runs, unlike metrics.csv).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochTiming {
    pub epoch: usize,
    pub seconds: f64,
    pub train_images_per_second: f64,
}

/// The epochs an average of the last `n` up to `last` covers (fewer when the run has fewer).
pub fn averaged_epochs(last: usize, n: usize) -> std::ops::RangeInclusive<usize> {
    last.saturating_sub(n) + 1..=last
}

pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn epoch_dir(&self, epoch: usize) -> PathBuf {
        self.checkpoints().join(format!("epoch-{epoch:03}"))
    }

    pub fn best_dir(&self) -> PathBuf {
        self.checkpoints().join(BEST_DIR)
    }

    /// The newest complete epoch checkpoint, if any.
    pub fn latest(&self) -> Option<(usize, PathBuf)> {
        let entries = std::fs::read_dir(self.checkpoints()).ok()?;
        entries
            .filter_map(|e| {
                let e = e.ok()?;
                let n: usize = e
                    .file_name()
                    .to_str()?
                    .strip_prefix("epoch-")?
                    .parse()
                    .ok()?;
                e.path().join(STATE_FILE).is_file().then(|| (n, e.path()))
            })
            .max_by_key(|(n, _)| *n)
    }

    /// Writes epoch `state.epoch`'s checkpoint: model, optimizer, state, and the metrics of
    /// every epoch so far (so a resume never depends on the run-level files written after it).
    pub fn save_epoch<B: AutodiffBackend>(
        &self,
        model: &CancerNet<B>,
        optim: &Optim<B>,
        state: &State,
        history: (&[EpochMetrics], &[EpochTiming]),
    ) -> Result<PathBuf> {
        let dir = self.epoch_dir(state.epoch);
        std::fs::create_dir_all(self.checkpoints())?;
        remove_stale_siblings(&dir, "saving")?;
        let tmp = temp_sibling(&dir, "saving");
        std::fs::create_dir_all(&tmp)?;
        write_csv(&tmp.join(METRICS_FILE), history.0)?;
        write_csv(&tmp.join(TIMING_FILE), history.1)?;
        let rec = recorder();
        model
            .clone()
            .save_file(tmp.join("model"), &rec)
            .context("cannot save model checkpoint")?;
        match optim {
            Optim::Adagrad(o) => save_optim(o, &tmp, &rec)?,
            Optim::Adam(o) => save_optim(o, &tmp, &rec)?,
        }
        write_atomic(
            &tmp.join(STATE_FILE),
            serde_json::to_string_pretty(state)?.as_bytes(),
        )?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::rename(&tmp, &dir)
            .with_context(|| format!("cannot move checkpoint to {}", dir.shown()))?;
        Ok(dir)
    }

    pub fn average_dir(&self) -> PathBuf {
        self.checkpoints().join(AVERAGE_DIR)
    }

    /// The element-wise mean of the weights of the `n` epochs up to `last` (fewer when the run
    /// has fewer), and the first of them.
    pub fn mean_of_last<B: burn::tensor::backend::Backend>(
        &self,
        config: &models::CancerNetConfig,
        last: usize,
        n: usize,
        device: &B::Device,
    ) -> Result<(CancerNet<B>, usize)> {
        let epochs = averaged_epochs(last, n);
        let first = *epochs.start();
        let models = epochs
            .map(|e| self.load_model(config.init::<B>(device), &self.epoch_dir(e), device))
            .collect::<Result<Vec<_>>>()?;
        let mean = crate::average::mean_weights(models)?.context("no checkpoints to average")?;
        Ok((mean, first))
    }

    /// The configured model with BatchNorm statistics recomputed (`eval.precise_bn`).
    pub fn precise_bn_dir(&self) -> PathBuf {
        self.checkpoints().join(PRECISE_BN_DIR)
    }

    /// Writes a model derived from the run's checkpoints (`average/`, `precise-bn/`) to `dir`,
    /// with `state`: the epoch it stands for, its own validation loss and accuracy.
    pub fn write_derived<B: burn::tensor::backend::Backend>(
        &self,
        dir: &Path,
        model: &CancerNet<B>,
        state: &State,
    ) -> Result<()> {
        remove_stale_siblings(dir, "saving")?;
        let tmp = temp_sibling(dir, "saving");
        std::fs::create_dir_all(&tmp)?;
        model
            .clone()
            .save_file(tmp.join("model"), &recorder())
            .with_context(|| format!("cannot save the model for {}", dir.shown()))?;
        write_atomic(
            &tmp.join(STATE_FILE),
            serde_json::to_string_pretty(state)?.as_bytes(),
        )?;
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("cannot move the model to {}", dir.shown()))
    }

    /// Makes `best/` a copy (hard links) of an epoch checkpoint's model and state.
    pub fn mark_best(&self, epoch_dir: &Path) -> Result<()> {
        let best = self.best_dir();
        remove_stale_siblings(&best, "saving")?;
        let tmp = temp_sibling(&best, "saving");
        std::fs::create_dir_all(&tmp)?;
        for f in [MODEL_FILE, STATE_FILE] {
            link_or_copy(&epoch_dir.join(f), &tmp.join(f))?;
        }
        if best.exists() {
            std::fs::remove_dir_all(&best)?;
        }
        std::fs::rename(&tmp, &best)?;
        Ok(())
    }

    pub fn load_model<B: burn::tensor::backend::Backend>(
        &self,
        model: CancerNet<B>,
        checkpoint: &Path,
        device: &B::Device,
    ) -> Result<CancerNet<B>> {
        let path = checkpoint.join(MODEL_FILE);
        // burn panics when a record does not fit the module: make that an error naming the file.
        let loaded = models::catch_quietly(|| model.load_file(checkpoint.join("model"), &recorder(), device)).map_err(|why| {
            anyhow::anyhow!("checkpoint {} does not fit the model config beside it (was it trained with another model config?): {why}", path.shown())
        })?;
        loaded.with_context(|| format!("cannot load model checkpoint {}", path.shown()))
    }

    pub fn load_optim<B: AutodiffBackend>(
        &self,
        optim: Optim<B>,
        checkpoint: &Path,
        device: &B::Device,
    ) -> Result<Optim<B>> {
        Ok(match optim {
            Optim::Adagrad(o) => Optim::Adagrad(load_optim(o, checkpoint, device)?),
            Optim::Adam(o) => Optim::Adam(load_optim(o, checkpoint, device)?),
        })
    }

    pub fn read_state(checkpoint: &Path) -> Result<State> {
        let path = checkpoint.join(STATE_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.shown()))?;
        serde_json::from_str(&text).with_context(|| format!("malformed {}", path.shown()))
    }

    /// Removes what an earlier run in this folder wrote (checkpoints, metrics, plot, reports), so
    /// that nothing of it can pass for the new run's: a fresh start begins from an empty slate.
    /// What the trainer does not write stays, in `checkpoints/` too (a copy kept there by hand).
    pub fn clear_outputs(&self) -> Result<()> {
        let checkpoints = self.checkpoints();
        if let Ok(entries) = std::fs::read_dir(&checkpoints) {
            for entry in entries {
                let path = entry
                    .with_context(|| format!("cannot read {}", checkpoints.shown()))?
                    .path();
                if path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_trainers)
                {
                    match path.is_dir() {
                        true => std::fs::remove_dir_all(&path),
                        false => std::fs::remove_file(&path),
                    }
                    .with_context(|| format!("cannot remove {}", path.shown()))?;
                }
            }
            // Gone unless something of someone else's is left in it.
            let _ = std::fs::remove_dir(&checkpoints);
        }
        for name in RUN_OUTPUTS {
            let path = self.root.join(name);
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.shown()))?;
            }
        }
        Ok(())
    }

    /// Refuses a folder that is not a trainer's (no `run.json`, no checkpoint) but holds what a
    /// run would write or remove there: someone's own files, which a run must not touch.
    pub fn refuse_foreign(&self) -> Result<()> {
        if self.root.join(RUN_FILE).is_file() {
            return Ok(());
        }
        let names = std::iter::once("checkpoints").chain(RUN_OUTPUTS);
        if let Some(name) = names.into_iter().find(|n| self.root.join(n).exists()) {
            bail!(
                "{} holds {name} but is not a trainer's run folder (no {RUN_FILE}, no checkpoint); \
                 a run would replace it: choose another --output, or move {name} away",
                self.root.shown()
            );
        }
        Ok(())
    }

    pub fn write_metrics(&self, rows: &[EpochMetrics]) -> Result<()> {
        write_csv(&self.root.join(METRICS_FILE), rows)
    }

    /// The metrics of every epoch up to a checkpoint: its own copy, else (a checkpoint from an
    /// older version) the run's rows up to its epoch.
    pub fn read_metrics(&self, checkpoint: &Path, epoch: usize) -> Result<Vec<EpochMetrics>> {
        let mut rows: Vec<EpochMetrics> = read_csv(&pick(checkpoint, &self.root, METRICS_FILE))?;
        rows.retain(|m| m.epoch <= epoch);
        Ok(rows)
    }

    pub fn write_timing(&self, rows: &[EpochTiming]) -> Result<()> {
        write_csv(&self.root.join(TIMING_FILE), rows)
    }

    pub fn read_timing(&self, checkpoint: &Path, epoch: usize) -> Result<Vec<EpochTiming>> {
        let mut rows: Vec<EpochTiming> = read_csv(&pick(checkpoint, &self.root, TIMING_FILE))?;
        rows.retain(|m| m.epoch <= epoch);
        Ok(rows)
    }
}

/// `checkpoint/name` when the checkpoint has it, else `root/name`.
fn pick(checkpoint: &Path, root: &Path, name: &str) -> PathBuf {
    let own = checkpoint.join(name);
    if own.is_file() { own } else { root.join(name) }
}

fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    write_atomic(path, &w.into_inner()?)
}

/// The rows of a CSV file the run wrote; none when it is absent.
fn read_csv<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.shown()))?;
    r.deserialize()
        .collect::<Result<_, _>>()
        .with_context(|| format!("malformed {}", path.shown()))
}

/// A run folder whose best checkpoint is a randomly initialized model of `cfg` (seeded), with
/// random BatchNorm scales, shifts and running statistics (a fresh BatchNorm is the identity,
/// which would hide a swapped or dropped parameter in the exporter or runtime): for tests and
/// smoke checks of the exporter and runtime without training.
pub fn write_random_run(dir: &Path, cfg: &models::CancerNetConfig, seed: u64) -> Result<()> {
    use burn::backend::Flex;
    use burn::module::{Param, RunningState};
    use burn::nn::BatchNorm;
    use burn::prelude::Config;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Distribution, Tensor};
    let device = Default::default();
    Flex::seed(&device, seed);
    let mut model = cfg.init::<Flex>(&device);
    let random = |bn: &mut BatchNorm<Flex>| {
        let c = bn.gamma.dims()[0];
        let uniform =
            |lo, hi| Tensor::<Flex, 1>::random([c], Distribution::Uniform(lo, hi), &device);
        bn.gamma = Param::initialized(bn.gamma.id, uniform(0.5, 1.5));
        bn.beta = Param::initialized(bn.beta.id, uniform(-0.5, 0.5));
        bn.running_mean = RunningState::new(uniform(-0.5, 0.5));
        bn.running_var = RunningState::new(uniform(0.5, 2.0));
    };
    for unit in model.blocks.iter_mut().flat_map(|b| &mut b.units) {
        random(&mut unit.bn);
    }
    random(&mut model.dense_bn);
    let run = RunDir {
        root: dir.to_path_buf(),
    };
    std::fs::create_dir_all(run.best_dir())?;
    cfg.save(dir.join(MODEL_CONFIG_FILE))?;
    model.save_file(run.best_dir().join("model"), &recorder())?;
    let state = State {
        best_val_loss: 0.0,
        finished: true,
        val_loss: 0.0,
        val_accuracy: 0.0,
        ..State::new()
    };
    write_atomic(
        &run.best_dir().join(STATE_FILE),
        serde_json::to_string_pretty(&state)?.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_is_the_lowest_validation_loss_and_patience_stops_the_run() {
        let losses = [0.9, 0.7, 0.7, 0.8, 0.6, 0.65, 0.66, 0.61];
        let mut s = State::new();
        let mut log = Vec::new();
        for (k, &l) in losses.iter().enumerate() {
            log.push(s.record(k + 1, (l, 0.5), 20, Some(3)));
            if log.last().unwrap().1 {
                break;
            }
        }
        // Epoch 3 ties epoch 2 (not better); epoch 5 is the best; 6, 7, 8 do not beat it.
        let improved: Vec<bool> = log.iter().map(|x| x.0).collect();
        assert_eq!(
            improved,
            [true, true, false, false, true, false, false, false]
        );
        assert_eq!((s.best_epoch, s.best_val_loss), (5, 0.6));
        assert!(
            log.last().unwrap().1,
            "three epochs without a new best stop the run"
        );
        assert!(s.finished && s.epoch == 8);
        // Without patience the run goes on until its last epoch.
        let mut s = State::new();
        for (k, &l) in losses.iter().enumerate() {
            assert!(!s.record(k + 1, (l, 0.5), losses.len(), None).1);
        }
        assert!(s.finished);
        assert_eq!(s.best_epoch, 5);
    }
}
