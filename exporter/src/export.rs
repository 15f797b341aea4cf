//! Reading a trainer run, writing the ONNX file atomically, and verifying it against burn with
//! ONNX Runtime before it reaches `--out`.

use crate::graph::{self, graph};
use crate::onnx_proto::{
    IR_VERSION, ModelProto, OPSET_VERSION, OperatorSetIdProto, StringStringEntryProto,
};
use crate::verify::{Verification, verify};
use anyhow::{Context, Result, bail};
use burn::backend::Flex;
use burn::prelude::*;
use common::Shown;
use common::fsutil::{temp_sibling, write_atomic};
use contract::{Contract, ModelThreshold};
use datasets::preprocess::Preprocess;
use models::{CancerNet, CancerNetConfig};
use prost::Message;
use std::path::{Path, PathBuf};
use trainer::checkpoint::{self, RunDir};
use trainer::config::{CheckpointChoice, EvalConfig, TrainConfig};
use trainer::threshold::ChosenThreshold;

pub(crate) type B = Flex;

/// Which checkpoint of a run to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    Best,
    Last,
    /// The mean of the last epochs' weights the trainer wrote (`eval.checkpoint: average`).
    Average,
    /// The run's model with BatchNorm statistics recomputed (`eval.precise_bn`).
    PreciseBn,
    Epoch(usize),
}

impl From<CheckpointChoice> for Checkpoint {
    fn from(c: CheckpointChoice) -> Checkpoint {
        match c {
            CheckpointChoice::Best => Checkpoint::Best,
            CheckpointChoice::Last => Checkpoint::Last,
            CheckpointChoice::Average => Checkpoint::Average,
        }
    }
}

impl std::str::FromStr for Checkpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "best" => Ok(Checkpoint::Best),
            "last" => Ok(Checkpoint::Last),
            "average" => Ok(Checkpoint::Average),
            "precise-bn" => Ok(Checkpoint::PreciseBn),
            n => n.parse().map(Checkpoint::Epoch).map_err(|_| {
                format!("expected best, last, average, precise-bn or an epoch number, got {n:?}")
            }),
        }
    }
}

pub struct Options {
    pub model_dir: PathBuf,
    /// None: the run's `eval.checkpoint` (best by default; `precise-bn` with `eval.precise_bn`).
    pub checkpoint: Option<Checkpoint>,
    pub out: PathBuf,
    pub fold_bn: bool,
    /// Build test-time augmentation into the graph: the 8 flips/rotations of each patch averaged.
    /// None: as the run's report did (`eval.tta`).
    pub tta: Option<bool>,
    /// Write neighbour context into the metadata (`runtime` applies it by default). None: as the
    /// run's report did (`eval.context`); true without one in the run: the default weight.
    pub context: Option<bool>,
    pub verify: bool,
    pub ort_lib: Option<PathBuf>,
    /// Patches to verify with, which must hold a decodable one (default: the run's testing split
    /// when it holds one, else synthetic).
    pub verify_data: Option<PathBuf>,
}

impl Options {
    /// The command's defaults for `model_dir` and `out`: the run's checkpoint, the classifier's
    /// BatchNorm folded, TTA as the run's report had it, verified with the usual ONNX Runtime on
    /// the run's own patches.
    pub fn new(model_dir: &Path, out: &Path) -> Options {
        Options {
            model_dir: model_dir.to_path_buf(),
            checkpoint: None,
            out: out.to_path_buf(),
            fold_bn: true,
            tta: None,
            context: None,
            verify: true,
            ort_lib: None,
            verify_data: None,
        }
    }
}

/// A trained model as the exporter sees it.
pub struct Loaded {
    pub model: CancerNet<B>,
    pub config: CancerNetConfig,
    pub preprocess: Preprocess,
    /// The metadata but for what `to_onnx` decides (threshold, TTA, context).
    pub contract: Contract,
    pub data_root: Option<PathBuf>,
    /// The checkpoint's epoch, and the run's operating threshold (`threshold.json`), if any.
    pub epoch: usize,
    /// Whether the model is the trainer's average of its last epochs, and whether its BatchNorm
    /// statistics were recomputed (`precise-bn/`).
    pub averaged: bool,
    pub precise_bn: bool,
    /// Whether the run's report averaged the 8 views (`eval.tta`): the export's default.
    pub run_tta: bool,
    /// The neighbour context weight the metadata carries: the run's (`eval.context`) as loaded,
    /// as `Options::context` says once `export` has applied it.
    pub context: Option<f64>,
    pub threshold: Option<ChosenThreshold>,
}

pub struct Report {
    pub bytes: usize,
    pub nodes: usize,
    pub verification: Option<Verification>,
    /// Whether the graph averages the 8 views (TTA).
    pub tta: bool,
    /// The neighbour context weight in the metadata.
    pub context: Option<f64>,
    /// Why the run's threshold was left out of the model, when it was.
    pub note: Option<String>,
}

/// Loads the run's model config, preprocessing, provenance and the chosen checkpoint (none
/// chosen: the one the run's `eval.checkpoint` names, best by default).
pub fn load(dir: &Path, which: Option<Checkpoint>) -> Result<Loaded> {
    if !dir.is_dir() {
        bail!(
            "model folder {} does not exist: train first (`trainer --config configs/cancernet.yaml`) or pass --model",
            dir.shown()
        );
    }
    let run = RunDir {
        root: dir.to_path_buf(),
    };
    let cfg_path = dir.join(checkpoint::MODEL_CONFIG_FILE);
    let config = CancerNetConfig::load(&cfg_path)
        .with_context(|| format!("cannot read the model config {}", cfg_path.shown()))?;
    // Checked as the trainer checks it: burn's layers panic on a dropout of 1.5 or no channels.
    trainer::config::validate_model(&config)
        .with_context(|| format!("invalid model config {}", cfg_path.shown()))?;
    // The run's config, when it has one (a random test run has none), gives the preprocessing
    // and the checkpoint the run stands for: a config that does not parse is an error, never a
    // silent default.
    let cfg_file = dir.join(checkpoint::CONFIG_FILE);
    let train_cfg = if cfg_file.exists() {
        Some(TrainConfig::load(&cfg_file)?)
    } else {
        None
    };
    let eval = train_cfg
        .as_ref()
        .map(|c| c.eval.clone())
        .unwrap_or_default();
    let which = which.unwrap_or(if eval.precise_bn {
        Checkpoint::PreciseBn
    } else {
        eval.checkpoint.into()
    });
    // precise-bn/ holds the run's configured checkpoint (eval.checkpoint) with new statistics.
    let averaged = which == Checkpoint::Average
        || (which == Checkpoint::PreciseBn && eval.checkpoint == CheckpointChoice::Average);
    let ckpt = checkpoint_dir(&run, which)?;
    let state = RunDir::read_state(&ckpt)?;
    let device = Default::default();
    let model = run.load_model(config.init::<B>(&device), &ckpt, &device)?;
    // The patch side is the model's (model.json, which the weights were saved with), the rest of
    // the preprocessing the run's: a config.yaml edited after training cannot feed the model
    // patches of another size.
    let preprocess = Preprocess {
        size: config.input_size as u32,
        ..train_cfg
            .as_ref()
            .map_or_else(Preprocess::default, |c| c.preprocess())
    };
    let contract = contract_of(
        dir,
        &config,
        preprocess,
        train_cfg.as_ref(),
        &eval,
        which,
        &state,
    );
    let threshold = read_threshold(dir)?;
    Ok(Loaded {
        model,
        config,
        preprocess,
        contract,
        data_root: train_cfg.map(|c| c.data.root),
        epoch: state.epoch,
        averaged,
        precise_bn: which == Checkpoint::PreciseBn,
        run_tta: eval.tta,
        context: eval.context,
        threshold,
    })
}

/// The folder of checkpoint `which` in `run`, which must hold a model; an error says what the
/// run has instead.
fn checkpoint_dir(run: &RunDir, which: Checkpoint) -> Result<PathBuf> {
    let ckpt = match which {
        Checkpoint::Best => run.best_dir(),
        Checkpoint::Last => run
            .latest()
            .map(|(_, d)| d)
            .with_context(|| format!("{} has no checkpoints", run.checkpoints().shown()))?,
        Checkpoint::Average => run.average_dir(),
        Checkpoint::PreciseBn => run.precise_bn_dir(),
        Checkpoint::Epoch(n) => run.epoch_dir(n),
    };
    if !ckpt.join(checkpoint::MODEL_FILE).is_file() {
        let path = ckpt.join(checkpoint::MODEL_FILE);
        if which == Checkpoint::PreciseBn {
            bail!(
                "{} does not exist: the run has not written its final report yet (rerun the \
                 trainer with --resume), or export another model with --checkpoint best|last|N",
                path.shown()
            );
        }
        let have = run.latest().map_or("none".to_string(), |(n, _)| {
            format!(
                "epochs 1..={n} (some may be missing), best, average and precise-bn if the run made them"
            )
        });
        bail!(
            "checkpoint {} does not exist (available: {have})",
            path.shown()
        );
    }
    Ok(ckpt)
}

/// The trainer's operating threshold (`threshold.json`: chosen on validation, or fixed in its
/// config), when the run has one; checked.
fn read_threshold(dir: &Path) -> Result<Option<ChosenThreshold>> {
    // The trainer's operating threshold (chosen on validation, or fixed in its config).
    let threshold_path = dir.join(checkpoint::THRESHOLD_FILE);
    match std::fs::read_to_string(&threshold_path) {
        Err(_) => Ok(None),
        Ok(text) => {
            let t: ChosenThreshold = serde_json::from_str(&text)
                .with_context(|| format!("malformed {}", threshold_path.shown()))?;
            if !(0.0..=1.0).contains(&t.threshold) {
                bail!(
                    "{}: threshold {} is not in [0, 1]",
                    threshold_path.shown(),
                    t.threshold
                );
            }
            Ok(Some(t))
        }
    }
}

/// The metadata of an export but for what `to_onnx` decides (threshold, TTA, context): the
/// preprocessing, the patches' scale, the graph's tensors and the provenance.
fn contract_of(
    dir: &Path,
    config: &CancerNetConfig,
    preprocess: Preprocess,
    train_cfg: Option<&TrainConfig>,
    eval: &EvalConfig,
    which: Checkpoint,
    state: &checkpoint::State,
) -> Contract {
    let run_file = checkpoint::RunFile::read(dir);
    let unknown = || "unknown".to_string();
    let scale = train_cfg.map_or_else(Default::default, |c| c.data.scale);
    // Threshold, TTA and context are set by `to_onnx`, as the export asks.
    let mut contract = Contract::new(preprocess, scale, false, None, None);
    contract.graph = vec![
        (
            "input".into(),
            format!(
                "{}: float32 [batch, 3, {s}, {s}]",
                graph::INPUT,
                s = preprocess.size
            ),
        ),
        (
            "outputs".into(),
            format!(
                "{}: softmax [batch, 2]; {}: [batch, 2]",
                graph::PROBABILITIES,
                graph::LOGITS
            ),
        ),
    ];
    contract.provenance = vec![
        (
            "model.config".into(),
            config
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "train.checkpoint".into(),
            checkpoint_description(which, eval, state.epoch),
        ),
        ("train.epochs".into(), state.epoch.to_string()),
        (
            "train.config_sha256".into(),
            run_file
                .as_ref()
                .map_or_else(unknown, |r| r.config_sha256.clone()),
        ),
        (
            "train.dataset_manifest_sha256".into(),
            run_file
                .as_ref()
                .map_or_else(unknown, |r| r.dataset_manifest_sha256.clone()),
        ),
        ("train.val_loss".into(), format!("{:.6}", state.val_loss)),
        (
            "train.val_accuracy".into(),
            format!("{:.6}", state.val_accuracy),
        ),
        (
            "toolchain".into(),
            format!(
                "burn {}, {}",
                contract::BURN_VERSION,
                env!("IDC_RUSTC_VERSION")
            ),
        ),
    ];
    contract
}

/// The metadata's `train.checkpoint`: which model of the run, at which epoch.
fn checkpoint_description(c: Checkpoint, eval: &EvalConfig, epoch: usize) -> String {
    match c {
        Checkpoint::Best => format!("best (epoch {epoch})"),
        Checkpoint::Last => format!("last (epoch {epoch})"),
        Checkpoint::Epoch(n) => format!("epoch {n}"),
        Checkpoint::Average => {
            let epochs = checkpoint::averaged_epochs(epoch, eval.average_epochs);
            format!("average of epochs {}-{}", epochs.start(), epochs.end())
        }
        Checkpoint::PreciseBn => format!(
            "{}, BatchNorm statistics recomputed on the training split",
            checkpoint_description(eval.checkpoint.into(), eval, epoch)
        ),
    }
}

/// The serialized model. Deterministic: the same checkpoint gives the same bytes.
pub fn to_onnx(loaded: &Loaded, fold_bn: bool, tta: bool) -> Result<Vec<u8>> {
    let mut contract = loaded.contract.clone();
    contract.tta = tta;
    contract.context = loaded.context.map(Ok);
    contract.threshold = loaded
        .threshold
        .as_ref()
        .filter(|t| t.holds_for(&loaded.evaluation(tta)))
        .map(|t| {
            Ok(ModelThreshold {
                value: t.threshold,
                source: format!("trainer: {}", t.source),
                chosen_for: t.chosen_for(),
            })
        });
    let metadata = contract.to_metadata();
    let proto = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto::onnx(OPSET_VERSION)],
        producer_name: Some("idc-onnx exporter".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: Some("org.idc-onnx".into()),
        model_version: Some(1),
        doc_string: Some("CancerNet: invasive ductal carcinoma (IDC) vs healthy tissue in breast histology patches".into()),
        graph: Some(graph(&loaded.model, &loaded.config, fold_bn, tta)?),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto { key: Some(k.clone()), value: Some(v.clone()) })
            .collect(),
    };
    Ok(proto.encode_to_vec())
}

impl Options {
    /// Whether the export builds TTA into the graph: as asked, else as the run's report did.
    pub fn tta_for(&self, loaded: &Loaded) -> bool {
        self.tta.unwrap_or(loaded.run_tta)
    }

    /// The neighbour context weight the export carries: as asked, else as the run's report did.
    pub fn context_for(&self, run_context: Option<f64>) -> Option<f64> {
        match self.context {
            None => run_context,
            Some(false) => None,
            Some(true) => run_context.or(Some(evaluation::context::DEFAULT_WEIGHT)),
        }
    }
}

impl Loaded {
    /// How `runtime` evaluates this model exported with or without TTA.
    pub fn evaluation(&self, tta: bool) -> trainer::threshold::Evaluation {
        trainer::threshold::Evaluation {
            epoch: self.epoch,
            averaged: self.averaged,
            precise_bn: self.precise_bn,
            tta,
            context: self.context,
        }
    }
}

pub fn export(opts: &Options) -> Result<Report> {
    if opts.out.is_dir() {
        bail!(
            "--out {} is a folder: name the ONNX file to write, e.g. {}",
            opts.out.shown(),
            opts.out.join("cancernet.onnx").shown()
        );
    }
    let mut loaded = load(&opts.model_dir, opts.checkpoint)?;
    loaded.context = opts.context_for(loaded.context);
    let tta = opts.tta_for(&loaded);
    let note = loaded
        .threshold
        .as_ref()
        .filter(|t| !t.holds_for(&loaded.evaluation(tta)))
        .map(|t| {
            format!(
                "the run's threshold {} was chosen for {}; this export ({}) leaves it out, so \
                 runtime uses 0.5 unless --threshold is given",
                t.threshold,
                t.chosen_with.in_words(),
                loaded.evaluation(tta).in_words(),
            )
        });
    let bytes = to_onnx(&loaded, opts.fold_bn, tta)?;
    Ok(Report {
        note,
        ..write_verified(&loaded, &bytes, opts)?
    })
}

/// Writes `bytes` to `opts.out` once ONNX Runtime's outputs on it match burn's on `loaded` (unless
/// `opts.verify` is off): staged in a temp file beside `--out`, which is replaced only by a
/// verified file, and removed when verification fails.
pub fn write_verified(loaded: &Loaded, bytes: &[u8], opts: &Options) -> Result<Report> {
    let nodes = ModelProto::decode(bytes)?.graph.map_or(0, |g| g.node.len());
    let staged = temp_sibling(&opts.out, "verify");
    write_atomic(&staged, bytes)?;
    let verification = if opts.verify {
        let checked = verify(loaded, &staged, opts);
        if checked.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        Some(checked?)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(&staged, &opts.out) {
        let _ = std::fs::remove_file(&staged);
        return Err(e).with_context(|| format!("cannot write {}", opts.out.shown()));
    }
    Ok(Report {
        bytes: bytes.len(),
        nodes,
        verification,
        tta: opts.tta_for(loaded),
        context: loaded.context,
        note: None,
    })
}

#[cfg(test)]
mod tests;
