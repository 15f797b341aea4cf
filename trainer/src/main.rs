//! `trainer --config configs/cancernet.yaml`: fit CancerNet with burn (CPU, or CUDA when built
//! with `--features cuda`).

use anyhow::Result;
use clap::Parser;
use datasets::Shown;
use datasets::cli::{MAX_THREADS, int_in};
use std::path::PathBuf;
use std::process::ExitCode;
use trainer::config::{Device, TrainConfig};
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
    #[arg(long, value_enum)]
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
    #[arg(long)]
    resume: bool,
    /// Stop after this many epochs in this session; continue later with --resume.
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
}

fn main() -> ExitCode {
    trainer::alloc::keep_freed_buffers();
    datasets::cli::exit_code(run(Args::parse()))
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
    let opts = train::Options {
        resume: args.resume,
        force: args.force,
        quiet: args.quiet,
        stop_after: args.stop_after,
        strict: args.strict,
    };
    let outcome = match cfg.device {
        Device::Cpu => train::run::<burn::backend::Autodiff<burn::backend::Flex>>(
            &cfg,
            Default::default(),
            &opts,
        )?,
        Device::Cuda => cuda::run(&cfg, &opts)?,
    };
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

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use burn::backend::{Autodiff, Cuda, cuda::CudaDevice};

    /// burn's CUDA backend panics on first use without a driver or GPU; probe it first so the
    /// user gets an error, never a crash or a silent CPU run.
    fn probe(device: &CudaDevice) -> Result<()> {
        models::catch_quietly(|| {
            burn::tensor::Tensor::<Cuda, 1>::zeros([1], device).into_data();
        })
        .map_err(|why| anyhow::anyhow!("device: cuda was asked for but CUDA cannot be used here ({why}); install the NVIDIA driver, or use --device cpu"))
    }

    pub fn run(cfg: &TrainConfig, opts: &train::Options) -> Result<train::Outcome> {
        let device = CudaDevice::default();
        probe(&device)?;
        train::run::<Autodiff<Cuda>>(cfg, device, opts)
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::*;
    use anyhow::bail;

    pub fn run(_: &TrainConfig, _: &train::Options) -> Result<train::Outcome> {
        bail!(
            "device: cuda was asked for, but this trainer was built without CUDA: rebuild with `cargo build --release --features cuda` (or use --device cpu)"
        )
    }
}
