//! Patient-level k-fold cross-validation (`trainer --folds K`): the question a pathologist asks
//! is how the model does on the next patient, so every patient is tested exactly once, by a model
//! that never saw any of its patches. The patients of one or more Kaggle-layout trees are put in
//! K folds balanced in size and IDC share (seeded); for each fold the other patients are split
//! into training and validation by patient, and the fold is trained, checkpointed and reported by
//! the normal training path into `<output>/fold-<k>/` (a rerun reuses finished folds and resumes
//! an unfinished one). The summary, per fold and as mean ± standard deviation, goes to
//! `cv.json`, `cv.csv` and the terminal; the fold of every patient to `cv-folds.csv`.

use crate::checkpoint::{RUN_FILE, RunDir};
use crate::config::TrainConfig;
use crate::data::Split;
use crate::splits::Data;
use crate::test_report::{PatientSummary, TestReport};
use crate::train::{self, Options, Start};
use anyhow::{Context, Result, bail, ensure};
use burn::tensor::backend::AutodiffBackend;
use common::Shown;
use common::fsutil::write_atomic;
use datasets::split::{SplitConfig, kfold};
use datasets::{Patch, Scan};
use evaluation::report::Report;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How to cross-validate.
#[derive(Debug, Clone)]
pub struct CvOptions {
    pub folds: usize,
    /// Kaggle-layout trees whose patients are pooled (none: `data.root`).
    pub sources: Vec<PathBuf>,
    pub seed: u64,
    /// Share of each fold's training patients' patches held out for validation.
    pub val_fraction: f64,
}

/// A metric summarized over folds: its name, and its value in a report variant.
pub type Metric = (&'static str, fn(&Report, &PatientSummary) -> Option<f64>);

/// The metrics summarized over folds.
pub const METRICS: [Metric; 7] = [
    ("balanced_accuracy", |r, _| Some(r.balanced_accuracy)),
    ("f1_idc", |r, _| Some(r.f1_idc)),
    ("roc_auc", |r, _| r.roc_auc),
    ("pr_auc", |r, _| r.pr_auc),
    ("sensitivity", |r, _| Some(r.sensitivity)),
    ("specificity", |r, _| Some(r.specificity)),
    ("median_patient_roc_auc", |_, p| p.median_roc_auc),
];

/// The files a cross-validation writes in its output folder, beside `fold-<k>/`.
pub const SUMMARY_FILE: &str = "cv.json";
pub const SUMMARY_CSV: &str = "cv.csv";
pub const FOLDS_FILE: &str = "cv-folds.csv";

impl CvOptions {
    fn validate(&self) -> Result<()> {
        ensure!(
            (2..=50).contains(&self.folds),
            "--folds {} must be between 2 and 50",
            self.folds
        );
        ensure!(
            (0.0..1.0).contains(&self.val_fraction) && self.val_fraction > 0.0,
            "--cv-val-fraction {} must be in (0, 1)",
            self.val_fraction
        );
        Ok(())
    }
}

/// Cross-validates (see the module's notes); `Null` when `--stop-after` stopped it.
pub fn run<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: B::Device,
    opts: &Options,
    cv: &CvOptions,
) -> Result<serde_json::Value> {
    cfg.validate()?;
    cv.validate()?;
    let sources = if cv.sources.is_empty() {
        vec![cfg.data.root.clone()]
    } else {
        cv.sources.clone()
    };
    let pool = pool(&sources, opts.strict)?;
    let patients = pool
        .iter()
        .map(|p| p.name.patient.as_str())
        .collect::<BTreeSet<_>>()
        .len();
    ensure!(
        patients >= cv.folds,
        "{patients} patients cannot fill {} folds: use fewer folds",
        cv.folds
    );
    let folds = kfold(&pool, cv.folds, cv.seed);
    let out = &cfg.output;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.shown()))?;
    let sources: Vec<String> = sources.iter().map(|s| s.shown()).collect();
    println!(
        "cross-validation: {} folds by patient over {patients} patients ({} patches) from {}; seed {}",
        cv.folds,
        pool.len(),
        sources.join(", "),
        cv.seed
    );
    let mut per_fold = Vec::new();
    for fold in 0..cv.folds {
        println!("\n=== fold {}/{}", fold + 1, cv.folds);
        let split = FoldSplit::new(cv, &pool, &folds, fold);
        match train_fold::<B>(cfg, device.clone(), opts, cv, split, fold)? {
            Some(report) => per_fold.push(report),
            None => {
                println!(
                    "stopped in fold {} as asked (--stop-after); the same command{} continues it",
                    fold + 1,
                    if opts.force { " without --force" } else { "" }
                );
                return Ok(serde_json::Value::Null);
            }
        }
    }
    // Written with the summary: a refused or interrupted cross-validation leaves the last
    // finished one's table alone.
    write_fold_table(&out.join(FOLDS_FILE), &pool, &folds)?;
    let summary = summarize(&per_fold);
    let json = serde_json::json!({
        "folds": cv.folds,
        "seed": cv.seed,
        "val_fraction": cv.val_fraction,
        "sources": sources,
        "patients": patients,
        "patches": pool.len(),
        "fold_assignment": FOLDS_FILE,
        "config": cfg,
        "per_fold": per_fold,
        "summary": summary,
    });
    write_summary(out, &json, &per_fold, &summary)?;
    Ok(json)
}

/// cv.json, cv.csv and the summary table on the terminal.
fn write_summary(
    out: &Path,
    json: &serde_json::Value,
    per_fold: &[FoldResult],
    summary: &Summary,
) -> Result<()> {
    write_atomic(
        &out.join(SUMMARY_FILE),
        serde_json::to_string_pretty(json)?.as_bytes(),
    )?;
    write_atomic(
        &out.join(SUMMARY_CSV),
        summary_csv(per_fold, summary)?.as_bytes(),
    )?;
    print!("\n{}", summary_table(per_fold, summary));
    println!(
        "cross-validation written to {} ({SUMMARY_FILE}, {SUMMARY_CSV}, {FOLDS_FILE}, fold-*/)",
        out.shown()
    );
    Ok(())
}

/// The patches of every source, one list; a patient in two sources is an error.
fn pool(sources: &[PathBuf], strict: bool) -> Result<Vec<Patch>> {
    let mut all = Vec::new();
    let mut owner: BTreeMap<String, PathBuf> = BTreeMap::new();
    for source in sources {
        let scan = Scan::dir(source)?;
        if strict {
            scan.strict(source)?;
        }
        eprint!("{}", scan.warnings(20));
        for p in &scan.patches {
            if let Some(other) = owner.get(&p.name.patient)
                && other != source
            {
                bail!(
                    "patient {} is in both {} and {}: a patient must be in one source",
                    p.name.patient.shown(),
                    other.shown(),
                    source.shown()
                );
            }
            owner.insert(p.name.patient.clone(), source.clone());
        }
        all.extend(scan.patches);
    }
    ensure!(
        !all.is_empty(),
        "no patches in the cross-validation sources"
    );
    Ok(all)
}

fn write_fold_table(path: &Path, pool: &[Patch], folds: &[usize]) -> Result<()> {
    let mut per: BTreeMap<(&str, usize), [usize; 2]> = BTreeMap::new();
    for (p, &f) in pool.iter().zip(folds) {
        let c = per.entry((p.name.patient.as_str(), f + 1)).or_default();
        c[0] += 1;
        c[1] += p.label as usize;
    }
    let mut text = String::from("patient,fold,patches,idc_patches\n");
    for ((patient, fold), [n, idc]) in per {
        let _ = writeln!(text, "{patient},{fold},{n},{idc}");
    }
    write_atomic(path, text.as_bytes())
}

/// One fold's result in `cv.json`: its sizes and its run's test report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FoldResult {
    pub sizes: FoldSizes,
    pub test: TestReport,
}

/// Patients and patches per split of one fold.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FoldSizes {
    pub fold: usize,
    pub patients: SplitCounts,
    pub patches: SplitCounts,
    pub testing_idc_share: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SplitCounts {
    pub training: usize,
    pub validation: usize,
    pub testing: usize,
}

/// One fold's patients: trained on, validated on, tested on.
struct FoldSplit {
    train: Vec<Patch>,
    val: Vec<Patch>,
    test: Vec<Patch>,
}

impl FoldSplit {
    /// Fold `fold` tested, the other patients split into training and validation by patient.
    fn new(cv: &CvOptions, pool: &[Patch], folds: &[usize], fold: usize) -> FoldSplit {
        let (test, rest) = split_off(pool.iter().cloned().zip(folds.iter().copied()), fold);
        let inner = SplitConfig {
            test_fraction: 0.0,
            val_fraction: cv.val_fraction,
            seed: cv.seed,
            ..SplitConfig::default()
        }
        .assign(&rest);
        let (val, train) = split_off(rest.into_iter().zip(inner), 1);
        FoldSplit { train, val, test }
    }

    fn patients(v: &[Patch]) -> BTreeSet<String> {
        v.iter().map(|p| p.name.patient.clone()).collect()
    }

    /// The run's `splits` provenance: which patients each split holds.
    fn provenance(&self, cv: &CvOptions, fold: usize) -> serde_json::Value {
        serde_json::json!({
            "cross_validation": { "fold": fold + 1, "folds": cv.folds, "seed": cv.seed },
            "training": Self::patients(&self.train),
            "validation": Self::patients(&self.val),
            "testing": Self::patients(&self.test),
        })
    }

    fn sizes(&self, fold: usize) -> FoldSizes {
        let count = |f: &dyn Fn(&[Patch]) -> usize| SplitCounts {
            training: f(&self.train),
            validation: f(&self.val),
            testing: f(&self.test),
        };
        let idc = self.test.iter().filter(|p| p.label == 1).count();
        FoldSizes {
            fold: fold + 1,
            patients: count(&|v| Self::patients(v).len()),
            patches: count(&|v| v.len()),
            testing_idc_share: idc as f64 / self.test.len().max(1) as f64,
        }
    }
}

/// Trains (or reuses) one fold and returns its test report, with the fold's sizes; `None` when
/// `--stop-after` stopped it.
fn train_fold<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: B::Device,
    opts: &Options,
    cv: &CvOptions,
    split: FoldSplit,
    fold: usize,
) -> Result<Option<FoldResult>> {
    let mut fold_cfg = cfg.clone();
    fold_cfg.output = cfg.output.join(format!("fold-{}", fold + 1));
    let (provenance, sizes) = (split.provenance(cv, fold), split.sizes(fold));
    ensure!(
        split.train.iter().any(|p| p.label == 0) && split.train.iter().any(|p| p.label == 1),
        "fold {}: the training patients have one class only; use fewer folds",
        fold + 1
    );
    let run = RunDir {
        root: fold_cfg.output.clone(),
    };
    refuse_other_cv(&run, &provenance, opts.force, fold)?;
    let config_yaml = fold_cfg.to_yaml()?;
    let fold_opts = Options {
        resume: true,
        variants: true,
        ..opts.clone()
    };
    let start = train::plan_start(&run, &config_yaml, &fold_opts)?;
    if start == Start::AlreadyDone {
        println!(
            "fold {} is complete in {}; reused",
            fold + 1,
            run.root.shown()
        );
    } else {
        let splits = [
            Split::from_patches("training", split.train, Vec::new()),
            Split::from_patches("validation", split.val, Vec::new()),
            Split::from_patches("testing", split.test, Vec::new()),
        ];
        let data = Data::new(&fold_cfg, &fold_opts, splits, provenance)?;
        let outcome =
            train::train_on::<B>(&fold_cfg, device, &fold_opts, &config_yaml, start, data)?;
        if outcome.interrupted {
            return Ok(None);
        }
    }
    let test = TestReport::read(&run.root)?;
    Ok(Some(FoldResult { sizes, test }))
}

/// A fold folder of another cross-validation (other folds, seed, sources or validation share)
/// holds other patients: never reused or resumed, unless `force`.
fn refuse_other_cv(
    run: &RunDir,
    provenance: &serde_json::Value,
    force: bool,
    fold: usize,
) -> Result<()> {
    let earlier: Option<serde_json::Value> = std::fs::read_to_string(run.root.join(RUN_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if let Some(earlier) = earlier
        && earlier["splits"] != *provenance
        && !force
    {
        bail!(
            "{} holds fold {} of another cross-validation (its patients differ: other --folds, \
             --cv-seed, --cv-source or --cv-val-fraction); pass --force to start over there, or \
             choose another --output",
            run.root.shown(),
            fold + 1
        );
    }
    Ok(())
}

/// The patches of group `g`, and the others.
fn split_off(patches: impl Iterator<Item = (Patch, usize)>, g: usize) -> (Vec<Patch>, Vec<Patch>) {
    let (mut hit, mut rest) = (Vec::new(), Vec::new());
    for (p, group) in patches {
        if group == g {
            hit.push(p);
        } else {
            rest.push(p);
        }
    }
    (hit, rest)
}

/// One metric of a fold's report variant (`configured` is the run's own setting).
fn metric(fold: &FoldResult, variant: &str, (_, value): Metric) -> Option<f64> {
    let (report, patients) = fold.test.variant(variant)?;
    value(report, patients)
}

/// The variants summarized: the configured one, then TTA x threshold from the same models, then
/// the last epoch's model instead of the best one, then the means of the last 5, 10 and 20
/// epochs' weights (`variants::AVERAGED`), then the last and the mean of 10 with precise BatchNorm
/// statistics (`precise_bn::precise_bn`), then the mean of 10 with BatchNorm statistics from each test
/// patient's own patches, then the configured model with neighbour context (`evaluation::context`).
pub const VARIANTS: [&str; 21] = [
    "configured",
    "plain@0.5",
    "plain@max_bac",
    "tta@0.5",
    "tta@max_bac",
    "last-plain@0.5",
    "last-tta@0.5",
    "avg5-plain@0.5",
    "avg5-tta@0.5",
    "avg10-plain@0.5",
    "avg10-tta@0.5",
    "avg20-plain@0.5",
    "avg20-tta@0.5",
    "last-pbn-plain@0.5",
    "last-pbn-tta@0.5",
    "avg10-pbn-plain@0.5",
    "avg10-pbn-tta@0.5",
    "avg10-adabn-plain@0.5",
    "avg10-adabn-tta@0.5",
    "plain-context@0.5",
    "tta-context@0.5",
];

/// A metric's mean and sample standard deviation over the folds that have it (NaN where
/// undefined: `null` in cv.json, blank in cv.csv).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Stat {
    pub mean: f64,
    pub sd: f64,
    pub folds: usize,
}

impl Stat {
    fn mean(&self) -> Option<f64> {
        Some(self.mean).filter(|v| !v.is_nan())
    }

    fn sd(&self) -> Option<f64> {
        Some(self.sd).filter(|v| !v.is_nan())
    }
}

/// Each variant's metrics' statistics, by variant and metric name.
pub type Summary = BTreeMap<&'static str, BTreeMap<&'static str, Stat>>;

/// Mean and sample standard deviation of each metric of each variant over the folds.
fn summarize(per_fold: &[FoldResult]) -> Summary {
    let stat = |variant, m| {
        let values: Vec<f64> = per_fold
            .iter()
            .filter_map(|f| metric(f, variant, m))
            .collect();
        let (mean, sd) = mean_sd(&values);
        let folds = values.len();
        Stat { mean, sd, folds }
    };
    VARIANTS
        .into_iter()
        .map(|v| (v, METRICS.into_iter().map(|m| (m.0, stat(v, m))).collect()))
        .collect()
}

/// Mean and sample standard deviation (n - 1); NaN where undefined.
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, if v.len() > 1 { var.sqrt() } else { f64::NAN })
}

fn summary_csv(per_fold: &[FoldResult], summary: &Summary) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["variant".to_string(), "fold".to_string()];
    header.extend(METRICS.iter().map(|m| m.0.to_string()));
    w.write_record(&header)?;
    let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for variant in VARIANTS {
        for (k, fold) in per_fold.iter().enumerate() {
            let mut row = vec![variant.to_string(), (k + 1).to_string()];
            row.extend(METRICS.iter().map(|&m| num(metric(fold, variant, m))));
            w.write_record(&row)?;
        }
        let stats = &summary[variant];
        for (name, value) in [("mean", Stat::mean as fn(&Stat) -> _), ("sd", Stat::sd)] {
            let mut row = vec![variant.to_string(), name.to_string()];
            row.extend(METRICS.iter().map(|m| num(value(&stats[m.0]))));
            w.write_record(&row)?;
        }
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

fn summary_table(per_fold: &[FoldResult], summary: &Summary) -> String {
    let short = ["BAC", "F1", "ROC AUC", "PR AUC", "sens", "spec", "pat. AUC"];
    // Wide enough for the longest variant's name and a space.
    let w = VARIANTS.iter().map(|v| v.len()).max().unwrap_or(0) + 1;
    let mut s = format!("{:<w$}", "fold (configured)");
    for h in short {
        let _ = write!(s, "{h:>12}");
    }
    s.push('\n');
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    for (k, fold) in per_fold.iter().enumerate() {
        let _ = write!(s, "{:<w$}", k + 1);
        for m in METRICS {
            let _ = write!(s, "{:>12}", cell(metric(fold, "configured", m)));
        }
        s.push('\n');
    }
    let _ = writeln!(s, "\nmean ± sd over folds");
    for variant in VARIANTS {
        let _ = write!(s, "{variant:<w$}");
        for m in METRICS {
            let stat = &summary[variant][m.0];
            let text = match (stat.mean(), stat.sd()) {
                (Some(a), Some(b)) => format!("{a:.3}±{b:.3}"),
                _ => "-".into(),
            };
            let _ = write!(s, "{text:>12}");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_sd() {
        let (m, sd) = mean_sd(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!(mean_sd(&[1.0]).1.is_nan());
    }
}
