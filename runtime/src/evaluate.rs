//! `runtime eval` and `runtime predict`: the classification report over labelled patches, the
//! per-patient table, and the JSON, CSV and ROC outputs.

use crate::pipeline::{Item, Outcome};
use crate::session::Model;
use anyhow::Result;
use datasets::Problem;
use datasets::fsutil::write_atomic;
use datasets::report::{Report, roc_curve};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Where and how the model ran: printed above every report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunInfo {
    pub model: String,
    pub provider: String,
    pub onnx_runtime: String,
    pub threads: usize,
    pub batch_size: usize,
    pub images: usize,
    pub skipped: usize,
    pub seconds: f64,
    pub images_per_second: f64,
}

impl RunInfo {
    pub fn new(model_path: &Path, model: &Model, batch_size: usize, outcome: &Outcome) -> RunInfo {
        let images = outcome.probs.iter().filter(|p| p.is_some()).count();
        RunInfo {
            model: model_path.display().to_string(),
            provider: model.provider.to_string(),
            onnx_runtime: model.ort_version.clone(),
            threads: model.threads,
            batch_size,
            images,
            skipped: outcome.problems.len(),
            seconds: outcome.seconds,
            images_per_second: (images + outcome.problems.len()) as f64 / outcome.seconds.max(1e-9),
        }
    }

    pub fn header(&self) -> String {
        format!(
            "model {} | ONNX Runtime {} on {} | {} threads | batch {} | {} images in {:.1}s ({:.0} img/s) | {} skipped",
            self.model,
            self.onnx_runtime,
            self.provider,
            self.threads,
            self.batch_size,
            self.images,
            self.seconds,
            self.images_per_second,
            self.skipped
        )
    }
}

/// One patient's row: patches, true and predicted IDC share, accuracy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PatientRow {
    pub patient: String,
    pub patches: usize,
    pub true_idc_share: Option<f64>,
    pub predicted_idc_share: f64,
    pub accuracy: Option<f64>,
}

pub fn patient_rows(items: &[Item], probs: &[Option<f32>], threshold: f64) -> Vec<PatientRow> {
    let mut by: BTreeMap<String, Vec<(Option<u8>, bool)>> = BTreeMap::new();
    for (item, p) in items.iter().zip(probs) {
        if let Some(p) = p {
            let patient = item
                .name
                .as_ref()
                .map_or("(unnamed)".to_string(), |n| n.patient.clone());
            by.entry(patient)
                .or_default()
                .push((item.label, *p as f64 >= threshold));
        }
    }
    by.into_iter()
        .map(|(patient, v)| {
            let n = v.len() as f64;
            let labelled = v.iter().all(|(l, _)| l.is_some());
            PatientRow {
                patient,
                patches: v.len(),
                true_idc_share: labelled
                    .then(|| v.iter().filter(|(l, _)| *l == Some(1)).count() as f64 / n),
                predicted_idc_share: v.iter().filter(|(_, p)| *p).count() as f64 / n,
                accuracy: labelled
                    .then(|| v.iter().filter(|(l, p)| *l == Some(u8::from(*p))).count() as f64 / n),
            }
        })
        .collect()
}

pub fn patient_table(rows: &[PatientRow]) -> String {
    let mut s = format!(
        "\n{:>10}{:>9}{:>12}{:>12}{:>10}\n",
        "patient", "patches", "IDC true", "IDC pred", "accuracy"
    );
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    for r in rows {
        let _ = writeln!(
            s,
            "{:>10}{:>9}{:>12}{:>12}{:>10}",
            r.patient,
            r.patches,
            pct(r.true_idc_share),
            pct(Some(r.predicted_idc_share)),
            r.accuracy.map_or("-".into(), |a| format!("{a:.4}"))
        );
    }
    s
}

pub fn problems_text(problems: &[Problem], max: usize) -> String {
    let mut s = String::new();
    if !problems.is_empty() {
        let _ = writeln!(s, "\nskipped {} files:", problems.len());
        for p in problems.iter().take(max) {
            let _ = writeln!(s, "  {p}");
        }
        if problems.len() > max {
            let _ = writeln!(
                s,
                "  ... and {} more (all are in --json)",
                problems.len() - max
            );
        }
    }
    s
}

/// The labelled subset: (labels, probabilities).
pub fn labelled(items: &[Item], probs: &[Option<f32>]) -> (Vec<u8>, Vec<f32>) {
    items
        .iter()
        .zip(probs)
        .filter_map(|(i, p)| Some((i.label?, (*p)?)))
        .unzip()
}

pub fn report(items: &[Item], probs: &[Option<f32>], threshold: f64) -> Option<Report> {
    let (labels, p) = labelled(items, probs);
    (!labels.is_empty()).then(|| Report::new(&labels, &p, threshold))
}

pub fn write_json(
    path: &Path,
    info: &RunInfo,
    report: Option<&Report>,
    patients: &[PatientRow],
    problems: &[Problem],
) -> Result<()> {
    let skipped: Vec<_> = problems
        .iter()
        .map(|p| serde_json::json!({ "path": p.path, "reason": p.reason }))
        .collect();
    let json = serde_json::json!({ "run": info, "report": report, "patients": patients, "skipped": skipped });
    write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())
}

pub fn write_predictions(
    path: &Path,
    items: &[Item],
    probs: &[Option<f32>],
    threshold: f64,
) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "path",
        "patient",
        "x",
        "y",
        "label",
        "probability",
        "prediction",
    ])?;
    for (item, p) in items.iter().zip(probs) {
        let Some(p) = p else { continue };
        let opt = |v: Option<String>| v.unwrap_or_default();
        w.write_record([
            item.path.display().to_string(),
            opt(item.name.as_ref().map(|n| n.patient.clone())),
            opt(item.name.as_ref().map(|n| n.x.to_string())),
            opt(item.name.as_ref().map(|n| n.y.to_string())),
            opt(item.label.map(|l| l.to_string())),
            format!("{p:.6}"),
            u8::from(*p as f64 >= threshold).to_string(),
        ])?;
    }
    write_atomic(path, &w.into_inner()?)
}

pub fn write_roc(path: &Path, items: &[Item], probs: &[Option<f32>]) -> Result<()> {
    let (labels, p) = labelled(items, probs);
    datasets::plot::roc_chart(
        path,
        &roc_curve(&labels, &p),
        datasets::report::roc_auc(&labels, &p),
    )
}
