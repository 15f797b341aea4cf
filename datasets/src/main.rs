use anyhow::Result;
use clap::{Parser, Subcommand};
use datasets::build::{BuildOptions, Outcome, build};
use datasets::cli::{exit_code, progress_bar};
use datasets::split::{SplitBy, SplitConfig};
use datasets::synth::{self, SynthOptions};
use datasets::{Scan, manifest};
use std::path::PathBuf;
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
        /// Number of patients (the Kaggle set has 279).
        #[arg(long, default_value_t = 20)]
        patients: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Mean patches per patient (Kaggle: 995).
        #[arg(long, default_value_t = 995.0)]
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
        #[arg(long, value_enum, default_value_t = SplitBy::Patient)]
        split_by: SplitBy,
        /// Share of all patches for testing (tutorial: 0.2).
        #[arg(long, default_value_t = 0.2)]
        test_fraction: f64,
        /// Share of the remaining patches for validation (tutorial: 0.1).
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        /// Seed of the project's SplitMix64 generator (tutorial: 42).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Replace an existing, different split.
        #[arg(long)]
        force: bool,
    },
    /// Scan a folder and report patches, classes, patients and every problem file.
    Scan {
        #[arg(default_value = "datasets/orig")]
        dir: PathBuf,
        /// List at most this many problem files.
        #[arg(long, default_value_t = 20)]
        max_listed: usize,
    },
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
        } => {
            let start = Instant::now();
            let opts = SynthOptions {
                patients,
                seed,
                mean_patches,
                out,
                force,
            };
            let report = synth::synth(&opts, &progress_bar(0, "synth"))?;
            let verb = if report.outcome == synth::Outcome::UpToDate {
                "already there"
            } else {
                "made"
            };
            println!(
                "{}: {verb}: {} patients, {} patches ({:.1}% IDC, {} edge crops) in {:.1}s",
                opts.out.display(),
                report.patients,
                report.patches,
                100.0 * report.idc as f64 / report.patches as f64,
                report.edge_crops,
                start.elapsed().as_secs_f64()
            );
        }
        Command::Build {
            source,
            out,
            split_by,
            test_fraction,
            val_fraction,
            seed,
            force,
        } => {
            let start = Instant::now();
            let split = SplitConfig {
                by: split_by,
                test_fraction,
                val_fraction,
                seed,
            };
            let report = build(&BuildOptions {
                source: source.clone(),
                out: out.clone(),
                split,
                force,
            })?;
            eprint!("{}", report.scan.warnings(20));
            println!("{report}");
            match report.outcome {
                Outcome::UpToDate => println!(
                    "{}: already holds this split; nothing written",
                    out.display()
                ),
                Outcome::Built => println!(
                    "{}: {} hard links, {} copies, manifest {} in {:.1}s",
                    out.display(),
                    report.linked,
                    report.copied,
                    out.join(manifest::FILE_NAME).display(),
                    start.elapsed().as_secs_f64()
                ),
            }
        }
        Command::Scan { dir, max_listed } => {
            let scan = Scan::dir(&dir)?;
            let [c0, c1] = scan.class_counts();
            let patients: std::collections::BTreeSet<&str> = scan
                .patches
                .iter()
                .map(|p| p.name.patient.as_str())
                .collect();
            println!(
                "{}: {} patches ({c0} class 0, {c1} class 1), {} patients, {} problem files, {} duplicates",
                dir.display(),
                c0 + c1,
                patients.len(),
                scan.problems.len(),
                scan.duplicates
            );
            eprint!("{}", scan.warnings(max_listed));
        }
    }
    Ok(())
}
