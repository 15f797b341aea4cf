//! The per-patient table: each patient's patches, true and predicted IDC share and accuracy at
//! the run's threshold. `runtime eval --patients` prints it and writes it to `--json`; the
//! trainer writes it into `test_report.json` (`per_patient`), so the two can be compared row by
//! row.

use common::Shown;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One patient's row: patches, true and predicted IDC share, accuracy (the true share and
/// accuracy only where every patch is labelled).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PatientRow {
    pub patient: String,
    pub patches: usize,
    pub true_idc_share: Option<f64>,
    pub predicted_idc_share: f64,
    pub accuracy: Option<f64>,
}

/// Counts per patient as predictions arrive, in patient order.
#[derive(Debug, Default)]
pub struct PatientCounts(BTreeMap<String, Counts>);

#[derive(Debug, Default)]
struct Counts {
    patches: usize,
    labelled: usize,
    true_idc: usize,
    predicted_idc: usize,
    correct: usize,
}

impl PatientCounts {
    /// One patch of `patient`: its label when known, and whether it was called IDC.
    pub fn add(&mut self, patient: &str, label: Option<u8>, idc: bool) {
        if !self.0.contains_key(patient) {
            self.0.insert(patient.to_string(), Counts::default());
        }
        let c = self.0.get_mut(patient).expect("just inserted");
        c.patches += 1;
        c.predicted_idc += usize::from(idc);
        if let Some(label) = label {
            c.labelled += 1;
            c.true_idc += usize::from(label == 1);
            c.correct += usize::from(label == u8::from(idc));
        }
    }

    /// One row per patient.
    pub fn rows(&self) -> Vec<PatientRow> {
        self.0
            .iter()
            .map(|(patient, c)| {
                let n = c.patches as f64;
                let labelled = c.labelled == c.patches;
                PatientRow {
                    patient: patient.clone(),
                    patches: c.patches,
                    true_idc_share: labelled.then(|| c.true_idc as f64 / n),
                    predicted_idc_share: c.predicted_idc as f64 / n,
                    accuracy: labelled.then(|| c.correct as f64 / n),
                }
            })
            .collect()
    }
}

/// The rows as the terminal shows them.
pub fn table(rows: &[PatientRow]) -> String {
    let mut s = format!(
        "\n{:>10}{:>9}{:>12}{:>12}{:>10}\n",
        "patient", "patches", "IDC true", "IDC pred", "accuracy"
    );
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    for r in rows {
        let _ = writeln!(
            s,
            "{:>10}{:>9}{:>12}{:>12}{:>10}",
            r.patient.shown(),
            r.patches,
            pct(r.true_idc_share),
            pct(Some(r.predicted_idc_share)),
            r.accuracy.map_or("-".into(), |a| format!("{a:.4}"))
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_count_each_patient_and_leave_unlabelled_ones_blank() {
        let mut c = PatientCounts::default();
        for (p, label, idc) in [
            ("b", Some(1), true),
            ("a", Some(0), true),
            ("b", Some(1), false),
            ("a", Some(0), false),
            ("b", Some(0), false),
            ("c", None, true),
        ] {
            c.add(p, label, idc);
        }
        let rows = c.rows();
        let names: Vec<&str> = rows.iter().map(|r| r.patient.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(
            rows[1],
            PatientRow {
                patient: "b".into(),
                patches: 3,
                true_idc_share: Some(2.0 / 3.0),
                predicted_idc_share: 1.0 / 3.0,
                accuracy: Some(2.0 / 3.0),
            }
        );
        assert_eq!((rows[2].true_idc_share, rows[2].accuracy), (None, None));
        assert_eq!(rows[2].predicted_idc_share, 1.0);
        let text = table(&rows);
        assert!(
            text.contains("         b        3       66.7%       33.3%    0.6667"),
            "{text}"
        );
        assert!(
            text.contains("         c        1           -      100.0%         -"),
            "{text}"
        );
    }
}
