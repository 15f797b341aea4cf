//! What a run applies on top of the model's probabilities, resolved once from the flags, the
//! model's metadata (`contract`) and the defaults, with where each came from: the operating
//! threshold and neighbour context. Every command that classifies uses these.

use anyhow::{Result, bail};
use common::Shown;
use contract::Contract;
use std::path::Path;

/// The threshold a run uses, and where it came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Threshold {
    pub value: f64,
    pub source: String,
}

/// Neighbour context a run applies (`evaluation::context`), and where it came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContextChoice {
    pub weight: f64,
    pub source: String,
}

/// The threshold and context of a run.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub threshold: Threshold,
    pub context: Option<ContextChoice>,
}

/// The flags that set them (`None`: not given).
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    pub threshold: Option<f64>,
    pub context: Option<bool>,
    pub context_weight: Option<f64>,
}

impl Resolved {
    /// Context first: which threshold holds depends on it. `path` names the model in errors.
    pub fn new(contract: &Contract, flags: Flags, path: &Path) -> Result<Resolved> {
        let context = context(contract, flags.context, flags.context_weight, path)?;
        let threshold = threshold(
            contract,
            flags.threshold,
            context.as_ref().map(|c| c.weight),
            path,
        )?;
        Ok(Resolved { threshold, context })
    }
}

/// `--threshold` when given, else the model's own (its metadata, checked: it is input like
/// any other) when it holds for this run's neighbour context (`context`), else 0.5; with
/// where it came from.
pub fn threshold(
    contract: &Contract,
    flag: Option<f64>,
    context: Option<f64>,
    path: &Path,
) -> Result<Threshold> {
    if let Some(t) = flag {
        return Ok(Threshold {
            value: t,
            source: "--threshold".into(),
        });
    }
    let t = match &contract.threshold {
        None => {
            return Ok(Threshold {
                value: 0.5,
                source: "default; the model has no threshold in its metadata".into(),
            });
        }
        Some(Err(why)) => bail!("{}: {why}; pass --threshold to override it", path.shown()),
        Some(Ok(t)) => t,
    };
    if !t.chosen_for.holds_for(context) {
        let words = |w: Option<f64>| {
            w.map_or("without neighbour context".into(), |w| {
                format!("with neighbour context at weight {w}")
            })
        };
        return Ok(Threshold {
            value: 0.5,
            source: format!(
                "default; the model's threshold {} ({}) was chosen {}, and this run \
                 evaluates {}: pass --threshold to set one for it",
                t.value,
                t.source,
                words(t.chosen_for.context()),
                words(context)
            ),
        });
    }
    Ok(Threshold {
        value: t.value,
        source: format!("from the model's metadata; {}", t.source),
    })
}

/// Neighbour context from `--context[=BOOL]` (`flag`) and `--context-weight` (`weight`,
/// which implies it), else from the model's metadata (checked: it is input like any other),
/// else none; with where it came from.
pub fn context(
    contract: &Contract,
    flag: Option<bool>,
    weight: Option<f64>,
    path: &Path,
) -> Result<Option<ContextChoice>> {
    let choice = |weight: f64, source: &str| {
        Ok(Some(ContextChoice {
            weight,
            source: source.into(),
        }))
    };
    match (flag, weight) {
        (Some(false), Some(_)) => {
            bail!(
                "--context-weight applies neighbour context, which --context=false turns off: drop one of them"
            )
        }
        (Some(false), None) => return Ok(None),
        (_, Some(w)) => return choice(w, "--context-weight"),
        _ => {}
    }
    let from_model = match &contract.context {
        None => None,
        Some(Ok(w)) => Some(*w),
        Some(Err(why)) => bail!(
            "{}: {why}; pass --context-weight W or --context=false to override it",
            path.shown()
        ),
    };
    match (flag, from_model) {
        (_, Some(w)) => choice(w, "from the model's metadata"),
        (Some(true), None) => choice(evaluation::context::DEFAULT_WEIGHT, "--context"),
        _ => Ok(None),
    }
}
