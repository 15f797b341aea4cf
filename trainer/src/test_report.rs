//! `test_report.json`, the run's final report on its testing split: written by `report`, read
//! back by cross-validation (`cv`), which summarizes its metrics over the folds.

use crate::checkpoint::TEST_REPORT_FILE;
use crate::threshold::ChosenThreshold;
use anyhow::{Context, Result};
use common::Shown;
use common::fsutil::write_atomic;
use evaluation::patients::PatientRow;
use evaluation::report::Report;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestReport {
    /// Always "testing".
    pub split: String,
    /// `eval.checkpoint`'s name.
    pub checkpoint: String,
    pub checkpoint_epoch: usize,
    pub precise_bn: bool,
    /// Mean unweighted cross-entropy.
    pub loss: f64,
    pub tta: bool,
    /// Neighbour context's weight, when `eval.context`.
    pub context: Option<f64>,
    pub threshold: ChosenThreshold,
    pub report: Report,
    pub patients: PatientSummary,
    /// The per-patient table at the threshold, as `runtime eval --patients` computes it (empty
    /// in reports written before it was).
    #[serde(default)]
    pub per_patient: Vec<PatientRow>,
    /// Each testing image that could not be used (`datasets::Problem::to_json`).
    pub skipped: Vec<serde_json::Value>,
    /// Cross-validation's ablation (`variants`), by name; empty otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, Variant>,
}

/// Per-patient ranking quality: ROC AUC within each patient that has both classes, and their
/// median.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatientSummary {
    pub patients: usize,
    pub with_both_classes: usize,
    pub median_roc_auc: Option<f64>,
}

/// One other way of evaluating the run: its threshold, the report at it, the patients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Variant {
    pub threshold: f64,
    pub report: Report,
    pub patients: PatientSummary,
    /// The model's epoch, for the variants that use another model than the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<usize>,
}

impl TestReport {
    /// Written through a JSON value, whose maps keep their keys sorted: the file reads as it
    /// always has (the threshold's fields among them).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let value = serde_json::to_value(self)?;
        write_atomic(
            &dir.join(TEST_REPORT_FILE),
            serde_json::to_string_pretty(&value)?.as_bytes(),
        )
    }

    pub fn read(dir: &Path) -> Result<TestReport> {
        let path = dir.join(TEST_REPORT_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.shown()))?;
        serde_json::from_str(&text).with_context(|| format!("malformed {}", path.shown()))
    }

    /// The report and patients of the variant `name` ("configured": the run's own).
    pub fn variant(&self, name: &str) -> Option<(&Report, &PatientSummary)> {
        if name == "configured" {
            Some((&self.report, &self.patients))
        } else {
            let v = self.variants.get(name)?;
            Some((&v.report, &v.patients))
        }
    }
}
