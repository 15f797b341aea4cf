//! The trainer's YAML config: every knob, defaults = the tutorial. Unknown keys and out-of-range
//! values are rejected with the key's name.

use anyhow::{Context, Result, bail};
use common::Shown;
use datasets::augment::Augment;
use datasets::preprocess::{Filter, Preprocess};
use datasets::scale::PatchScale;
use models::CancerNetConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub data: DataConfig,
    pub model: ModelConfig,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub input_size: usize,
    pub widths: Vec<usize>,
    pub depths: Vec<usize>,
    pub dense: usize,
    pub conv_dropout: f64,
    pub dense_dropout: f64,
    /// Keras' BatchNormalization momentum (weight of the old running average).
    pub bn_momentum: f64,
    pub bn_epsilon: f64,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// burn's flex CPU backend with the project's fused kernels.
    Cpu,
    /// burn's CUDA backend (build with `--features cuda`).
    Cuda,
    /// burn's wgpu backend: Vulkan, Metal or DX12, or Mesa's lavapipe on the CPU (build with
    /// `--features wgpu`).
    Wgpu,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: DataConfig::default(),
            model: ModelConfig::default(),
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

impl Default for ModelConfig {
    fn default() -> Self {
        let m = CancerNetConfig::new();
        ModelConfig {
            input_size: m.input_size,
            widths: m.widths,
            depths: m.depths,
            dense: m.dense,
            conv_dropout: m.conv_dropout,
            dense_dropout: m.dense_dropout,
            bn_momentum: m.bn_momentum,
            bn_epsilon: m.bn_epsilon,
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
        let m = &self.model;
        let max_threads = common::cli::MAX_THREADS;
        let counts = [
            ("train.epochs", t.epochs, 1, 100_000),
            ("train.batch_size", t.batch_size, 1, 65_536),
            ("train.threads", t.threads, 0, max_threads),
            ("eval.average_epochs", self.eval.average_epochs, 1, 100_000),
            ("data.workers", self.data.workers, 0, max_threads),
            ("model.input_size", m.input_size, 8, 1024),
            ("model.dense", m.dense, 1, 65_536),
        ];
        for (key, v, lo, hi) in counts {
            if !(lo..=hi).contains(&v) {
                bail!("{key} = {v} is out of range [{lo}, {hi}]");
            }
        }
        if let Some(w) = m.widths.iter().chain(&m.depths).find(|&&w| w > 4096) {
            bail!("model.widths and model.depths must be at most 4096, got {w}");
        }
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
            ("model.bn_momentum", self.model.bn_momentum, 0.0, 1.0),
            ("model.bn_epsilon", self.model.bn_epsilon, 1e-12, 1.0),
            (
                "eval.target_sensitivity",
                self.eval.target_sensitivity,
                0.0,
                1.0,
            ),
        ];
        for (key, v, lo, hi) in ranges {
            if !(lo..=hi).contains(&v) || v.is_nan() {
                bail!("{key} = {v} is out of range [{lo}, {hi}]");
            }
        }
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
        self.model_config().validate().map_err(anyhow::Error::msg)?;
        Ok(())
    }

    pub fn model_config(&self) -> CancerNetConfig {
        let m = &self.model;
        CancerNetConfig::new()
            .with_input_size(m.input_size)
            .with_widths(m.widths.clone())
            .with_depths(m.depths.clone())
            .with_dense(m.dense)
            .with_conv_dropout(m.conv_dropout)
            .with_dense_dropout(m.dense_dropout)
            .with_bn_momentum(m.bn_momentum)
            .with_bn_epsilon(m.bn_epsilon)
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
mod tests {
    use super::*;

    #[test]
    fn shipped_config_is_the_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cancernet.yaml");
        let cfg = TrainConfig::load(&path).unwrap();
        assert_eq!(cfg, TrainConfig::default());
        cfg.validate().unwrap();
        assert_eq!(cfg.model_config(), CancerNetConfig::new());
    }

    #[test]
    fn a_run_is_its_numbers_not_its_place_or_speed() {
        let a = TrainConfig::default();
        let mut b = a.clone();
        b.output = "elsewhere/run".into();
        b.device = Device::Wgpu;
        b.data.workers = 3;
        b.data.cache = true;
        b.train.threads = 1;
        assert!(a.same_run(&b));
        b.train.epochs += 1;
        assert!(!a.same_run(&b));
        let mut c = a.clone();
        c.eval.tta = true;
        assert!(!a.same_run(&c));
    }

    /// Every config the project ships (configs/, the cross-validation recipes in bench/cv/)
    /// loads and validates.
    #[test]
    fn every_shipped_config_validates() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut n = 0;
        for dir in ["configs", "bench/cv"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "yaml") {
                    let cfg = TrainConfig::load(&path).unwrap();
                    cfg.validate()
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    n += 1;
                }
            }
        }
        assert!(n >= 5, "{n} configs found");
    }

    /// The tutorial's recipe stays the default: no colour jitter, threshold 0.5, no TTA, and
    /// the tutorial's numbers everywhere else.
    #[test]
    fn the_default_is_pinned_to_the_tutorial() {
        let c = TrainConfig::default();
        let a = &c.augment;
        assert_eq!(
            (a.rotation, a.zoom, a.width_shift, a.height_shift, a.shear),
            (20.0, 0.05, 0.1, 0.1, 0.05)
        );
        assert!(a.horizontal_flip && a.vertical_flip && !a.quarter_turns && a.stain().is_off());
        assert_eq!(c.eval.threshold, Threshold::Fixed(0.5));
        assert!(!c.eval.tta && c.eval.context.is_none());
        assert_eq!(c.eval.checkpoint, CheckpointChoice::Best);
        let t = &c.train;
        assert_eq!((t.epochs, t.batch_size, t.learning_rate), (40, 32, 1e-2));
        assert_eq!(t.optimizer, OptimizerKind::Adagrad);
        assert_eq!(
            (t.initial_accumulator, t.epsilon, t.decay),
            (0.1, 1e-7, None)
        );
        assert_eq!(c.model.bn_momentum, 0.99);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = format!(
            "{:#}",
            yaml_serde::from_str::<TrainConfig>("train:\n  epoch: 3\n").unwrap_err()
        );
        assert!(err.contains("epoch"), "{err}");
        let err = format!(
            "{:#}",
            yaml_serde::from_str::<TrainConfig>("augment:\n  rotate: 3\n").unwrap_err()
        );
        assert!(err.contains("rotate"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let cases = [
            ("train:\n  epochs: 0\n", "train.epochs"),
            ("train:\n  learning_rate: -1\n", "train.learning_rate"),
            ("augment:\n  zoom: 3\n", "augment.zoom"),
            ("model:\n  input_size: 4\n", "input_size"),
            ("train:\n  class_weights: [1, -2]\n", "train.class_weights"),
            ("train:\n  class_weights: [0, 1]\n", "train.class_weights"),
            (
                "train:\n  class_weights: [1, .inf]\n",
                "train.class_weights",
            ),
            ("model:\n  widths: [32, 4097, 128]\n", "at most 4096"),
            ("eval:\n  threshold: 1.5\n", "eval.threshold"),
            ("eval:\n  context: 0\n", "eval.context"),
            ("eval:\n  context: 4.5\n", "eval.context"),
            ("eval:\n  context: .nan\n", "eval.context"),
        ];
        for (yaml, key) in cases {
            let cfg: TrainConfig = yaml_serde::from_str(yaml).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{yaml:?}: {err}");
        }
        // The edges of those ranges are accepted.
        for yaml in [
            "train:\n  class_weights: [0.5, 2]\n",
            "model:\n  depths: [1, 4096, 3]\n",
            "eval:\n  threshold: 1\n",
            "eval:\n  context: 4\n",
        ] {
            let cfg: TrainConfig = yaml_serde::from_str(yaml).unwrap();
            cfg.validate().unwrap_or_else(|e| panic!("{yaml:?}: {e}"));
        }
        let cfg: TrainConfig = yaml_serde::from_str("train:\n  class_weights: none\n").unwrap();
        assert_eq!(
            cfg.train.class_weights,
            ClassWeights::Auto(AutoWeights::None)
        );
    }

    #[test]
    fn keras_legacy_decay() {
        let cfg = TrainConfig::default();
        assert_eq!(cfg.learning_rate_at(0, 4000), 1e-2);
        let t = 1000;
        let want = 1e-2 / (1.0 + 1e-2 / 40.0 * t as f64);
        // The total does not enter the legacy decay.
        for total in [1, 4000, usize::MAX] {
            assert!((cfg.learning_rate_at(t, total) - want).abs() < 1e-15);
        }
    }

    #[test]
    fn cosine_falls_from_lr_to_zero_over_the_run() {
        let cfg: TrainConfig =
            yaml_serde::from_str("train:\n  learning_rate: 0.002\n  schedule: cosine\n").unwrap();
        cfg.validate().unwrap();
        let lr = |t| cfg.learning_rate_at(t, 1000);
        assert_eq!(lr(0), 0.002);
        assert!((lr(500) - 0.001).abs() < 1e-15);
        assert!((lr(250) - 0.001 * (1.0 + 0.5f64.sqrt())).abs() < 1e-15);
        assert!(lr(1000).abs() < 1e-15 && lr(5000).abs() < 1e-15);
        assert!((1..1000).all(|t| lr(t) < lr(t - 1)));
        let both: TrainConfig =
            yaml_serde::from_str("train:\n  schedule: cosine\n  decay: 0.01\n").unwrap();
        let err = both.validate().unwrap_err().to_string();
        assert!(
            err.contains("train.decay") && err.contains("cosine"),
            "{err}"
        );
    }

    use proptest::prelude::*;

    /// YAML near the config's shape: known and unknown keys, values of every kind (NaN, inf,
    /// huge, negative, strings, lists, nulls), nested at random.
    fn yamlish() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("data"),
            Just("model"),
            Just("train"),
            Just("augment"),
            Just("device"),
            Just("output"),
            Just("root"),
            Just("cache"),
            Just("workers"),
            Just("input_size"),
            Just("widths"),
            Just("depths"),
            Just("dense"),
            Just("epochs"),
            Just("batch_size"),
            Just("learning_rate"),
            Just("decay"),
            Just("schedule"),
            Just("class_weights"),
            Just("threads"),
            Just("zoom"),
            Just("rotation"),
            Just("fill_mode"),
            Just("bn_momentum"),
            Just("nope"),
        ];
        let value = prop_oneof![
            Just(".nan".to_string()),
            Just(".inf".to_string()),
            Just("-.inf".to_string()),
            Just("null".to_string()),
            Just("auto".to_string()),
            Just("cuda".to_string()),
            Just("cosine".to_string()),
            Just("[1, -2]".to_string()),
            Just("[]".to_string()),
            Just("[0, 0, 0]".to_string()),
            Just("1e308".to_string()),
            Just("18446744073709551616".to_string()),
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| v.to_string()),
            "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
        ];
        let line = (0usize..3, key, value)
            .prop_map(|(indent, k, v)| format!("{}{k}: {v}", "  ".repeat(indent)));
        proptest::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Any text is a config or an error; any config that parses validates or names its
        /// problem: never a panic.
        #[test]
        fn arbitrary_yaml_never_panics(text in yamlish()) {
            if let Ok(cfg) = yaml_serde::from_str::<TrainConfig>(&text)
                && cfg.validate().is_ok()
            {
                let _ = cfg.model_config().flat_features();
                let _ = cfg.learning_rate_at(usize::MAX, 0);
                let _ = cfg.learning_rate_at(usize::MAX, usize::MAX);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = yaml_serde::from_str::<TrainConfig>(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn loading_from_a_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, b"train: [unclosed").unwrap();
        let err = format!("{:#}", TrainConfig::load(&path).unwrap_err());
        assert!(err.contains("bad.yaml"), "{err}");
        std::fs::write(&path, b"\xff\xfe").unwrap();
        let err = format!("{:#}", TrainConfig::load(&path).unwrap_err());
        assert!(err.contains("bad.yaml"), "{err}");
    }
}
