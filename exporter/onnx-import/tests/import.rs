//! burn-onnx's import of the exported file computes what the original burn model computes.

use burn::backend::Flex;
use burn::prelude::*;
use onnx_import_check::{cancernet, spec};

#[test]
fn burn_onnx_import_matches_the_original_model() {
    let tmp = tempfile::tempdir().unwrap();
    trainer::checkpoint::write_random_run(tmp.path(), &spec::config(), spec::SEED).unwrap();
    let original = exporter::export::load(tmp.path(), Some(exporter::export::Checkpoint::Best))
        .unwrap()
        .model;
    let device = Default::default();
    let imported: cancernet::Model<Flex> = cancernet::Model::default();
    let s = spec::config().input_size;
    let n = 6;
    let x: Vec<f32> = (0..n * 3 * s * s)
        .map(|i| ((i * 31) % 97) as f32 / 96.0)
        .collect();
    let input = || Tensor::<Flex, 4>::from_data(TensorData::new(x.clone(), [n, 3, s, s]), &device);
    let want: Vec<f32> = original
        .probabilities(input())
        .into_data()
        .to_vec()
        .unwrap();
    let (probabilities, _logits) = imported.forward(input());
    let got: Vec<f32> = probabilities.into_data().to_vec().unwrap();
    assert_eq!(got.len(), want.len());
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(max <= 1e-4, "max |original - imported| = {max}");
}
