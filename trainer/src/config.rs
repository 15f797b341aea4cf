//! The trainer's YAML config: every knob, defaults = the tutorial. Unknown keys and out-of-range
//! values are rejected with the key's name.

use anyhow::{Context, Result, bail};
use common::Shown;
use common::choice::Choice;
use datasets::augment::Augment;
use datasets::preprocess::{Filter, MAX_SIZE, MIN_SIZE, Preprocess};
use datasets::scale::PatchScale;
use models::CancerNetConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub data: DataConfig,
    #[serde(serialize_with = "model_section")]
    pub model: CancerNetConfig,
    pub train: TrainSection,
    pub augment: Augment,
    /// `cpu` (burn's flex backend), `cuda` or `wgpu` (builds with `--features cuda` / `wgpu`).
    pub device: Device,
    /// Where the run's config, checkpoints, metrics.csv and plot.png go.
    pub output: PathBuf,
    /// How the final report, and the exported model by default, call a patch IDC.
    pub eval: EvalConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// A fixed probability (the tutorial: 0.5), or a rule applied to the best checkpoint's
    /// validation predictions: `max_bac` (highest balanced accuracy) or `sensitivity` (the
    /// highest threshold whose sensitivity reaches `target_sensitivity`).
    pub threshold: Threshold,
    /// The validation sensitivity `threshold: sensitivity` must reach.
    pub target_sensitivity: f64,
    /// Average each patch's probabilities over its eight flips and quarter turns.
    pub tta: bool,
    /// The model the final report evaluates and the exporter exports by default.
    pub checkpoint: CheckpointChoice,
    /// For `checkpoint: average`: how many of the last epochs' weights are averaged.
    pub average_epochs: usize,
    /// Recompute that model's BatchNorm statistics from one unaugmented pass over the training
    /// split (precise BatchNorm): written to `checkpoints/precise-bn/`, which the report
    /// evaluates and the exporter exports by default.
    pub precise_bn: bool,
    /// Neighbour context (`evaluation::context`): each patch's IDC log-odds averaged with those of
    /// its slide-grid neighbours, each at this weight against the patch's own 1, in (0, 4]; absent
    /// for none (each patch alone, as the tutorial). The report uses it, the exporter writes it
    /// into the model's metadata and `runtime` applies it by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<f64>,
}

/// Which epoch's model a run stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointChoice {
    /// The lowest validation loss (the tutorial's ModelCheckpoint).
    #[default]
    Best,
    /// The last epoch trained.
    Last,
    /// The element-wise mean of the last `average_epochs` epochs' weights (written to
    /// `checkpoints/average/`).
    Average,
}

impl CheckpointChoice {
    pub fn name(self) -> &'static str {
        match self {
            CheckpointChoice::Best => "best",
            CheckpointChoice::Last => "last",
            CheckpointChoice::Average => "average",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Threshold {
    Fixed(f64),
    Rule(ThresholdRule),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdRule {
    MaxBac,
    Sensitivity,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            threshold: Threshold::Fixed(0.5),
            target_sensitivity: 0.9,
            tta: false,
            checkpoint: CheckpointChoice::Best,
            average_epochs: 10,
            precise_bn: false,
            context: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Holds training/, validation/, testing/ (from `datasets build`).
    pub root: PathBuf,
    /// Keep decoded patches in memory (48x48 RGB8: ~7 KB each) instead of streaming from disk.
    pub cache: bool,
    /// Threads decoding and augmenting patches (0 = one per core).
    pub workers: usize,
    pub resize_filter: Filter,
    /// The patches' physical scale (side in pixels, microns per pixel), carried into the ONNX
    /// metadata for `runtime slide` (default: the Kaggle dataset's, 50 px at 4 µm/px).
    pub scale: PatchScale,
}

/// Whether the model reads RGB patches and answers IDC or not, the tutorial's (and the
/// trainer's data's) only shape.
fn fixed_shape(m: &CancerNetConfig) -> bool {
    let tutorial = CancerNetConfig::default();
    (m.channels, m.classes) == (tutorial.channels, tutorial.classes)
}

/// The `model:` section's ranges, and that the sizes fit together.
pub fn validate_model(m: &CancerNetConfig) -> Result<()> {
    check_counts(&[
        (
            "model.input_size",
            m.input_size,
            MIN_SIZE as usize,
            MAX_SIZE as usize,
        ),
        ("model.dense", m.dense, 1, 65_536),
    ])?;
    if !fixed_shape(m) {
        bail!(
            "model.channels = {} and model.classes = {}: the trainer reads RGB patches of two classes; leave both out",
            m.channels,
            m.classes
        );
    }
    if let Some(w) = m.widths.iter().chain(&m.depths).find(|&&w| w > 4096) {
        bail!("model.widths and model.depths must be at most 4096, got {w}");
    }
    check_ranges(&[
        ("model.bn_momentum", m.bn_momentum, 0.0, 1.0),
        ("model.bn_epsilon", m.bn_epsilon, 1e-12, 1.0),
    ])?;
    m.validate().map_err(anyhow::Error::msg)
}

/// Each (key, value, lowest, highest): an error naming the first key out of its range.
fn check_counts(counts: &[(&str, usize, usize, usize)]) -> Result<()> {
    for &(key, v, lo, hi) in counts {
        if !(lo..=hi).contains(&v) {
            bail!("{key} = {v} is out of range [{lo}, {hi}]");
        }
    }
    Ok(())
}

/// As `check_counts`, for real numbers (NaN is out of every range).
fn check_ranges(ranges: &[(&str, f64, f64, f64)]) -> Result<()> {
    for &(key, v, lo, hi) in ranges {
        if !(lo..=hi).contains(&v) || v.is_nan() {
            bail!("{key} = {v} is out of range [{lo}, {hi}]");
        }
    }
    Ok(())
}

/// The `model:` section as config.yaml holds it: `channels` and `classes` left out when they are
/// the only ones the trainer takes (`fixed_shape`), so the file, and its hash in the ONNX
/// metadata, read as before they were keys.
fn model_section<S: serde::Serializer>(m: &CancerNetConfig, s: S) -> Result<S::Ok, S::Error> {
    let mut v = yaml_serde::to_value(m).map_err(serde::ser::Error::custom)?;
    if let Some(map) = v.as_mapping_mut().filter(|_| fixed_shape(m)) {
        for key in ["channels", "classes"] {
            map.shift_remove(key);
        }
    }
    v.serialize(s)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub epochs: usize,
    pub batch_size: usize,
    /// `adagrad` (the tutorial's, as Keras implements it) or `adam`.
    pub optimizer: OptimizerKind,
    /// The initial learning rate.
    pub learning_rate: f64,
    /// How the learning rate falls: `legacy` (the tutorial's Keras decay) or `cosine`.
    pub schedule: Schedule,
    /// Keras' legacy per-step decay, lr_t = lr / (1 + decay * t); default lr / epochs.
    pub decay: Option<f64>,
    /// Adagrad's initial accumulator (Keras: 0.1); the epsilon of both (Keras: 1e-7).
    pub initial_accumulator: f64,
    pub epsilon: f64,
    /// Adam's moment decay rates (Keras: 0.9, 0.999).
    pub beta_1: f64,
    pub beta_2: f64,
    /// `auto` = max(count) / count per class from the training split, or two explicit weights.
    pub class_weights: ClassWeights,
    /// Stop when validation loss has not improved for this many epochs (off when absent).
    pub early_stopping: Option<usize>,
    /// Cap on batches per epoch (for quick runs and tests; absent = the whole split).
    pub max_steps_per_epoch: Option<usize>,
    pub seed: u64,
    /// Compute threads for the CPU backend (0 = one per core).
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Adagrad,
    Adam,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// lr / (1 + decay * step): the tutorial's, nearly flat (it ends at 0.7 lr).
    #[default]
    Legacy,
    /// Half a cosine from lr at the first step to 0 after the last (Loshchilov & Hutter 2017,
    /// without restarts).
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClassWeights {
    Auto(AutoWeights),
    Fixed([f64; 2]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoWeights {
    Auto,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
    Wgpu,
}

/// The names are serde's too (lowercase): the config's `device:` and `--device` spell them alike.
impl Choice for Device {
    const CHOICES: &'static [(Device, &'static str, &'static str)] = &[
        (
            Device::Cpu,
            "cpu",
            "burn's flex CPU backend with the project's fused kernels",
        ),
        (
            Device::Cuda,
            "cuda",
            "burn's CUDA backend (build with `--features cuda`)",
        ),
        (
            Device::Wgpu,
            "wgpu",
            "burn's wgpu backend: Vulkan, Metal or DX12, or Mesa's lavapipe on the CPU (build with `--features wgpu`)",
        ),
    ];
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: DataConfig::default(),
            model: CancerNetConfig::default(),
            train: TrainSection::default(),
            augment: Augment::default(),
            device: Device::Cpu,
            output: PathBuf::from("models/cancernet"),
            eval: EvalConfig::default(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            root: PathBuf::from("datasets/idc"),
            cache: false,
            workers: 0,
            resize_filter: Filter::Nearest,
            scale: PatchScale::default(),
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            epochs: 40,
            batch_size: 32,
            optimizer: OptimizerKind::Adagrad,
            learning_rate: 1e-2,
            schedule: Schedule::Legacy,
            decay: None,
            initial_accumulator: 0.1,
            epsilon: 1e-7,
            beta_1: 0.9,
            beta_2: 0.999,
            class_weights: ClassWeights::Auto(AutoWeights::Auto),
            early_stopping: None,
            max_steps_per_epoch: None,
            seed: 42,
            threads: 0,
        }
    }
}

impl TrainConfig {
    /// The config at `path`, validated: whoever loads it (the trainer, the exporter reading a
    /// run) can rely on every range.
    pub fn load(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.shown()))?;
        let cfg: TrainConfig = yaml_serde::from_str(&text)
            .with_context(|| format!("invalid config {}", path.shown()))?;
        cfg.validate()
            .with_context(|| format!("invalid config {}", path.shown()))?;
        Ok(cfg)
    }

    /// Whether `other` continues the same run: equal but for where and how fast it computes
    /// (device, data workers and cache, compute threads), which do not change its numbers on the
    /// CPU and lets a run stopped on one device resume on another, and for where the run folder
    /// is (a moved or renamed run folder is still the same run).
    pub fn same_run(&self, other: &TrainConfig) -> bool {
        let identity = |c: &TrainConfig| {
            let mut c = c.clone();
            c.output = PathBuf::new();
            c.device = Device::Cpu;
            c.data.workers = 0;
            c.data.cache = false;
            c.train.threads = 0;
            c
        };
        identity(self) == identity(other)
    }

    pub fn to_yaml(&self) -> Result<String> {
        Ok(yaml_serde::to_string(self)?)
    }

    /// Checks every range; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        let max_threads = common::cli::MAX_THREADS;
        let counts = [
            ("train.epochs", t.epochs, 1, 100_000),
            ("train.batch_size", t.batch_size, 1, 65_536),
            ("train.threads", t.threads, 0, max_threads),
            ("eval.average_epochs", self.eval.average_epochs, 1, 100_000),
            ("data.workers", self.data.workers, 0, max_threads),
        ];
        check_counts(&counts)?;
        if t.max_steps_per_epoch == Some(0) {
            bail!("train.max_steps_per_epoch must be at least 1 (or absent)");
        }
        if t.schedule == Schedule::Cosine && t.decay.is_some() {
            bail!("train.decay is for `schedule: legacy`; remove it or the cosine schedule");
        }
        if t.early_stopping == Some(0) {
            bail!("train.early_stopping must be at least 1 (or absent)");
        }
        let ranges = [
            ("train.learning_rate", t.learning_rate, 1e-9, 10.0),
            ("train.decay", t.decay.unwrap_or(0.0), 0.0, 1.0),
            ("train.initial_accumulator", t.initial_accumulator, 0.0, 1e3),
            ("train.epsilon", t.epsilon, 0.0, 1.0),
            ("train.beta_1", t.beta_1, 0.0, 0.999_999),
            ("train.beta_2", t.beta_2, 0.0, 0.999_999_999),
            (
                "eval.target_sensitivity",
                self.eval.target_sensitivity,
                0.0,
                1.0,
            ),
        ];
        check_ranges(&ranges)?;
        if let ClassWeights::Fixed(w) = &t.class_weights
            && w.iter().any(|&x| x <= 0.0 || !x.is_finite())
        {
            bail!("train.class_weights must be `auto`, `none` or two positive numbers, got {w:?}");
        }
        if let Threshold::Fixed(t) = self.eval.threshold
            && !(0.0..=1.0).contains(&t)
        {
            bail!("eval.threshold = {t} must be in [0, 1], `max_bac` or `sensitivity`");
        }
        if let Some(w) = self.eval.context
            && !evaluation::context::valid_weight(w)
        {
            bail!(
                "eval.context = {w} must be a neighbour weight in (0, {}], or absent for none",
                evaluation::context::MAX_WEIGHT
            );
        }
        self.data
            .scale
            .check()
            .map_err(|e| anyhow::anyhow!("data.scale: {e}"))?;
        self.augment.validate().map_err(anyhow::Error::msg)?;
        validate_model(&self.model)
    }

    pub fn preprocess(&self) -> Preprocess {
        Preprocess {
            size: self.model.input_size as u32,
            filter: self.data.resize_filter,
        }
    }

    /// Keras' legacy decay per step (the tutorial: lr / epochs).
    pub fn decay(&self) -> f64 {
        self.train
            .decay
            .unwrap_or(self.train.learning_rate / self.train.epochs as f64)
    }

    /// Learning rate of step `t` (0-based) of `total` steps in all.
    pub fn learning_rate_at(&self, t: usize, total: usize) -> f64 {
        let lr = self.train.learning_rate;
        match self.train.schedule {
            Schedule::Legacy => lr / (1.0 + self.decay() * t as f64),
            Schedule::Cosine => {
                let done = (t as f64 / total.max(1) as f64).min(1.0);
                0.5 * lr * (1.0 + (std::f64::consts::PI * done).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests;
