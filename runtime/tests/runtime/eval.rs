//! `runtime eval` and `runtime bench`: the report against burn's probabilities through the shared
//! preprocessing, every kind of bad file skipped and counted, the real patches, flat memory,
//! atomic outputs, each stage's rate.

use super::{runtime, small_synth, stdout_ok};
use crate::common::{burn_agrees_with_csv, model};
use datasets::preprocess::Preprocess;
use datasets::testdata::shared_data;
use exporter::export::{Checkpoint, load};
use std::path::PathBuf;
use std::process::Command;

#[test]
fn eval_matches_burn_and_skips_every_kind_of_bad_file() {
    let tmp = tempfile::tempdir().unwrap();
    let onnx = model(tmp.path());
    let data = small_synth(tmp.path());
    let good = datasets::Scan::dir(&data).unwrap().patches;
    let bad = data.join("bad").join("0");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("9_idx5_x1_y1_class0.png"), b"").unwrap(); // zero-byte
    std::fs::write(
        bad.join("9_idx5_x51_y1_class0.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap(); // corrupt
    let png = std::fs::read(&good[0].path).unwrap();
    std::fs::write(bad.join("9_idx5_x101_y1_class0.png"), &png[..png.len() / 2]).unwrap(); // truncated
    std::fs::write(bad.join("notes.txt"), b"hello").unwrap(); // not an image
    let bomb = datasets::testdata::png_bomb(100_000, 100_000);
    std::fs::write(bad.join("9_idx5_x151_y1_class0.png"), &bomb).unwrap(); // oversized
    let (json, preds, roc) = (
        tmp.path().join("r.json"),
        tmp.path().join("p.csv"),
        tmp.path().join("roc.png"),
    );
    let args = [
        "eval",
        data.to_str().unwrap(),
        "--model",
        onnx.to_str().unwrap(),
        "--ep",
        "cpu",
        "--batch-size",
        "16",
        "--patients",
    ];
    let extra = [
        "--json",
        json.to_str().unwrap(),
        "--predictions",
        preds.to_str().unwrap(),
        "--roc",
        roc.to_str().unwrap(),
    ];
    let out = stdout_ok(&runtime(&[&args[..], &extra[..]].concat()));
    for needle in [
        "CPUExecutionProvider",
        "ONNX Runtime 1.",
        "batch 16",
        "weighted avg",
        "sensitivity (IDC recall)",
        "skipped 5 files",
        "empty file",
        "not a decodable",
        "not an image file",
        "pixel limit",
        "patient",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from\n{out}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["skipped"].as_array().unwrap().len(), 5);
    let support = |c: usize| report["report"]["classes"][c]["support"].as_u64().unwrap() as usize;
    assert_eq!(support(0) + support(1), good.len());
    assert!(roc.is_file());

    // Parity: the runtime's probabilities are burn's on the same files through the same preprocessing.
    let loaded = load(&tmp.path().join("run"), Some(Checkpoint::Best)).unwrap();
    let pre = Preprocess::default();
    let mut rows = csv::Reader::from_path(&preds).unwrap();
    let rows: Vec<csv::StringRecord> = rows.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), good.len());
    // Streamed one folder at a time, yet in sorted path order.
    let paths: Vec<PathBuf> = rows.iter().map(|r| PathBuf::from(&r[0])).collect();
    assert!(
        paths.windows(2).all(|w| w[0] < w[1]),
        "rows not in path order"
    );
    burn_agrees_with_csv(&loaded.model, pre, &preds, 7);

    // --strict turns skipped files into a failure.
    let o = runtime(&[&args[..], &["--strict"]].concat());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--strict"));
}

#[test]
fn real_patches_are_all_evaluated() {
    let Some(real) = shared_data("idc-real") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let onnx = model(tmp.path());
    let json = tmp.path().join("r.json");
    stdout_ok(&runtime(&[
        "eval",
        real.to_str().unwrap(),
        "--model",
        onnx.to_str().unwrap(),
        "--ep",
        "cpu",
        "--json",
        json.to_str().unwrap(),
    ]));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let c = &report["report"]["confusion"];
    let total: u64 = (0..2)
        .flat_map(|i| (0..2).map(move |j| (i, j)))
        .map(|(i, j)| c[i][j].as_u64().unwrap())
        .sum();
    assert_eq!(total, 4526);
    assert_eq!(
        report["report"]["classes"][1]["support"].as_u64(),
        Some(1544)
    );
    assert_eq!(report["skipped"].as_array().unwrap().len(), 0);
}

/// `runtime bench`: each stage's rate and the bound they set, printed and in its JSON, for the
/// images it was given at the batch size asked.
#[test]
fn bench_reports_each_stage_and_the_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let onnx = model(tmp.path());
    let data = small_synth(tmp.path());
    let images = datasets::Scan::dir(&data).unwrap().patches.len();
    let json = tmp.path().join("bench.json");
    let out = stdout_ok(&runtime(&[
        "bench",
        data.to_str().unwrap(),
        "--model",
        onnx.to_str().unwrap(),
        "--ep",
        "cpu",
        "--batch-size",
        "16",
        "--json",
        json.to_str().unwrap(),
    ]));
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["images"], images);
    assert_eq!(j["batch_size"], 16);
    let rate = |key: &str| {
        let v = j[key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v > 0.0, "{key}: {}", j[key]);
        v
    };
    let (decode, infer, e2e) = (
        rate("decode_per_s"),
        rate("inference_per_s"),
        rate("end_to_end_per_s"),
    );
    let bound = 1.0 / (1.0 / decode + 1.0 / infer);
    assert!((rate("bound_per_s") - bound).abs() < 1e-9 * bound, "{j}");
    // A process holding ONNX Runtime and a model is tens of MiB.
    assert!(
        j["peak_rss_kib"].as_u64().is_some_and(|k| k > 10_000),
        "{j}"
    );
    assert!(
        out.contains(&format!("runtime bench: {images} images under"))
            && out.contains("batch 16")
            && out.contains(&format!("{decode:.0} img/s"))
            && out.contains(&format!("{e2e:.0} img/s"))
            && out.contains(&format!("end-to-end at {:.0}% of it", 100.0 * e2e / bound)),
        "{out}"
    );
}

/// Outputs are written atomically: when the report cannot be put in place (a folder that cannot
/// be written, as for an ordinary user), the run fails naming the file, and the old report and
/// predictions stay whole, with no temp file left.
#[test]
fn a_report_that_cannot_be_written_leaves_the_old_one() {
    let tmp = tempfile::tempdir().unwrap();
    let onnx = model(tmp.path());
    let data = small_synth(tmp.path());
    let reports = tmp.path().join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    let (json, preds) = (reports.join("eval.json"), reports.join("p.csv"));
    std::fs::write(&json, "old report").unwrap();
    std::fs::write(&preds, "old rows").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&reports, std::fs::Permissions::from_mode(0o555)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut c = Command::new("/usr/bin/setpriv");
        c.args(["--bounding-set", "-dac_override,-dac_read_search"])
            .arg(env!("CARGO_BIN_EXE_runtime"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_runtime"))
    };
    let o = cmd
        .args([
            "eval",
            data.to_str().unwrap(),
            "--model",
            onnx.to_str().unwrap(),
            "--ep",
            "cpu",
        ])
        .args([
            "--json",
            json.to_str().unwrap(),
            "--predictions",
            preds.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    std::fs::set_permissions(&reports, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot write") && err.contains("reports/"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "old report");
    assert_eq!(std::fs::read_to_string(&preds).unwrap(), "old rows");
    assert_eq!(
        std::fs::read_dir(&reports).unwrap().count(),
        2,
        "a temp file was left"
    );
}

/// `eval` streams: peak memory does not grow with the number of images (the report keeps 5
/// bytes an image and the same-patch rule 8, far below what one more batch would take).
#[test]
fn eval_memory_stays_flat_from_few_to_many_images() {
    let tmp = tempfile::tempdir().unwrap();
    let onnx = model(tmp.path());
    let peak = |patients: usize, mean: f64| {
        let dir = tmp.path().join(format!("set{patients}"));
        let made = datasets::testdata::small_synth(&dir, patients, mean);
        let json = tmp.path().join(format!("r{patients}.json"));
        stdout_ok(&runtime(&[
            "eval",
            dir.to_str().unwrap(),
            "--model",
            onnx.to_str().unwrap(),
            "--ep",
            "cpu",
            "--json",
            json.to_str().unwrap(),
        ]));
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        (
            made.patches,
            r["run"]["peak_rss_kib"]
                .as_u64()
                .expect("peak RSS on Linux"),
        )
    };
    let (few, small) = peak(2, 300.0);
    let (many, large) = peak(24, 400.0);
    assert!(many > 10 * few, "{few} vs {many} images");
    let growth = large.saturating_sub(small);
    assert!(
        growth < 24 * 1024,
        "peak RSS grew by {growth} KiB from {few} to {many} images ({small} -> {large} KiB)"
    );
}
