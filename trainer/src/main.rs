//! `trainer --config configs/cancernet.yaml`: fit CancerNet with burn (CPU, or a GPU through CUDA
//! or wgpu when built with `--features cuda` / `wgpu`).

use anyhow::Result;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use common::Shown;
use common::cli::{MAX_THREADS, choice, int_in};
use std::path::PathBuf;
use std::process::ExitCode;
use trainer::config::{Device, TrainConfig};
use trainer::cv::CvOptions;
use trainer::device;
use trainer::train;

/// Fit CancerNet on datasets/idc from a YAML config; flags override single keys.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The YAML config (every knob; defaults = the tutorial).
    #[arg(long, default_value = "configs/cancernet.yaml")]
    config: PathBuf,
    /// Override train.epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Override train.batch_size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Override train.learning_rate.
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Override train.max_steps_per_epoch.
    #[arg(long)]
    max_steps_per_epoch: Option<usize>,
    /// Override train.seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override device.
    #[arg(long, value_parser = choice::<Device>())]
    device: Option<Device>,
    /// Override data.root.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Override data.cache.
    #[arg(long)]
    cache: Option<bool>,
    /// Override data.workers (0 = one per core).
    #[arg(long, value_parser = int_in::<0, MAX_THREADS>)]
    workers: Option<usize>,
    /// Override output.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Continue an interrupted run from its last checkpoint (optimizer state included).
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Stop after this many epochs in this session; continue later with --resume (with --folds:
    /// the same command, without --force).
    #[arg(long, value_parser = int_in::<1, { usize::MAX }>)]
    stop_after: Option<usize>,
    /// Start over in an output folder that holds another run.
    #[arg(long)]
    force: bool,
    /// No progress bars (per-epoch lines are still printed).
    #[arg(long)]
    quiet: bool,
    /// Make any skipped image (unreadable, corrupt, colliding) an error.
    #[arg(long)]
    strict: bool,
    /// Patient-level K-fold cross-validation instead of one training (2 to 50 folds): each fold
    /// trained into <output>/fold-<k>/, the summary in <output>/cv.json, cv.csv and cv-folds.csv;
    /// finished folds are kept and reused on a rerun (--force starts them over).
    #[arg(long, value_parser = int_in::<2, 50>)]
    folds: Option<usize>,
    /// A Kaggle-layout tree whose patients join the cross-validation pool (repeatable;
    /// default: data.root).
    #[arg(long = "cv-source", requires = "folds")]
    cv_sources: Vec<PathBuf>,
    /// Seed of the fold assignment and of each fold's training/validation split (with --folds).
    #[arg(long, default_value_t = 42, requires = "folds")]
    cv_seed: u64,
    /// Share of each fold's training patches (whole patients) held out for validation, in (0, 1)
    /// (with --folds).
    #[arg(long, default_value_t = 0.1, value_parser = val_fraction, requires = "folds")]
    cv_val_fraction: f64,
}

fn val_fraction(s: &str) -> Result<f64, String> {
    let v = common::cli::float_in(s, 0.0, 1.0, true)?;
    if v < 1.0 {
        Ok(v)
    } else {
        Err("must be below 1".into())
    }
}

fn main() -> ExitCode {
    trainer::alloc::keep_freed_buffers();
    common::cli::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let mut cfg = TrainConfig::load(&args.config)?;
    let t = &mut cfg.train;
    t.epochs = args.epochs.unwrap_or(t.epochs);
    t.batch_size = args.batch_size.unwrap_or(t.batch_size);
    t.learning_rate = args.learning_rate.unwrap_or(t.learning_rate);
    t.max_steps_per_epoch = args.max_steps_per_epoch.or(t.max_steps_per_epoch);
    t.seed = args.seed.unwrap_or(t.seed);
    cfg.device = args.device.unwrap_or(cfg.device);
    cfg.data.root = args.data.unwrap_or(cfg.data.root);
    cfg.data.cache = args.cache.unwrap_or(cfg.data.cache);
    cfg.data.workers = args.workers.unwrap_or(cfg.data.workers);
    cfg.output = args.output.unwrap_or(cfg.output);
    cfg.validate()?;
    if cfg.train.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.train.threads)
            .build_global()?;
    }
    let mut opts = train::Options {
        resume: args.resume,
        force: args.force,
        quiet: args.quiet,
        stop_after: args.stop_after,
        strict: args.strict,
        variants: false,
        device_name: String::new(),
        config_file: Some(args.config.clone()),
    };
    let cv = args.folds.map(|folds| CvOptions {
        folds,
        sources: args.cv_sources.clone(),
        seed: args.cv_seed,
        val_fraction: args.cv_val_fraction,
    });
    let cv = cv.as_ref();
    match cfg.device {
        Device::Cpu => {
            opts.device_name = format!("cpu (burn flex, {} threads)", rayon::current_num_threads());
            go::<Autodiff<Flex>>(&cfg, Default::default(), &opts, cv)
        }
        Device::Cuda => {
            let (device, name) = device::cuda::device()?;
            opts.device_name = format!("cuda: {name}");
            #[cfg(feature = "cuda")]
            return go::<Autodiff<burn::backend::Cuda>>(&cfg, device, &opts, cv);
            #[cfg(not(feature = "cuda"))]
            unreachable!("{device:?} without the cuda feature")
        }
        Device::Wgpu => {
            let (device, name) = device::wgpu::device()?;
            opts.device_name = format!("wgpu: {name}");
            #[cfg(feature = "wgpu")]
            return go::<Autodiff<burn::backend::Wgpu>>(&cfg, device, &opts, cv);
            #[cfg(not(feature = "wgpu"))]
            unreachable!("{device:?} without the wgpu feature")
        }
    }
}

/// One training, or a cross-validation, on backend `B`: the device is a parameter, every line
/// after it is shared.
fn go<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: B::Device,
    opts: &train::Options,
    cv: Option<&CvOptions>,
) -> Result<()> {
    if let Some(cv) = cv {
        trainer::cv::run::<B>(cfg, device, opts, cv)?;
        return Ok(());
    }
    let outcome = train::run::<B>(cfg, device, opts)?;
    if outcome.already_done {
        println!(
            "{}: this run is already complete (same config); nothing to do. Use --force to train again.",
            cfg.output.shown()
        );
    } else if outcome.interrupted {
        println!(
            "stopped after {} epochs as asked; continue with --resume",
            outcome.epochs_run
        );
    } else {
        println!(
            "trained {} epochs; model, checkpoints, metrics.csv and plot.png in {}",
            outcome.epochs_run,
            cfg.output.shown()
        );
    }
    Ok(())
}
