//! BatchNorm statistics recomputed after training: on the training split (precise BatchNorm,
//! `eval.precise_bn`), or on each test patient's own patches (AdaBN, for cross-validation's
//! comparison).

use crate::config::TrainConfig;
use crate::data::{Loader, Split};
use crate::evaluate::{Evaluated, evaluate_some};
use crate::splits::Data;
use crate::train::images_tensor;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use datasets::rng::Rng;
use models::CancerNet;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `model` with precise BatchNorm statistics (`CancerNet::precise_batch_norm`) from one
/// unaugmented pass over the training split, shuffled and batched as in training.
pub fn precise_bn<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model: CancerNet<B>,
    data: &Data,
    device: &B::Device,
) -> CancerNet<B> {
    let order = (0..data.train.len()).collect();
    bn_statistics_from(cfg, model, &data.train, order, &data.loader, device)
}

/// `model` with its BatchNorm statistics recomputed on the patches `order` of `split`, in a
/// seeded shuffle, batched as in training (files that fail are left out; evaluation reports them).
fn bn_statistics_from<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model: CancerNet<B>,
    split: &Arc<Split>,
    mut order: Vec<usize>,
    loader: &Loader,
    device: &B::Device,
) -> CancerNet<B> {
    // A stream no epoch's shuffle uses.
    Rng::derive(cfg.train.seed, u64::MAX).shuffle(&mut order);
    let size = cfg.model.input_size;
    let batches = loader
        .batches(split, order, None, 0, None)
        .into_iter()
        .filter(|batch| !batch.is_empty())
        .map(|batch| images_tensor::<B>(&batch, size, device));
    model.precise_batch_norm(batches)
}

/// Each patient of `split` evaluated by `model` with BatchNorm statistics recomputed on that
/// patient's own patches, without their labels (AdaBN, Li et al. 2016): the stain and scanner
/// shift between patients, taken out per patient in feature space. Without and with TTA.
pub fn evaluate_per_patient_bn<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model: &CancerNet<B>,
    split: &Arc<Split>,
    loader: &Loader,
    device: &B::Device,
) -> [Evaluated; 2] {
    let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in split.patients.iter().enumerate() {
        by.entry(p.as_str()).or_default().push(i);
    }
    let mut all = [Evaluated::default(), Evaluated::default()];
    for order in by.into_values() {
        let adapted =
            bn_statistics_from(cfg, model.clone(), split, order.clone(), loader, device).valid();
        for (all, tta) in all.iter_mut().zip([false, true]) {
            let e = evaluate_some(&adapted, split, order.clone(), loader, device, tta);
            let n = (all.labels.len(), e.labels.len());
            all.loss = (all.loss * n.0 as f64 + e.loss * n.1 as f64) / (n.0 + n.1).max(1) as f64;
            all.labels.extend(e.labels);
            all.probs.extend(e.probs);
            all.indices.extend(e.indices);
            all.failed.extend(e.failed);
        }
    }
    all
}
