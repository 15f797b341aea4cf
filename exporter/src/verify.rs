//! Verification: the exported file and burn run the same patches (the run's own, else synthetic
//! ones), and must agree to 1e-4 on every probability and on every call.

use crate::export::{B, Loaded, Options};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use common::Shown;
use datasets::Scan;
use datasets::preprocess::Preprocess;
use std::path::Path;

pub struct Verification {
    /// The ONNX Runtime library that ran the file, and its version.
    pub library: String,
    pub images: usize,
    pub source: String,
    pub max_abs_diff: f32,
}

/// The largest |burn - ONNX Runtime| IDC probability and the number of patches whose argmax
/// differs; `burn` holds both classes' probabilities per patch, `ort_idc` the IDC one. A NaN on
/// either side makes the difference NaN (`f32::max` would drop it) and counts as a disagreement,
/// so weights that give NaN never pass as verified.
fn compare(burn: &[f32], ort_idc: &[f32]) -> (f32, usize) {
    let mut max_abs_diff = 0f32;
    let mut disagree = 0;
    for (b, &o) in burn.chunks_exact(2).zip(ort_idc) {
        let diff = (b[1] - o).abs();
        max_abs_diff = if max_abs_diff.is_nan() || diff.is_nan() {
            f32::NAN
        } else {
            max_abs_diff.max(diff)
        };
        let nan = b[0].is_nan() || diff.is_nan();
        disagree += usize::from(nan || (b[1] >= b[0]) != (o >= 1.0 - o));
    }
    (max_abs_diff, disagree)
}

/// Within 1e-4 everywhere and the same call for every patch.
fn agree(max_abs_diff: f32, disagree: usize) -> bool {
    max_abs_diff <= 1e-4 && disagree == 0
}

/// Up to `n` patches for verification: real ones from `given` (`--verify-data`; an error when
/// it holds no decodable patch), else from the run's testing split when it holds some, else
/// synthetic.
fn verification_batch(
    given: Option<&Path>,
    testing: Option<&Path>,
    pre: &Preprocess,
    n: usize,
) -> Result<(Vec<f32>, usize, String)> {
    if let Some(dir) = given {
        return real_patches(dir, pre, n).with_context(|| {
            format!(
                "--verify-data {} cannot be verified with: give a folder of patches (a split, or a Kaggle-layout tree), or leave the flag out",
                dir.shown()
            )
        });
    }
    if let Some(found) = testing.and_then(|dir| real_patches(dir, pre, n).ok()) {
        return Ok(found);
    }
    let per = pre.len();
    let slide = datasets::synth::Slide::plan(7, 0, 200.0);
    let mut rng = datasets::rng::Rng::new(7);
    let mut images = vec![0.0; n * per];
    for (i, tile) in slide.tiles.iter().cycle().take(n).enumerate() {
        let img = pre.resize(datasets::synth::render(tile, &slide.stain, &mut rng));
        pre.to_chw(&img, &mut images[i * per..(i + 1) * per]);
    }
    Ok((images, n, format!("{n} synthetic patches")))
}

/// Up to `n` of `dir`'s patches, spread over it in path order, those that decode (a file that
/// does not is passed over: runtime and trainer report those); an error, saying why, when none
/// does or `dir` is no folder.
fn real_patches(dir: &Path, pre: &Preprocess, n: usize) -> Result<(Vec<f32>, usize, String)> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.shown());
    }
    let mut patches = Scan::dir(dir)?.patches;
    if patches.is_empty() {
        bail!(
            "{} holds no patch files (<patient>_idx5_x<X>_y<Y>_class<C>.png)",
            dir.shown()
        );
    }
    patches.sort_by(|a, b| a.path.cmp(&b.path));
    let per = pre.len();
    let step = (patches.len() / n).max(1);
    let mut images = Vec::new();
    let mut first_error = None;
    for p in patches.iter().step_by(step).take(n) {
        let start = images.len();
        images.resize(start + per, 0.0);
        if let Err(e) = pre.load_into(&p.path, &mut images[start..]) {
            images.truncate(start);
            first_error.get_or_insert_with(|| format!("{}: {e}", p.path.shown()));
        }
    }
    let count = images.len() / per;
    match first_error {
        Some(e) if count == 0 => bail!("no patch of {} decodes (the first: {e})", dir.shown()),
        _ => Ok((
            images,
            count,
            format!("{count} patches from {}", dir.shown()),
        )),
    }
}

/// Runs the same batch through burn and ONNX Runtime (CPU); fails with the numbers when they differ.
pub fn verify(loaded: &Loaded, onnx: &Path, opts: &Options) -> Result<Verification> {
    let pre = loaded.preprocess;
    let testing = loaded.data_root.as_ref().map(|r| r.join("testing"));
    let (images, n, source) =
        verification_batch(opts.verify_data.as_deref(), testing.as_deref(), &pre, 64)?;
    let s = pre.size as usize;
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(images.clone(), [n, 3, s, s]),
        &Default::default(),
    );
    let burn_probs: Vec<f32> = loaded
        .model
        .predict(x, opts.tta_for(loaded))
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32");
    let session_opts = runtime::session::Options {
        ep: runtime::session::Ep::Cpu,
        threads: 0,
        ort_lib: opts.ort_lib.as_deref(),
        preprocess: None,
        max_model_bytes: runtime::session::MAX_MODEL_BYTES,
    };
    let mut model = runtime::session::Model::open(onnx, &session_opts)
        .context("verification: ONNX Runtime cannot load the exported file")?;
    let ort_idc = model.predict(&images, n)?;
    let (max_abs_diff, disagree) = compare(&burn_probs, &ort_idc);
    if !agree(max_abs_diff, disagree) {
        bail!(
            "verification failed on {source}: max |burn - onnxruntime| = {max_abs_diff:.3e} (limit 1e-4), {disagree} of {n} argmax disagree; {} not written",
            opts.out.shown()
        );
    }
    Ok(Verification {
        library: format!(
            "ONNX Runtime {} ({})",
            model.ort_version,
            model.ort_path.shown()
        ),
        images: n,
        source,
        max_abs_diff,
    })
}

#[cfg(test)]
mod tests;
