//! `runtime predict` and `runtime heatmap`: probabilities per patch, and heatmaps with each patch
//! at its coordinates in the colour scale's colour.

use super::{runtime, small_synth, stdout_ok};
use crate::common::model;
use std::path::Path;

#[test]
fn predict_and_heatmap() {
    let tmp = tempfile::tempdir().unwrap();
    let onnx = model(tmp.path());
    let data = small_synth(tmp.path());
    // Unlabelled images: arbitrary names in a flat folder.
    let flat = tmp.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    for (i, p) in datasets::Scan::dir(&data)
        .unwrap()
        .patches
        .iter()
        .take(10)
        .enumerate()
    {
        std::fs::copy(&p.path, flat.join(format!("img{i}.png"))).unwrap();
    }
    // `runtime <command> <dir> --model <onnx> <extra...>`, which must succeed: its stdout.
    let with_model = |command: &str, dir: &Path, extra: &[&str]| {
        let base = [
            command,
            dir.to_str().unwrap(),
            "--model",
            onnx.to_str().unwrap(),
        ];
        stdout_ok(&runtime(&[&base[..], extra].concat()))
    };
    let preds = tmp.path().join("p.csv");
    // --strict passes when nothing was skipped.
    let out = with_model(
        "predict",
        &flat,
        &["--predictions", preds.to_str().unwrap(), "--strict"],
    );
    assert!(out.contains("10 images:"), "{out}");
    // At threshold 0 every image is predicted IDC.
    let out = with_model("predict", &flat, &["--threshold", "0"]);
    assert!(
        out.contains("10 images: 10 predicted IDC, 0 predicted no IDC (threshold 0)"),
        "{out}"
    );
    // `eval` on the same unlabelled images says why it has no report.
    let out = with_model("eval", &flat, &[]);
    assert!(
        out.contains("no labelled images") && !out.contains("10 images:"),
        "{out}"
    );
    assert_eq!(
        csv::Reader::from_path(&preds).unwrap().records().count(),
        10
    );
    let hm = tmp.path().join("hm");
    // --strict passes here too: nothing was skipped.
    let out = with_model(
        "heatmap",
        &data,
        &["--out", hm.to_str().unwrap(), "--strict"],
    );
    assert!(out.contains("3 heatmaps"), "{out}");
    assert_eq!(std::fs::read_dir(&hm).unwrap().count(), 3);
}

/// The heatmap's colour scale: blue at 0, yellow at 0.5, red at 1, straight lines between, and
/// probabilities outside [0, 1] clamped.
#[test]
fn heatmap_colours_run_blue_yellow_red() {
    let rgb = |p: f32| runtime::heatmap::colour(p).0;
    assert_eq!(rgb(0.0), [49, 54, 149]);
    assert_eq!(rgb(0.25), [152, 142, 100]);
    assert_eq!(rgb(0.5), [255, 230, 50]);
    assert_eq!(rgb(0.75), [228, 125, 40]);
    assert_eq!(rgb(1.0), [200, 20, 30]);
    assert_eq!(rgb(-1.0), rgb(0.0));
    assert_eq!(rgb(2.0), rgb(1.0));
}

/// A heatmap puts each patch where its file name's x, y say, counted from the patient's lowest
/// x, y: a patient with two patches of known colours, far apart and away from the slide's
/// origin, is drawn with each colour at its own cell and white between.
#[test]
fn heatmap_places_patches_by_their_coordinates() {
    use image::{Rgb, RgbImage};
    let tmp = tempfile::tempdir().unwrap();
    let onnx = model(tmp.path());
    let root = tmp.path().join("slide/0");
    std::fs::create_dir_all(&root).unwrap();
    let red = RgbImage::from_pixel(50, 50, Rgb([220, 20, 20]));
    let blue = RgbImage::from_pixel(50, 50, Rgb([20, 20, 220]));
    // Grid cells (2, 5) and (5, 6) (the dataset's 50-pixel grid): the image starts at (2, 5).
    red.save(root.join("42_idx5_x101_y251_class0.png")).unwrap();
    blue.save(root.join("42_idx5_x251_y301_class0.png"))
        .unwrap();
    let out = tmp.path().join("hm");
    stdout_ok(&runtime(&[
        "heatmap",
        tmp.path().join("slide").to_str().unwrap(),
        "--model",
        onnx.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--scale",
        "0.2",
    ]));
    let hm = image::open(out.join("heatmap_42.png")).unwrap().to_rgb8();
    // Cells of 10 pixels; the tissue panel is 4 x 2 cells, then a gap of one cell, then the
    // probability panel, the gap, and the truth panel: (3 * 4 + 2) x 2 cells.
    assert_eq!(hm.dimensions(), (140, 20));
    let at = |x: u32, y: u32| hm.get_pixel(x, y).0;
    assert_eq!(at(5, 5), [220, 20, 20], "red patch not at the first cell");
    assert_eq!(
        at(35, 15),
        [20, 20, 220],
        "blue patch not at 3 right, 1 down"
    );
    for (x, y) in [(15, 5), (25, 5), (35, 5), (5, 15), (15, 15)] {
        assert_eq!(
            at(x, y),
            [255, 255, 255],
            "cell at ({x}, {y}) should be empty"
        );
    }
    // The probability panel has colour exactly at those two cells, the truth panel grey there.
    let prob = |x: u32, y: u32| at(50 + x, y);
    assert_ne!(prob(5, 5), [255, 255, 255]);
    assert_ne!(prob(35, 15), [255, 255, 255]);
    assert_eq!(prob(15, 5), [255, 255, 255]);
    assert_eq!(at(100 + 5, 5), [215, 215, 215]);
    assert_eq!(at(100 + 35, 15), [215, 215, 215]);
    assert_eq!(at(100 + 15, 5), [255, 255, 255]);
}
