//! `runtime eval` and `runtime predict`: the classification report over labelled patches, the
//! per-patient table, and the JSON, CSV and ROC outputs.

use crate::pipeline::{Item, Streamed};
use crate::session::Model;
use crate::settings::{ContextChoice, Threshold};
use anyhow::Result;
use common::Shown;
use common::fsutil::{AtomicFile, write_atomic};
use datasets::Problem;
use datasets::scan::{kaggle_duplicates_text, listed};
use evaluation::patients::{PatientCounts, PatientRow};
use evaluation::report::{Report, roc_curve};
use std::fmt::Write as _;
use std::path::Path;

/// Where and how the model ran: printed above every report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunInfo {
    pub model: String,
    pub provider: String,
    pub onnx_runtime: String,
    /// The ONNX Runtime library loaded (losslessly escaped).
    pub onnx_runtime_library: String,
    pub threads: usize,
    pub batch_size: usize,
    pub images: usize,
    /// Files skipped: problems plus Kaggle duplicates.
    pub skipped: usize,
    pub kaggle_duplicates: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub threshold: Threshold,
    /// Test-time augmentation built into the model's graph (its metadata says so).
    pub tta: bool,
    /// Neighbour context (`--context`), if asked for.
    pub context: Option<Context>,
    /// Peak resident memory of the process so far (Linux), for the flat-memory check.
    pub peak_rss_kib: Option<u64>,
}

/// Peak resident memory of this process (Linux `VmHWM`).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl RunInfo {
    pub fn new(
        model_path: &Path,
        model: &Model,
        batch_size: usize,
        images: usize,
        streamed: &Streamed,
        threshold: Threshold,
    ) -> RunInfo {
        let skipped = streamed.skipped();
        RunInfo {
            model: model_path.shown(),
            provider: model.provider.to_string(),
            onnx_runtime: model.ort_version.clone(),
            onnx_runtime_library: model.ort_path.shown(),
            threads: model.threads,
            batch_size,
            images,
            skipped,
            kaggle_duplicates: streamed.kaggle_copies,
            seconds: streamed.seconds,
            images_per_second: (images + skipped) as f64 / streamed.seconds.max(1e-9),
            threshold,
            tta: model.contract.tta,
            context: None,
            peak_rss_kib: peak_rss_kib(),
        }
    }

    pub fn header(&self) -> String {
        format!(
            "model {} | ONNX Runtime {} ({}) on {} | {} threads | batch {} | {} images in {:.1}s ({:.0} img/s) | {} skipped\nthreshold {} ({}){}{}",
            self.model,
            self.onnx_runtime,
            self.onnx_runtime_library,
            self.provider,
            self.threads,
            self.batch_size,
            self.images,
            self.seconds,
            self.images_per_second,
            self.skipped,
            self.threshold.value,
            self.threshold.source,
            if self.tta {
                " | test-time augmentation in the model (8 views)"
            } else {
                ""
            },
            self.context
                .as_ref()
                .map_or(String::new(), |c| format!("\n{}", c.line(self.images)))
        )
    }
}

/// Neighbour context as a run applied it (`evaluation::context`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Context {
    pub weight: f64,
    /// Where the weight came from: a flag, or the model's metadata.
    pub source: String,
    /// Patches with at least one grid neighbour (the others keep their own probability).
    pub with_neighbours: usize,
}

impl Context {
    /// What context did to `images` patches, in words.
    pub fn line(&self, images: usize) -> String {
        format!(
            "neighbour context ({}): each patch's log-odds averaged with its grid neighbours' at weight {} ({} of {images} patches had neighbours)",
            self.source, self.weight, self.with_neighbours
        )
    }
}

/// What `eval` and `predict` keep while the images stream past: the labelled (label,
/// probability) pairs for the report and the ROC curve (5 bytes an image), counts per patient,
/// and the predictions CSV, written row by row. With neighbour context every image waits in
/// `pending` (its neighbours may come later) until `settle` counts them all.
pub struct Tally {
    threshold: f64,
    context: Option<ContextChoice>,
    pending: Vec<(Item, f32)>,
    pub images: usize,
    pub predicted_idc: usize,
    pub labels: Vec<u8>,
    pub probs: Vec<f32>,
    patients: PatientCounts,
    predictions: Option<csv::Writer<AtomicFile>>,
}

impl Tally {
    /// A tally at `threshold`, writing the CSV of one row per image to `predictions` if given,
    /// with neighbour context as `context` says if given.
    pub fn new(
        threshold: f64,
        predictions: Option<&Path>,
        context: Option<ContextChoice>,
    ) -> Result<Tally> {
        let predictions = match predictions {
            Some(path) => {
                let mut w = csv::Writer::from_writer(AtomicFile::create(path)?);
                w.write_record([
                    "path",
                    "patient",
                    "x",
                    "y",
                    "label",
                    "probability",
                    "prediction",
                ])?;
                Some(w)
            }
            None => None,
        };
        Ok(Tally {
            threshold,
            context,
            pending: Vec::new(),
            images: 0,
            predicted_idc: 0,
            labels: Vec::new(),
            probs: Vec::new(),
            patients: PatientCounts::default(),
            predictions,
        })
    }

    pub fn add(&mut self, item: &Item, p: f32) -> Result<()> {
        if self.context.is_some() {
            self.pending.push((item.clone(), p));
            return Ok(());
        }
        self.count(item, p)
    }

    /// Counts the images `add` held back for neighbour context, with it; what context did.
    pub fn settle(&mut self) -> Result<Option<Context>> {
        let Some(ContextChoice { weight, source }) = self.context.clone() else {
            return Ok(None);
        };
        let pending = std::mem::take(&mut self.pending);
        let names: Vec<_> = pending.iter().map(|(item, _)| item.name.as_ref()).collect();
        let probs: Vec<f32> = pending.iter().map(|&(_, p)| p).collect();
        let smoothed = evaluation::context::smooth(&names, &probs, weight);
        for ((item, _), p) in pending.iter().zip(smoothed.probs) {
            self.count(item, p)?;
        }
        Ok(Some(Context {
            weight,
            source,
            with_neighbours: smoothed.with_neighbours,
        }))
    }

    fn count(&mut self, item: &Item, p: f32) -> Result<()> {
        let idc = p as f64 >= self.threshold;
        self.images += 1;
        self.predicted_idc += usize::from(idc);
        if let Some(label) = item.label {
            self.labels.push(label);
            self.probs.push(p);
        }
        let patient = item
            .name
            .as_ref()
            .map_or("(unnamed)", |n| n.patient.as_str());
        self.patients.add(patient, item.label, idc);
        if let Some(w) = &mut self.predictions {
            let opt = |v: Option<String>| v.unwrap_or_default();
            w.write_record([
                item.path.shown(),
                opt(item.name.as_ref().map(|n| n.patient.shown())),
                opt(item.name.as_ref().map(|n| n.x.to_string())),
                opt(item.name.as_ref().map(|n| n.y.to_string())),
                opt(item.label.map(|l| l.to_string())),
                format!("{p:.6}"),
                u8::from(idc).to_string(),
            ])?;
        }
        Ok(())
    }

    /// The classification report over the labelled images, if any.
    pub fn report(&self) -> Option<Report> {
        (!self.labels.is_empty()).then(|| Report::new(&self.labels, &self.probs, self.threshold))
    }

    /// One row per patient (true share and accuracy only where every patch is labelled).
    pub fn patient_rows(&self) -> Vec<PatientRow> {
        self.patients.rows()
    }

    /// Puts the predictions CSV in place (it is written to a temp file until then).
    pub fn finish(&mut self) -> Result<()> {
        if let Some(w) = self.predictions.take() {
            w.into_inner()
                .map_err(|e| anyhow::anyhow!("{}", e.error()))?
                .commit()?;
        }
        Ok(())
    }

    pub fn write_roc(&self, path: &Path) -> Result<()> {
        evaluation::plot::roc_chart(
            path,
            &roc_curve(&self.labels, &self.probs),
            evaluation::report::roc_auc(&self.labels, &self.probs),
        )
    }
}

/// The files a stream skipped: Kaggle's duplicates as a count, every other file named (at most
/// `max` here; all of them in `--json`).
pub fn skipped_text(streamed: &Streamed, max: usize) -> String {
    let mut s = String::new();
    if streamed.kaggle_copies > 0 {
        let _ = writeln!(
            s,
            "\nwarning: {}",
            kaggle_duplicates_text(streamed.kaggle_copies)
        );
    }
    let problems = &streamed.problems;
    if !problems.is_empty() {
        let _ = writeln!(s, "\nskipped {} files:", problems.len());
        s += &listed(problems, max);
        if problems.len() > max {
            s = s.trim_end().to_string() + " (all are in --json)\n";
        }
    }
    s
}

pub fn write_json(
    path: &Path,
    info: &RunInfo,
    report: Option<&Report>,
    patients: &[PatientRow],
    streamed: &Streamed,
) -> Result<()> {
    let skipped: Vec<_> = streamed.problems.iter().map(Problem::to_json).collect();
    let patients: Vec<_> = patients
        .iter()
        .map(|p| {
            let mut row = serde_json::to_value(p).expect("plain fields");
            row["patient"] = p.patient.shown().into();
            row
        })
        .collect();
    let json = serde_json::json!({ "run": info, "report": report, "patients": patients, "skipped": skipped });
    write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed(problems: usize, kaggle_copies: usize) -> Streamed {
        Streamed {
            problems: (0..problems)
                .map(|i| Problem::new(Path::new(&format!("f{i}.png")), "corrupt"))
                .collect(),
            kaggle_copies,
            seconds: 1.0,
        }
    }

    #[test]
    fn skipped_files_are_listed_up_to_the_limit_then_counted() {
        assert_eq!(skipped_text(&streamed(0, 0), 2), "");
        let two = skipped_text(&streamed(2, 0), 2);
        assert!(
            two.contains("skipped 2 files:\n  f0.png: corrupt\n  f1.png: corrupt\n")
                && !two.contains("more")
                && !two.contains("--json")
                && !two.contains("warning"),
            "{two}"
        );
        let three = skipped_text(&streamed(3, 0), 2);
        assert!(
            three.contains("  ... and 1 more (all are in --json)\n") && !three.contains("f2.png"),
            "{three}"
        );
        let copies = skipped_text(&streamed(0, 5), 2);
        assert!(
            copies.starts_with("\nwarning: skipped 5 duplicate patches")
                && !copies.contains("files:"),
            "{copies}"
        );
    }
}
