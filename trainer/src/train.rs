//! The training loop, in named stages: decide where a run starts (`plan_start`), open the data
//! (`splits::Data`), write the run's files, build or restore the model and optimizer
//! (`Session`), then per epoch train, validate and checkpoint (`epoch`), and finally report on
//! the testing split (`report::final_report`). The device is a type parameter: the CPU and GPU
//! backends share every line.

use crate::checkpoint::{self, EpochMetrics, EpochTiming, RunDir, State};
use crate::config::{AutoWeights, ClassWeights, TrainConfig};
use crate::data::Batch;
use crate::epoch::{end_epoch, plot_history, train_epoch};
use crate::optim::Optim;
use crate::splits::Data;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use common::Shown;
use common::fsutil::write_atomic;
use datasets::manifest;
use evaluation::report::Report;
use models::CancerNet;
use std::path::PathBuf;

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
    /// The `--config` file, to tell a config kept in the output folder from the run's own.
    pub config_file: Option<PathBuf>,
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

/// Mean over the batch of -w[y] * log p[y] (Keras' class_weight with sum-over-batch-size): on
/// a GPU one kernel (`models::cube::cross_entropy`, and one for its gradient), else burn's ops.
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
    models::cube::cross_entropy(logits, target).unwrap_or_else(|(logits, target)| {
        (log_softmax(logits, 1) * target)
            .sum()
            .neg()
            .div_scalar(n as f32)
    })
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
        refuse_config_in_output(run, opts)?;
        run.refuse_foreign()?;
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

/// Refuses a `--config` that is config.yaml in an output folder that is not yet a run's: a run
/// writes the config it trains with there, resolved, which would replace the user's own file.
/// (In a run's folder config.yaml is the trainer's, and passing it back is how a run resumes.)
fn refuse_config_in_output(run: &RunDir, opts: &Options) -> Result<()> {
    let ours = run.root.join(checkpoint::CONFIG_FILE);
    let Some(given) = &opts.config_file else {
        return Ok(());
    };
    let same = std::fs::canonicalize(given)
        .ok()
        .is_some_and(|g| std::fs::canonicalize(&ours).ok() == Some(g));
    if same && !run.root.join(checkpoint::RUN_FILE).exists() {
        bail!(
            "{} is the --config, and it lies where a run writes the config it trains with: keep \
             yours beside the run folder (e.g. {}.yaml), or choose another --output",
            given.shown(),
            run.root.with_extension("yaml").shown()
        );
    }
    Ok(())
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
    // run.json first: a folder holding any other file of a run holds it too, which is how a
    // run tells its own folder from someone else's (`RunDir::refuse_foreign`), even after a kill.
    write_atomic(
        &run.root.join(checkpoint::RUN_FILE),
        serde_json::to_string_pretty(&file)?.as_bytes(),
    )?;
    write_atomic(
        &run.root.join(checkpoint::CONFIG_FILE),
        config_yaml.as_bytes(),
    )?;
    write_atomic(
        &run.root.join(checkpoint::MODEL_CONFIG_FILE),
        cfg.model.to_string().as_bytes(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
