//! The operating threshold of a run: fixed in the config, or chosen on the validation split
//! (`max_bac`, `sensitivity`), with the evaluation it was chosen for (`threshold.json`, which the
//! exporter writes into the model).

use crate::config::TrainConfig;
use crate::evaluate::Evaluated;

/// A threshold and where it came from. One chosen on validation holds for the model it was
/// chosen with (the configured checkpoint, averaged or not, with precise BatchNorm or not, with or
/// without TTA and neighbour context); a fixed one for any.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChosenThreshold {
    pub threshold: f64,
    pub source: String,
    /// Fixed in the config, not chosen on a model's predictions.
    #[serde(default)]
    pub fixed: bool,
    /// The evaluation it was chosen with (its fields sit beside these in `threshold.json`).
    #[serde(flatten)]
    pub chosen_with: Evaluation,
}

/// How a run's model is evaluated: which model, and which views and context it sees. Every field
/// defaults, so a `threshold.json` written before a field existed still loads.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// The checkpoint's epoch.
    #[serde(default)]
    pub epoch: usize,
    #[serde(default)]
    pub tta: bool,
    /// The average of the epochs up to `epoch` (`eval.checkpoint: average`).
    #[serde(default)]
    pub averaged: bool,
    /// BatchNorm statistics recomputed on the training split (`eval.precise_bn`).
    #[serde(default)]
    pub precise_bn: bool,
    /// Neighbour context at this weight (`eval.context`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<f64>,
}

impl Evaluation {
    /// "epoch 40 (averaged, precise BatchNorm) with TTA and neighbour context 0.5".
    pub fn in_words(&self) -> String {
        let how: Vec<&str> = [
            (self.averaged, "averaged"),
            (self.precise_bn, "precise BatchNorm"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let with: Vec<String> = [
            self.tta.then(|| "TTA".to_string()),
            self.context.map(|w| format!("neighbour context {w}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        format!(
            "epoch {}{}{}",
            self.epoch,
            if how.is_empty() {
                String::new()
            } else {
                format!(" ({})", how.join(", "))
            },
            if with.is_empty() {
                String::new()
            } else {
                format!(" with {}", with.join(" and "))
            }
        )
    }
}

impl ChosenThreshold {
    /// What it holds for, as the model's metadata says it (`threshold.context`).
    pub fn chosen_for(&self) -> contract::ChosenFor {
        contract::ChosenFor::new(self.fixed, self.chosen_with.context)
    }

    /// Whether it holds for evaluation `e`: a fixed one for any; one chosen on predictions for
    /// the same model and views, and the context `ChosenFor` says.
    pub fn holds_for(&self, e: &Evaluation) -> bool {
        let same_model = Evaluation {
            context: e.context,
            ..self.chosen_with
        } == *e;
        self.chosen_for().holds_for(e.context) && (self.fixed || same_model)
    }
}

pub fn choose_threshold(cfg: &TrainConfig, val: &Evaluated, epoch: usize) -> ChosenThreshold {
    use crate::config::{Threshold, ThresholdRule};
    use evaluation::report::{threshold_for_sensitivity, threshold_max_bac};
    let averaged = cfg.eval.checkpoint == crate::config::CheckpointChoice::Average;
    let fixed = |threshold: f64, source: String| ChosenThreshold {
        threshold,
        source,
        fixed: true,
        chosen_with: Evaluation {
            epoch,
            tta: cfg.eval.tta,
            averaged,
            precise_bn: cfg.eval.precise_bn,
            context: cfg.eval.context,
        },
    };
    let (rule, chosen) = match cfg.eval.threshold {
        Threshold::Fixed(t) => {
            return fixed(t, "fixed in the trainer config (eval.threshold)".into());
        }
        Threshold::Rule(ThresholdRule::MaxBac) => (
            "highest balanced accuracy".to_string(),
            threshold_max_bac(&val.labels, &val.probs),
        ),
        Threshold::Rule(ThresholdRule::Sensitivity) => (
            format!("sensitivity >= {}", cfg.eval.target_sensitivity),
            threshold_for_sensitivity(&val.labels, &val.probs, cfg.eval.target_sensitivity),
        ),
    };
    match chosen {
        Some(t) => {
            let chosen = fixed(
                t,
                format!(
                    "{rule} on the validation split ({} patches)",
                    val.labels.len()
                ),
            );
            ChosenThreshold {
                source: format!("{}, {}", chosen.source, chosen.chosen_with.in_words()),
                fixed: false,
                ..chosen
            }
        }
        None => fixed(
            0.5,
            format!("0.5: the validation split has one class only, so {rule} cannot be chosen"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `threshold.json` keeps its layout (the evaluation's fields beside the threshold's, in
    /// the order the trainer wrote before), and a file from before `context` existed loads.
    #[test]
    fn threshold_json_layout_is_stable() {
        let json = r#"{
  "threshold": 0.5,
  "source": "fixed in the trainer config (eval.threshold)",
  "fixed": true,
  "epoch": 40,
  "tta": true,
  "averaged": true,
  "precise_bn": true,
  "context": 0.5
}"#;
        let t: ChosenThreshold = serde_json::from_str(json).unwrap();
        assert_eq!(t.chosen_with.context, Some(0.5));
        assert_eq!(serde_json::to_string_pretty(&t).unwrap(), json);
        let old = r#"{"threshold": 0.3, "source": "max_bac", "epoch": 2, "averaged": true}"#;
        let t: ChosenThreshold = serde_json::from_str(old).unwrap();
        let want = Evaluation {
            epoch: 2,
            averaged: true,
            ..Evaluation::default()
        };
        assert!(!t.fixed && t.chosen_with == want);
        let json = serde_json::to_string(&t).unwrap();
        assert!(!json.contains("context"), "{json}");
    }
}
