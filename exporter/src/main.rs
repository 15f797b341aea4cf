//! `exporter --out models/cancernet.onnx`: the trainer's model as a verified ONNX file.

use anyhow::Result;
use clap::Parser;
use common::Shown;
use exporter::export::{Checkpoint, Options, export};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Serialize a trained CancerNet to ONNX (opset 17) and verify it against burn with ONNX Runtime.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The trainer's output folder.
    #[arg(long, default_value = "models/cancernet")]
    model: PathBuf,
    /// best (lowest validation loss), last, average (the trainer's mean of the last epochs),
    /// precise-bn (the run's model with BatchNorm statistics recomputed), or an epoch number
    /// [default: the run's eval.checkpoint, or precise-bn with eval.precise_bn; best by default]
    #[arg(long)]
    checkpoint: Option<Checkpoint>,
    /// The ONNX file to write (atomically; an existing file is replaced only by a verified one,
    /// or with --no-verify by an unverified one).
    #[arg(long, default_value = "models/cancernet.onnx")]
    out: PathBuf,
    /// Fold the classifier's BatchNorm into the following Gemm (exact; the conv BatchNorms stay).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fold_bn: bool,
    /// Build test-time augmentation into the graph: each patch's probabilities averaged over its
    /// 8 flips and quarter turns (every ONNX consumer gets it; ~8x the inference cost); --tta=false
    /// leaves it out [default: as the run's report did (eval.tta)]
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    tta: Option<bool>,
    /// Write neighbour context into the metadata, so that `runtime` averages each patch's
    /// log-odds with its slide-grid neighbours' by default (the run's weight, else 0.5);
    /// --context=false leaves it out [default: as the run's report did (eval.context)]
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    context: Option<bool>,
    /// Skip the check that ONNX Runtime and burn agree on a batch of patches.
    #[arg(long)]
    no_verify: bool,
    /// Patches to verify with; an error when none decodes (default: the run's testing split,
    /// else synthetic patches).
    #[arg(long)]
    verify_data: Option<PathBuf>,
    /// The ONNX Runtime library (default: $ORT_DYLIB_PATH, the project's .venv, python's onnxruntime).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
}

fn main() -> ExitCode {
    common::cli::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let opts = Options {
        model_dir: args.model,
        checkpoint: args.checkpoint,
        out: args.out,
        fold_bn: args.fold_bn,
        tta: args.tta,
        context: args.context,
        verify: !args.no_verify,
        ort_lib: args.ort_lib,
        verify_data: args.verify_data,
    };
    let report = export(&opts)?;
    if let Some(note) = &report.note {
        eprintln!("note: {note}");
    }
    println!(
        "{}: {} bytes, {} nodes, opset 17{}{}",
        opts.out.shown(),
        report.bytes,
        report.nodes,
        if report.tta {
            ", test-time augmentation (8 views) in the graph"
        } else {
            ""
        },
        report.context.map_or(String::new(), |w| format!(
            ", neighbour context (weight {w}) in the metadata"
        ))
    );
    match report.verification {
        Some(v) => println!(
            "verified with {} on {}: max |burn - onnxruntime| = {:.2e}, argmax identical",
            v.library, v.source, v.max_abs_diff
        ),
        None => println!("not verified (--no-verify)"),
    }
    println!("done in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}
