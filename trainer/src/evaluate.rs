//! A model's predictions over a split in eval mode, with test-time augmentation when asked; the
//! same with neighbour context, and the per-patient ranking summary the reports carry.

use crate::data::{Loader, Split};
use crate::test_report::PatientSummary;
use crate::train::images_tensor;
use burn::prelude::*;
use evaluation::patients::{PatientCounts, PatientRow};
use models::CancerNet;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A model's predictions over a split (eval mode).
#[derive(Default, Clone)]
pub struct Evaluated {
    pub labels: Vec<u8>,
    /// Probability of IDC per image.
    pub probs: Vec<f32>,
    /// Each image's index in the split (files that failed to decode are missing).
    pub indices: Vec<usize>,
    /// Mean unweighted cross-entropy.
    pub loss: f64,
    pub failed: Vec<datasets::Problem>,
}

/// Runs `model` over `split`, averaging the eight flips and quarter turns of each patch when `tta`.
pub fn evaluate<B: Backend>(
    model: &CancerNet<B>,
    split: &Arc<Split>,
    loader: &Loader,
    device: &B::Device,
    tta: bool,
) -> Evaluated {
    evaluate_some(
        model,
        split,
        (0..split.len()).collect(),
        loader,
        device,
        tta,
    )
}

/// `evaluate` over the patches `order` of `split`.
pub fn evaluate_some<B: Backend>(
    model: &CancerNet<B>,
    split: &Arc<Split>,
    order: Vec<usize>,
    loader: &Loader,
    device: &B::Device,
    tta: bool,
) -> Evaluated {
    let size = loader.pre.size as usize;
    let mut e = Evaluated::default();
    for batch in loader.batches(split, order, None, 0, None) {
        e.failed.extend(batch.failed.iter().cloned());
        if batch.is_empty() {
            continue;
        }
        let p = model.predict(images_tensor::<B>(&batch, size, device), tta);
        let p: Vec<f32> = p
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("f32 probabilities");
        for (i, &y) in batch.labels.iter().enumerate() {
            e.loss -= (p[i * 2 + y as usize] as f64).max(1e-7).ln();
            e.probs.push(p[i * 2 + 1]);
        }
        e.labels.extend_from_slice(&batch.labels);
        e.indices.extend_from_slice(&batch.indices);
    }
    e.loss /= e.labels.len().max(1) as f64;
    e
}

/// `e` with neighbour context (`evaluation::context` at `weight`): each patch's log-odds
/// averaged with those of its slide-grid neighbours in the split, named as `runtime` names them.
pub fn with_context(split: &Split, e: &Evaluated, weight: f64) -> Evaluated {
    let names: Vec<_> = e
        .indices
        .iter()
        .map(|&i| datasets::scan::patch_name(&split.paths[i]).ok())
        .collect();
    let names: Vec<_> = names.iter().map(Option::as_ref).collect();
    Evaluated {
        probs: evaluation::context::smooth(&names, &e.probs, weight).probs,
        labels: e.labels.clone(),
        indices: e.indices.clone(),
        loss: e.loss,
        failed: e.failed.clone(),
    }
}

/// Per-patient ranking quality (the guide's "each patient is ranked well, levels shift between
/// patients").
pub fn patient_summary(split: &Split, e: &Evaluated) -> PatientSummary {
    let mut by: BTreeMap<&str, (Vec<u8>, Vec<f32>)> = BTreeMap::new();
    for ((&i, &y), &p) in e.indices.iter().zip(&e.labels).zip(&e.probs) {
        let entry = by.entry(split.patients[i].as_str()).or_default();
        entry.0.push(y);
        entry.1.push(p);
    }
    let mut aucs: Vec<f64> = by
        .values()
        .filter_map(|(labels, probs)| evaluation::report::roc_auc(labels, probs))
        .collect();
    aucs.sort_by(f64::total_cmp);
    let median = match aucs.len() {
        0 => None,
        n if n % 2 == 1 => Some(aucs[n / 2]),
        n => Some((aucs[n / 2 - 1] + aucs[n / 2]) / 2.0),
    };
    PatientSummary {
        patients: by.len(),
        with_both_classes: aucs.len(),
        median_roc_auc: median,
    }
}

/// The per-patient table at `threshold`, as `runtime eval --patients` computes it.
pub fn patient_rows(split: &Split, e: &Evaluated, threshold: f64) -> Vec<PatientRow> {
    let mut counts = PatientCounts::default();
    for ((&i, &y), &p) in e.indices.iter().zip(&e.labels).zip(&e.probs) {
        counts.add(&split.patients[i], Some(y), p as f64 >= threshold);
    }
    counts.rows()
}
