//! The real `runtime` binary with ONNX Runtime: reports, parity with burn through the shared
//! preprocessing, bad files of every kind, EP and model errors, predict and heatmap.

mod common;

use burn::backend::Flex;
use burn::prelude::*;
use common::model;
use datasets::preprocess::Preprocess;
use datasets::testdata::shared_data;
use exporter::export::{Checkpoint, load};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn runtime(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runtime"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout_ok(o: &Output) -> String {
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "stdout:\n{s}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    s
}

fn small_synth(dir: &Path) -> PathBuf {
    let out = dir.join("orig");
    datasets::testdata::small_synth(&out, 3, 40.0);
    out
}

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
    let loaded = load(&tmp.path().join("run"), Checkpoint::Best).unwrap();
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
    let sample: Vec<&csv::StringRecord> = rows.iter().step_by(7).collect();
    let mut x = vec![0f32; sample.len() * pre.len()];
    for (i, r) in sample.iter().enumerate() {
        pre.load_into(Path::new(&r[0]), &mut x[i * pre.len()..(i + 1) * pre.len()])
            .unwrap();
    }
    let t = Tensor::<Flex, 4>::from_data(
        TensorData::new(x, [sample.len(), 3, 48, 48]),
        &Default::default(),
    );
    let burn: Vec<f32> = loaded.model.probabilities(t).into_data().to_vec().unwrap();
    for (i, r) in sample.iter().enumerate() {
        let ort: f32 = r[5].parse().unwrap();
        assert!(
            (ort - burn[i * 2 + 1]).abs() < 1e-4,
            "{}: runtime {ort} burn {}",
            &r[0],
            burn[i * 2 + 1]
        );
    }

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
    let preds = tmp.path().join("p.csv");
    let out = stdout_ok(&runtime(&[
        "predict",
        flat.to_str().unwrap(),
        "--model",
        onnx.to_str().unwrap(),
        "--predictions",
        preds.to_str().unwrap(),
    ]));
    assert!(out.contains("10 images:"), "{out}");
    assert_eq!(
        csv::Reader::from_path(&preds).unwrap().records().count(),
        10
    );
    let hm = tmp.path().join("hm");
    let out = stdout_ok(&runtime(&[
        "heatmap",
        data.to_str().unwrap(),
        "--model",
        onnx.to_str().unwrap(),
        "--out",
        hm.to_str().unwrap(),
    ]));
    assert!(out.contains("3 heatmaps"), "{out}");
    assert_eq!(std::fs::read_dir(&hm).unwrap().count(), 3);
}

#[test]
fn clear_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let onnx = model(tmp.path());
    let data = small_synth(tmp.path());
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    // Models that are not what the report needs, each a one-node graph.
    let tiny = |name: &str, input: Vec<i64>, op: &str, output: Vec<i64>, meta: &[(&str, &str)]| {
        use exporter::onnx_proto::tensor_proto::DataType;
        use exporter::onnx_proto::tensor_shape_proto::Dimension;
        use exporter::onnx_proto::*;
        use prost::Message;
        let dims = |d: &[i64]| {
            d.iter()
                .map(|&v| {
                    if v < 0 {
                        Dimension::symbolic("N")
                    } else {
                        Dimension::fixed(v)
                    }
                })
                .collect::<Vec<_>>()
        };
        let node = NodeProto {
            input: vec!["x".into()],
            output: vec!["y".into()],
            op_type: Some(op.into()),
            ..Default::default()
        };
        let graph = GraphProto {
            node: vec![node],
            name: Some("g".into()),
            input: vec![ValueInfoProto::tensor("x", DataType::Float, dims(&input))],
            output: vec![ValueInfoProto::tensor("y", DataType::Float, dims(&output))],
            ..Default::default()
        };
        let m = ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto::onnx(OPSET_VERSION)],
            graph: Some(graph),
            metadata_props: meta
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k.to_string()),
                    value: Some(v.to_string()),
                })
                .collect(),
            ..Default::default()
        };
        let path = tmp.path().join(name);
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        path
    };
    // x[N, 10] -> Relu: not an image.
    let not_image = tiny("vector.onnx", vec![-1, 10], "Relu", vec![-1, 10], &[]);
    // An image in, the image out: not [batch, 2] probabilities.
    let image_out = tiny(
        "image-out.onnx",
        vec![-1, 3, 48, 48],
        "Relu",
        vec![-1, 3, 48, 48],
        &[],
    );
    // A non-square input, and a side over the limit.
    let oblong = tiny(
        "oblong.onnx",
        vec![-1, 3, 48, 64],
        "Relu",
        vec![-1, 3, 48, 64],
        &[],
    );
    let huge = tiny(
        "huge.onnx",
        vec![-1, 3, 4096, 4096],
        "Relu",
        vec![-1, 3, 4096, 4096],
        &[],
    );
    // The real model with metadata that cannot be trusted: three classes, an absurd input size.
    let edited = |name: &str, key: &str, value: &str| {
        use exporter::onnx_proto::{ModelProto, StringStringEntryProto};
        use prost::Message;
        let mut proto = ModelProto::decode(std::fs::read(&onnx).unwrap().as_slice()).unwrap();
        proto
            .metadata_props
            .retain(|e| e.key.as_deref() != Some(key));
        proto.metadata_props.push(StringStringEntryProto {
            key: Some(key.into()),
            value: Some(value.into()),
        });
        let path = tmp.path().join(name);
        std::fs::write(&path, proto.encode_to_vec()).unwrap();
        path
    };
    let three = edited("classes.onnx", "classes", "0: a, 1: b, 2: c");
    let size = edited("size.onnx", "preprocess.input_size", "100000");
    let (d, m) = (data.to_str().unwrap(), onnx.to_str().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["eval", d, "--model", "missing.onnx"],
            "missing.onnx does not exist",
        ),
        (
            vec!["eval", empty.to_str().unwrap(), "--model", m],
            "no images under",
        ),
        (
            vec!["eval", d, "--model", not_image.to_str().unwrap()],
            "not a square image tensor",
        ),
        (
            vec!["eval", d, "--model", image_out.to_str().unwrap()],
            "not the class probabilities [batch, 2]",
        ),
        (
            vec!["eval", d, "--model", oblong.to_str().unwrap()],
            "not a square image tensor",
        ),
        (
            vec!["eval", d, "--model", huge.to_str().unwrap()],
            "not a square image tensor",
        ),
        (
            vec!["eval", d, "--model", three.to_str().unwrap()],
            "metadata classes",
        ),
        (
            vec!["eval", d, "--model", size.to_str().unwrap()],
            "is not a side in [8, 1024]",
        ),
        (
            vec!["eval", d, "--model", m, "--max-model-bytes", "1000"],
            "over the 1000-byte limit",
        ),
        (
            vec!["eval", d, "--model", m, "--ep", "cuda"],
            "--ep cuda cannot be used",
        ),
        (
            vec![
                "eval",
                d,
                "--model",
                m,
                "--ort-lib",
                "/nonexistent/libonnxruntime.so",
            ],
            "/nonexistent/libonnxruntime.so",
        ),
    ];
    for (args, needle) in cases {
        let o = runtime(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
    }
}

/// The operating threshold travels in the model: the trainer's `threshold.json` becomes ONNX
/// metadata, `runtime` uses it and says where it came from, `--threshold` overrides it, and a
/// metadata value out of range is refused.
#[test]
fn the_models_threshold_is_used_and_named() {
    use exporter::onnx_proto::{ModelProto, StringStringEntryProto};
    use prost::Message;
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    trainer::checkpoint::write_random_run(&run, &models::CancerNetConfig::new(), 11).unwrap();
    std::fs::write(
        run.join(trainer::train::THRESHOLD_FILE),
        r#"{"threshold": 0.73, "source": "max BAC on a test split"}"#,
    )
    .unwrap();
    let onnx = tmp.path().join("t.onnx");
    exporter::export::export(&exporter::export::Options {
        model_dir: run,
        checkpoint: Checkpoint::Best,
        out: onnx.clone(),
        fold_bn: true,
        tta: false,
        verify: true,
        ort_lib: None,
        verify_data: None,
    })
    .unwrap();
    let data = small_synth(tmp.path());
    let (d, m) = (data.to_str().unwrap(), onnx.to_str().unwrap());
    let json = tmp.path().join("r.json");
    let preds = tmp.path().join("p.csv");
    let out = stdout_ok(&runtime(&[
        "eval",
        d,
        "--model",
        m,
        "--ep",
        "cpu",
        "--json",
        json.to_str().unwrap(),
        "--predictions",
        preds.to_str().unwrap(),
    ]));
    assert!(
        out.contains(
            "threshold 0.73 (from the model's metadata; trainer: max BAC on a test split)"
        ),
        "{out}"
    );
    assert!(
        out.contains("threshold 0.73)"),
        "the report's matrix is not at 0.73:\n{out}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["run"]["threshold"]["value"], 0.73);
    // The calls follow 0.73: predicted IDC = probability >= 0.73, row by row.
    for r in csv::Reader::from_path(&preds).unwrap().records() {
        let r = r.unwrap();
        let p: f64 = r[5].parse().unwrap();
        assert_eq!(&r[6], if p >= 0.73 { "1" } else { "0" }, "{r:?}");
    }
    let out = stdout_ok(&runtime(&[
        "eval",
        d,
        "--model",
        m,
        "--ep",
        "cpu",
        "--threshold",
        "0.2",
    ]));
    assert!(out.contains("threshold 0.2 (--threshold)"), "{out}");
    // A model whose metadata threshold is not a probability.
    let mut proto = ModelProto::decode(std::fs::read(&onnx).unwrap().as_slice()).unwrap();
    for e in proto.metadata_props.iter_mut() {
        if e.key.as_deref() == Some("threshold") {
            *e = StringStringEntryProto {
                key: Some("threshold".into()),
                value: Some("nan".into()),
            };
        }
    }
    let bad = tmp.path().join("bad.onnx");
    std::fs::write(&bad, proto.encode_to_vec()).unwrap();
    let o = runtime(&["eval", d, "--model", bad.to_str().unwrap(), "--ep", "cpu"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("threshold") && err.contains("not a number in [0, 1]"),
        "{err}"
    );
    // --threshold overrides a bad one.
    stdout_ok(&runtime(&[
        "eval",
        d,
        "--model",
        bad.to_str().unwrap(),
        "--ep",
        "cpu",
        "--threshold",
        "0.5",
    ]));
}
