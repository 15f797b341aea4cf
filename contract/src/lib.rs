#![forbid(unsafe_code)]
//! The contract between training and deployment: everything `runtime` needs from a trained model,
//! as typed values whose ONNX metadata keys are defined once, here. `exporter` writes it
//! (`Contract::to_metadata`); `runtime` reads it back (`Contract::from_metadata`) and checks every
//! value, since a model from someone else is input like any other. The preprocessing and the
//! patches' scale bring their own keys (`datasets::preprocess::keys`, `datasets::scale::keys`).
//! docs/architecture.md has the table of keys.

use anyhow::Result;
use common::Shown;
use datasets::CLASS_NAMES;
use datasets::preprocess::Preprocess;
use datasets::scale::PatchScale;
use evaluation::context::valid_weight;
use std::collections::HashMap;

/// The burn version the trainer is built with, as the run's provenance and the model's say.
pub const BURN_VERSION: &str = "0.21.0";

/// Metadata keys.
pub mod keys {
    /// `0: no IDC, 1: IDC`: the classes of the output's columns.
    pub const CLASSES: &str = "classes";
    pub const POSITIVE_CLASS: &str = "positive_class";
    /// The operating threshold, where it came from, and the neighbour weight it was chosen with
    /// (`ChosenFor`).
    pub const THRESHOLD: &str = "threshold";
    pub const THRESHOLD_SOURCE: &str = "threshold.source";
    pub const THRESHOLD_CONTEXT: &str = "threshold.context";
    /// Present when the graph averages each patch's 8 views (test-time augmentation).
    pub const TTA: &str = "tta";
    /// Neighbour context: the weight of each grid neighbour's log-odds (`evaluation::context`).
    pub const CONTEXT: &str = "context.weight";
}

/// The value of `keys::TTA`.
const TTA_TEXT: &str = "8 views: each patch's probabilities are the mean over its four flips and their \
     transposes, computed in the graph";

/// What a threshold holds for: the neighbour context of the predictions it was chosen on. The
/// one place that answers "does this threshold hold for this run's context".
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChosenFor {
    /// Fixed, not chosen on predictions: holds for any context (`any`).
    Any,
    /// Chosen on predictions without neighbour context (`none`).
    Without,
    /// Chosen on predictions with neighbour context at this weight.
    Weight(f64),
}

impl ChosenFor {
    /// A fixed threshold, or one chosen on predictions with `context`.
    pub fn new(fixed: bool, context: Option<f64>) -> ChosenFor {
        match context {
            _ if fixed => ChosenFor::Any,
            None => ChosenFor::Without,
            Some(w) => ChosenFor::Weight(w),
        }
    }

    /// Whether it holds for predictions with neighbour context `context` (`None`: without).
    pub fn holds_for(self, context: Option<f64>) -> bool {
        match self {
            ChosenFor::Any => true,
            ChosenFor::Without => context.is_none(),
            ChosenFor::Weight(w) => context == Some(w),
        }
    }

    /// The context it was chosen with (`None` for any or without), in words.
    pub fn context(self) -> Option<f64> {
        match self {
            ChosenFor::Weight(w) => Some(w),
            _ => None,
        }
    }

    fn to_value(self) -> String {
        match self {
            ChosenFor::Any => "any".into(),
            ChosenFor::Without => "none".into(),
            ChosenFor::Weight(w) => format!("{w}"),
        }
    }

    fn parse(v: &str) -> Option<ChosenFor> {
        match v.trim() {
            "any" => Some(ChosenFor::Any),
            "none" => Some(ChosenFor::Without),
            w => neighbour_weight(w).map(ChosenFor::Weight),
        }
    }
}

/// A model's operating threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelThreshold {
    pub value: f64,
    /// Where it came from (the trainer's words).
    pub source: String,
    pub chosen_for: ChosenFor,
}

/// A value of the metadata that did not parse: why (naming the key and the value), kept until a
/// run would use it, so that a flag can override it.
pub type Checked<T> = Result<T, String>;

/// Everything the ONNX metadata carries.
#[derive(Debug, Clone)]
pub struct Contract {
    /// `None` when the model has no preprocessing metadata, with why (runtime then needs flags).
    pub preprocess: Checked<Preprocess>,
    /// `Ok(None)`: a model exported before the patch scale was written.
    pub scale: Checked<Option<PatchScale>>,
    pub tta: bool,
    pub threshold: Option<Checked<ModelThreshold>>,
    pub context: Option<Checked<f64>>,
    /// The graph's tensors in words (`input`, `outputs`): written after the classes.
    pub graph: Vec<(String, String)>,
    /// Where the model came from (`model.config`, `train.*`, `toolchain`): written after the
    /// preprocessing and scale.
    pub provenance: Vec<(String, String)>,
    /// Whether `classes` is the two classes the report shows (absent counts as yes).
    pub classes: Checked<()>,
}

/// A metadata value as a neighbour context weight, if it is one in range.
fn neighbour_weight(v: &str) -> Option<f64> {
    let w = v.trim().parse::<f64>().ok()?;
    valid_weight(w).then_some(w)
}

impl Contract {
    /// A contract to write: everything checked.
    pub fn new(
        preprocess: Preprocess,
        scale: PatchScale,
        tta: bool,
        threshold: Option<ModelThreshold>,
        context: Option<f64>,
    ) -> Contract {
        Contract {
            preprocess: Ok(preprocess),
            scale: Ok(Some(scale)),
            tta,
            threshold: threshold.map(Ok),
            context: context.map(Ok),
            graph: Vec::new(),
            provenance: Vec::new(),
            classes: Ok(()),
        }
    }

    /// The metadata, in a fixed order (the same contract gives the same bytes). Values that did
    /// not parse are left out.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let classes = CLASS_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{i}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut m = vec![
            (keys::CLASSES.into(), classes),
            (
                keys::POSITIVE_CLASS.into(),
                format!("1 ({})", CLASS_NAMES[1]),
            ),
        ];
        m.extend(self.graph.iter().cloned());
        if let Ok(p) = &self.preprocess {
            m.extend(p.to_metadata());
        }
        if let Ok(Some(s)) = &self.scale {
            m.extend(s.to_metadata());
        }
        m.extend(self.provenance.iter().cloned());
        if let Some(Ok(t)) = &self.threshold {
            m.push((keys::THRESHOLD.into(), format!("{}", t.value)));
            m.push((keys::THRESHOLD_SOURCE.into(), t.source.clone()));
            m.push((keys::THRESHOLD_CONTEXT.into(), t.chosen_for.to_value()));
        }
        if self.tta {
            m.push((keys::TTA.into(), TTA_TEXT.into()));
        }
        if let Some(Ok(w)) = &self.context {
            m.push((keys::CONTEXT.into(), format!("{w}")));
        }
        m
    }

    /// Reads the contract back from a model's metadata; a value that does not parse is kept as
    /// the reason why, for the run that would use it to report.
    pub fn from_metadata(meta: &HashMap<String, String>) -> Contract {
        let context = meta.get(keys::CONTEXT).map(|v| {
            neighbour_weight(v).ok_or_else(|| {
                format!(
                    "metadata {} = \"{}\" is not a neighbour weight in (0, {}]",
                    keys::CONTEXT,
                    v.shown(),
                    evaluation::context::MAX_WEIGHT
                )
            })
        });
        // A model exported before `threshold.context` existed had its threshold chosen for its
        // own context (the exporter checked), or fixed: taken as chosen for the model's context.
        let own = match &context {
            Some(Ok(w)) => ChosenFor::Weight(*w),
            _ => ChosenFor::Without,
        };
        let threshold = meta.get(keys::THRESHOLD).map(|v| {
            let value = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|t| (0.0..=1.0).contains(t))
                .ok_or_else(|| {
                    format!(
                        "metadata {} = \"{}\" is not a number in [0, 1]",
                        keys::THRESHOLD,
                        v.shown()
                    )
                })?;
            let chosen_for = match meta.get(keys::THRESHOLD_CONTEXT) {
                None => own,
                Some(c) => ChosenFor::parse(c).ok_or_else(|| {
                    format!(
                        "metadata {} = \"{}\" is neither \"none\", \"any\" nor a neighbour weight",
                        keys::THRESHOLD_CONTEXT,
                        c.shown()
                    )
                })?,
            };
            Ok(ModelThreshold {
                value,
                source: meta
                    .get(keys::THRESHOLD_SOURCE)
                    .map_or(String::new(), |s| s.shown().to_string()),
                chosen_for,
            })
        });
        Contract {
            preprocess: Preprocess::from_metadata(meta).map_err(|e| format!("{e:#}")),
            scale: PatchScale::from_metadata(meta).map_err(|e| format!("{e:#}")),
            tta: meta.contains_key(keys::TTA),
            threshold,
            context,
            graph: Vec::new(),
            provenance: Vec::new(),
            classes: check_classes(meta),
        }
    }
}

/// The `classes` metadata, when present, must be the two classes the report shows.
fn check_classes(meta: &HashMap<String, String>) -> Checked<()> {
    let Some(classes) = meta.get(keys::CLASSES) else {
        return Ok(());
    };
    let parsed: Vec<(&str, &str)> = classes
        .split(", ")
        .filter_map(|c| c.split_once(": "))
        .collect();
    let ok = parsed.len() == 2
        && parsed[0].0 == "0"
        && parsed[1].0 == "1"
        && parsed
            .iter()
            .all(|(_, name)| !name.is_empty() && name.len() <= 64 && name.shown() == *name);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "metadata {} = \"{}\" is not \"0: <name>, 1: <name>\" (two plain names): not a model this report can describe",
            keys::CLASSES,
            classes.shown()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contract_reads_back_as_written() {
        let t = ModelThreshold {
            value: 0.375,
            source: "trainer: max BAC on validation".into(),
            chosen_for: ChosenFor::Weight(0.5),
        };
        let c = Contract::new(
            Preprocess::default(),
            PatchScale::default(),
            true,
            Some(t.clone()),
            Some(0.5),
        );
        let meta: HashMap<String, String> = c.to_metadata().into_iter().collect();
        let back = Contract::from_metadata(&meta);
        assert_eq!(back.preprocess, Ok(Preprocess::default()));
        assert_eq!(back.scale, Ok(Some(PatchScale::default())));
        assert!(back.tta && back.classes.is_ok());
        assert_eq!(back.threshold, Some(Ok(t)));
        assert_eq!(back.context, Some(Ok(0.5)));
        assert_eq!(meta[keys::CLASSES], "0: no IDC, 1: IDC");
    }

    #[test]
    fn what_a_threshold_holds_for() {
        assert!(ChosenFor::Any.holds_for(None) && ChosenFor::Any.holds_for(Some(2.0)));
        assert!(ChosenFor::Without.holds_for(None) && !ChosenFor::Without.holds_for(Some(0.5)));
        assert!(ChosenFor::Weight(0.5).holds_for(Some(0.5)));
        assert!(
            !ChosenFor::Weight(0.5).holds_for(Some(0.75))
                && !ChosenFor::Weight(0.5).holds_for(None)
        );
        for c in [ChosenFor::Any, ChosenFor::Without, ChosenFor::Weight(0.75)] {
            assert_eq!(ChosenFor::parse(&c.to_value()), Some(c));
        }
        assert_eq!(ChosenFor::new(true, Some(0.5)), ChosenFor::Any);
        assert_eq!(ChosenFor::parse("often"), None);
        assert_eq!(ChosenFor::parse("0"), None, "not a weight in range");
    }

    #[test]
    fn bad_values_are_kept_as_reasons_naming_key_and_value() {
        let meta: HashMap<String, String> = [
            (keys::THRESHOLD, "nan"),
            (keys::CONTEXT, "9"),
            (keys::CLASSES, "0: a, 1: b, 2: c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = Contract::from_metadata(&meta);
        let why = |r: Option<&Checked<f64>>| r.unwrap().clone().unwrap_err();
        assert!(why(c.context.as_ref()).contains("context.weight = \"9\""));
        let t = c.threshold.unwrap().unwrap_err();
        assert!(t.contains("threshold = \"nan\""), "{t}");
        assert!(c.classes.unwrap_err().contains("classes"));
        assert!(c.preprocess.is_err() && c.scale == Ok(None) && !c.tta);
        let mut meta = HashMap::new();
        meta.insert(keys::THRESHOLD.to_string(), "0.4".to_string());
        meta.insert(keys::THRESHOLD_CONTEXT.to_string(), "often".to_string());
        let t = Contract::from_metadata(&meta)
            .threshold
            .unwrap()
            .unwrap_err();
        assert!(t.contains("threshold.context = \"often\""), "{t}");
        // Before threshold.context existed: chosen for the model's own context.
        meta.remove(keys::THRESHOLD_CONTEXT);
        meta.insert(keys::CONTEXT.to_string(), "0.75".to_string());
        let t = Contract::from_metadata(&meta).threshold.unwrap().unwrap();
        assert_eq!(t.chosen_for, ChosenFor::Weight(0.75));
    }
}
