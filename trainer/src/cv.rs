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
use crate::train::{self, Options, Start};
use anyhow::{Context, Result, bail, ensure};
use burn::tensor::backend::AutodiffBackend;
use common::Shown;
use common::fsutil::write_atomic;
use datasets::split::{SplitConfig, kfold};
use datasets::{Patch, Scan};
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

/// The metrics summarized over folds.
pub const METRICS: [&str; 7] = [
    "balanced_accuracy",
    "f1_idc",
    "roc_auc",
    "pr_auc",
    "sensitivity",
    "specificity",
    "median_patient_roc_auc",
];

pub fn run<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: B::Device,
    opts: &Options,
    cv: &CvOptions,
) -> Result<serde_json::Value> {
    cfg.validate()?;
    ensure!(
        (2..=50).contains(&cv.folds),
        "--folds {} must be between 2 and 50",
        cv.folds
    );
    ensure!(
        (0.0..1.0).contains(&cv.val_fraction) && cv.val_fraction > 0.0,
        "--cv-val-fraction {} must be in (0, 1)",
        cv.val_fraction
    );
    let sources = if cv.sources.is_empty() {
        vec![cfg.data.root.clone()]
    } else {
        cv.sources.clone()
    };
    let pool = pool(&sources, opts.strict)?;
    let patients: BTreeSet<&str> = pool.iter().map(|p| p.name.patient.as_str()).collect();
    ensure!(
        patients.len() >= cv.folds,
        "{} patients cannot fill {} folds: use fewer folds",
        patients.len(),
        cv.folds
    );
    let folds = kfold(&pool, cv.folds, cv.seed);
    let out = &cfg.output;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.shown()))?;
    println!(
        "cross-validation: {} folds by patient over {} patients ({} patches) from {}; seed {}",
        cv.folds,
        patients.len(),
        pool.len(),
        sources
            .iter()
            .map(|s| s.shown())
            .collect::<Vec<_>>()
            .join(", "),
        cv.seed
    );
    let mut per_fold = Vec::new();
    for fold in 0..cv.folds {
        println!("\n=== fold {}/{}", fold + 1, cv.folds);
        match train_fold::<B>(cfg, device.clone(), opts, cv, &pool, &folds, fold)? {
            Some(report) => per_fold.push(report),
            None => {
                println!(
                    "stopped in fold {} as asked (--stop-after); the same command continues it",
                    fold + 1
                );
                return Ok(serde_json::Value::Null);
            }
        }
    }
    // Written with the summary: a refused or interrupted cross-validation leaves the last
    // finished one's table alone.
    write_fold_table(&out.join("cv-folds.csv"), &pool, &folds)?;
    let summary = summarize(&per_fold);
    let json = serde_json::json!({
        "folds": cv.folds,
        "seed": cv.seed,
        "val_fraction": cv.val_fraction,
        "sources": sources.iter().map(|s| s.shown()).collect::<Vec<_>>(),
        "patients": patients.len(),
        "patches": pool.len(),
        "fold_assignment": "cv-folds.csv",
        "config": cfg,
        "per_fold": per_fold,
        "summary": summary,
    });
    write_atomic(
        &out.join("cv.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    write_atomic(
        &out.join("cv.csv"),
        summary_csv(&per_fold, &summary)?.as_bytes(),
    )?;
    print!("\n{}", summary_table(&per_fold, &summary));
    println!(
        "cross-validation written to {} (cv.json, cv.csv, cv-folds.csv, fold-*/)",
        out.shown()
    );
    Ok(json)
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

/// Trains (or reuses) one fold and returns its test report, with the fold's sizes; `None` when
/// `--stop-after` stopped it.
fn train_fold<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: B::Device,
    opts: &Options,
    cv: &CvOptions,
    pool: &[Patch],
    folds: &[usize],
    fold: usize,
) -> Result<Option<serde_json::Value>> {
    let mut fold_cfg = cfg.clone();
    fold_cfg.output = cfg.output.join(format!("fold-{}", fold + 1));
    let (test, rest) = split_off(pool.iter().cloned().zip(folds.iter().copied()), fold);
    let inner = SplitConfig {
        test_fraction: 0.0,
        val_fraction: cv.val_fraction,
        seed: cv.seed,
        ..SplitConfig::default()
    }
    .assign(&rest);
    let (val, train) = split_off(rest.into_iter().zip(inner), 1);
    let names = |v: &[Patch]| {
        v.iter()
            .map(|p| p.name.patient.clone())
            .collect::<BTreeSet<_>>()
    };
    let provenance = serde_json::json!({
        "cross_validation": { "fold": fold + 1, "folds": cv.folds, "seed": cv.seed },
        "training": names(&train),
        "validation": names(&val),
        "testing": names(&test),
    });
    let sizes = serde_json::json!({
        "fold": fold + 1,
        "patients": { "training": names(&train).len(), "validation": names(&val).len(), "testing": names(&test).len() },
        "patches": { "training": train.len(), "validation": val.len(), "testing": test.len() },
        "testing_idc_share": test.iter().filter(|p| p.label == 1).count() as f64 / test.len().max(1) as f64,
    });
    ensure!(
        train.iter().any(|p| p.label == 0) && train.iter().any(|p| p.label == 1),
        "fold {}: the training patients have one class only; use fewer folds",
        fold + 1
    );
    let run = RunDir {
        root: fold_cfg.output.clone(),
    };
    let config_yaml = fold_cfg.to_yaml()?;
    let fold_opts = Options {
        resume: true,
        variants: true,
        ..opts.clone()
    };
    // A fold folder of another cross-validation (other folds, seed, sources or validation
    // share) holds other patients: never reused or resumed.
    let earlier: Option<serde_json::Value> = std::fs::read_to_string(run.root.join(RUN_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if let Some(earlier) = earlier
        && earlier["splits"] != provenance
        && !opts.force
    {
        bail!(
            "{} holds fold {} of another cross-validation (its patients differ: other --folds, \
             --cv-seed, --cv-source or --cv-val-fraction); pass --force to start over there, or \
             choose another --output",
            run.root.shown(),
            fold + 1
        );
    }
    let start = train::plan_start(&run, &config_yaml, &fold_opts)?;
    if start != Start::AlreadyDone {
        let splits = [
            Split::from_patches("training", train, Vec::new()),
            Split::from_patches("validation", val, Vec::new()),
            Split::from_patches("testing", test, Vec::new()),
        ];
        let data = Data::new(&fold_cfg, &fold_opts, splits, provenance)?;
        let outcome =
            train::train_on::<B>(&fold_cfg, device, &fold_opts, &config_yaml, start, data)?;
        if outcome.interrupted {
            return Ok(None);
        }
    } else {
        println!(
            "fold {} is complete in {}; reused",
            fold + 1,
            run.root.shown()
        );
    }
    let path = run.root.join(crate::checkpoint::TEST_REPORT_FILE);
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.shown()))?,
    )
    .with_context(|| format!("malformed {}", path.shown()))?;
    Ok(Some(serde_json::json!({ "sizes": sizes, "test": report })))
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
fn metric(fold: &serde_json::Value, variant: &str, name: &str) -> Option<f64> {
    let t = &fold["test"];
    let v = if variant == "configured" {
        t
    } else {
        &t["variants"][variant]
    };
    if name == "median_patient_roc_auc" {
        v["patients"]["median_roc_auc"].as_f64()
    } else {
        v["report"][name].as_f64()
    }
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

/// Mean and sample standard deviation of each metric of each variant over the folds.
fn summarize(per_fold: &[serde_json::Value]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for variant in VARIANTS {
        let mut m = serde_json::Map::new();
        for name in METRICS {
            let values: Vec<f64> = per_fold
                .iter()
                .filter_map(|f| metric(f, variant, name))
                .collect();
            let (mean, sd) = mean_sd(&values);
            m.insert(
                name.into(),
                serde_json::json!({ "mean": mean, "sd": sd, "folds": values.len() }),
            );
        }
        out.insert(variant.into(), m.into());
    }
    out.into()
}

/// Mean and sample standard deviation (n - 1); NaN where undefined.
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, if v.len() > 1 { var.sqrt() } else { f64::NAN })
}

fn summary_csv(per_fold: &[serde_json::Value], summary: &serde_json::Value) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["variant".to_string(), "fold".to_string()];
    header.extend(METRICS.iter().map(|m| m.to_string()));
    w.write_record(&header)?;
    let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for variant in VARIANTS {
        for (k, fold) in per_fold.iter().enumerate() {
            let mut row = vec![variant.to_string(), (k + 1).to_string()];
            row.extend(METRICS.iter().map(|m| num(metric(fold, variant, m))));
            w.write_record(&row)?;
        }
        for stat in ["mean", "sd"] {
            let mut row = vec![variant.to_string(), stat.to_string()];
            row.extend(
                METRICS
                    .iter()
                    .map(|m| num(summary[variant][m][stat].as_f64())),
            );
            w.write_record(&row)?;
        }
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

fn summary_table(per_fold: &[serde_json::Value], summary: &serde_json::Value) -> String {
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
            let (mean, sd) = (
                summary[variant][m]["mean"].as_f64(),
                summary[variant][m]["sd"].as_f64(),
            );
            let text = match (mean, sd) {
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
