use anyhow::Result;
use clap::{Parser, Subcommand};
use common::Shown;
use common::cli::{choice, exit_code, float_in, int_in, progress_bar};
use datasets::build::{BuildOptions, OnCollision, Outcome, build};
use datasets::split::{SplitBy, SplitConfig};
use datasets::synth::{self, SynthOptions};
use datasets::{Scan, manifest};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// IDC patches on disk: make a synthetic set, split a Kaggle-layout tree, check a folder.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make an IDC-like dataset offline, in the Kaggle layout and naming.
    Synth {
        /// Number of patients (the Kaggle set has 279), 1 to 100000.
        #[arg(long, default_value_t = 20, value_parser = int_in::<1, { datasets::synth::MAX_PATIENTS }>)]
        patients: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Mean patches per patient (Kaggle: 995), above 0 and at most 100000; times --patients,
        /// at most 1e8.
        #[arg(long, default_value_t = 995.0, value_parser = mean_patches)]
        mean_patches: f64,
        #[arg(long, default_value = "datasets/orig")]
        out: PathBuf,
        /// Replace an existing synthetic set made with other settings.
        #[arg(long)]
        force: bool,
    },
    /// Split a Kaggle-layout tree into training/validation/testing (hard links; originals untouched).
    Build {
        /// The unzipped Kaggle folder (or a `datasets synth` output).
        #[arg(long, default_value = "datasets/orig")]
        source: PathBuf,
        #[arg(long, default_value = "datasets/idc")]
        out: PathBuf,
        /// Keep patients whole (default) or split images at random like the tutorial.
        #[arg(long, value_parser = choice::<SplitBy>(), default_value_t = SplitBy::Patient)]
        split_by: SplitBy,
        /// Share of all patches for testing (tutorial: 0.2), in [0, 1).
        #[arg(long, default_value_t = 0.2, value_parser = fraction)]
        test_fraction: f64,
        /// Share of the remaining patches for validation (tutorial: 0.1), in [0, 1).
        #[arg(long, default_value_t = 0.1, value_parser = fraction)]
        val_fraction: f64,
        /// Seed of the project's SplitMix64 generator (tutorial: 42).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Replace an existing, different split.
        #[arg(long)]
        force: bool,
        /// Two files naming the same patch (x1 and x01, X.png and X.PNG): stop (error), or use
        /// the first in path order (keep-first).
        #[arg(long, value_parser = choice::<OnCollision>(), default_value_t = OnCollision::Error)]
        on_collision: OnCollision,
        /// Make any skipped file (unusable, colliding, Kaggle duplicate) an error.
        #[arg(long)]
        strict: bool,
    },
    /// Scan a folder and report patches, classes, patients and every problem file.
    Scan {
        #[arg(default_value = "datasets/orig")]
        dir: PathBuf,
        /// List at most this many problem files.
        #[arg(long, default_value_t = 20)]
        max_listed: usize,
        /// Exit with an error when any file would be skipped.
        #[arg(long)]
        strict: bool,
    },
}

fn mean_patches(s: &str) -> Result<f64, String> {
    float_in(s, 0.0, datasets::synth::MAX_MEAN_PATCHES, true)
}

fn fraction(s: &str) -> Result<f64, String> {
    let v = float_in(s, 0.0, 1.0, false)?;
    if v < 1.0 {
        Ok(v)
    } else {
        Err("must be below 1".into())
    }
}

fn main() -> ExitCode {
    exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Synth {
            patients,
            seed,
            mean_patches,
            out,
            force,
        } => synth(SynthOptions {
            patients,
            seed,
            mean_patches,
            out,
            force,
        }),
        Command::Build {
            source,
            out,
            split_by,
            test_fraction,
            val_fraction,
            seed,
            force,
            on_collision,
            strict,
        } => build_split(BuildOptions {
            source,
            out,
            split: SplitConfig {
                by: split_by,
                test_fraction,
                val_fraction,
                seed,
            },
            force,
            on_collision,
            strict,
        }),
        Command::Scan {
            dir,
            max_listed,
            strict,
        } => scan(&dir, max_listed, strict),
    }
}

fn synth(opts: SynthOptions) -> Result<()> {
    let start = Instant::now();
    let report = synth::synth(&opts, &progress_bar(0, "synth"))?;
    let verb = if report.outcome == synth::Outcome::UpToDate {
        "already there"
    } else {
        "made"
    };
    println!(
        "{}: {verb}: {} patients, {} patches ({:.1}% IDC, {} edge crops) in {:.1}s",
        opts.out.shown(),
        report.patients,
        report.patches,
        100.0 * report.idc as f64 / report.patches as f64,
        report.edge_crops,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn build_split(opts: BuildOptions) -> Result<()> {
    let start = Instant::now();
    let report = build(&opts)?;
    let out = &opts.out;
    eprint!("{}", report.scan.warnings(20));
    println!("{report}");
    match report.outcome {
        Outcome::UpToDate => {
            println!("{}: already holds this split; nothing written", out.shown())
        }
        Outcome::Built => println!(
            "{}: {} hard links, {} copies, manifest {} in {:.1}s",
            out.shown(),
            report.linked,
            report.copied,
            out.join(manifest::FILE_NAME).shown(),
            start.elapsed().as_secs_f64()
        ),
    }
    Ok(())
}

fn scan(dir: &Path, max_listed: usize, strict: bool) -> Result<()> {
    let scan = Scan::dir(dir)?;
    let [c0, c1] = scan.class_counts();
    let patients: std::collections::BTreeSet<&str> = scan
        .patches
        .iter()
        .map(|p| p.name.patient.as_str())
        .collect();
    println!(
        "{}: {} patches ({c0} class 0, {c1} class 1), {} patients, {} problem files, {} collisions, {} duplicates",
        dir.shown(),
        c0 + c1,
        patients.len(),
        scan.problems.len(),
        scan.collisions.len(),
        scan.duplicates
    );
    eprint!("{}", scan.warnings(max_listed));
    if strict {
        scan.strict(dir)?;
    }
    Ok(())
}
