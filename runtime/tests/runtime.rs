//! The real `runtime` binary with ONNX Runtime: reports, parity with burn through the shared
//! preprocessing, bad files of every kind, EP and model errors, predict and heatmap.

mod common;

use common::{burn_agrees_with_csv, export_run, model};
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
        // An open dimension is named for its tensor and place: ONNX Runtime takes one name for
        // one size.
        let dims = |tensor: &str, d: &[i64]| {
            d.iter()
                .enumerate()
                .map(|(i, &v)| {
                    if v < 0 {
                        Dimension::symbolic(&format!("{tensor}{i}"))
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
            input: vec![ValueInfoProto::tensor(
                "x",
                DataType::Float,
                dims("x", &input),
            )],
            output: vec![ValueInfoProto::tensor(
                "y",
                DataType::Float,
                dims("y", &output),
            )],
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
    // A grey image in; an output of rank 4, or of three columns: refused when opened.
    let grey = tiny(
        "grey.onnx",
        vec![-1, 1, 48, 48],
        "Relu",
        vec![-1, 1, 48, 48],
        &[],
    );
    let rank4 = tiny(
        "rank4.onnx",
        vec![-1, -1, 48, 48],
        "Relu",
        vec![-1, 2, 48, 48],
        &[],
    );
    let three_cols = tiny(
        "3cols.onnx",
        vec![-1, 3, -1, -1],
        "Flatten",
        vec![-1, 3],
        &[],
    );
    // Inputs with open dimensions (accepted) and an open output [batch, ?], which Flatten fills
    // with an image's every value: refused when a batch comes back with more than two columns.
    let flat = |name, input| tiny(name, input, "Flatten", vec![-1, -1], &[]);
    let open_inputs = [
        flat("open.onnx", vec![-1, -1, -1, -1]),
        flat("open-h.onnx", vec![-1, 3, -1, 48]),
        flat("open-w.onnx", vec![-1, 3, 48, -1]),
    ];
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
    // The limit is inclusive: a model of exactly --max-model-bytes is read.
    let exact = std::fs::metadata(&onnx).unwrap().len().to_string();
    let o = runtime(&[
        "eval",
        d,
        "--model",
        m,
        "--ep",
        "cpu",
        "--max-model-bytes",
        &exact,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Models refused when opened, each for what it is.
    let refused = [
        (&not_image, "not a square image tensor"),
        (&image_out, "not the class probabilities [batch, 2]"),
        (&oblong, "not a square image tensor"),
        (&huge, "not a square image tensor"),
        (&three, "metadata classes"),
        (&size, "is not a side in [8, 1024]"),
        (&grey, "not a square image tensor"),
        (&rank4, "not the class probabilities [batch, 2]"),
        (&three_cols, "not the class probabilities [batch, 2]"),
    ];
    let refused_cases = refused
        .iter()
        .map(|(model, needle)| (vec!["eval", d, "--model", model.to_str().unwrap()], *needle));
    let open_input_cases = open_inputs.iter().map(|model| {
        let model = model.to_str().unwrap();
        let args = ["--input-size", "48", "--resize-filter", "bilinear"];
        let args = [&["eval", d, "--model", model][..], &args].concat();
        (args, ", 6912], expected [")
    });
    let all = cases
        .into_iter()
        .chain(refused_cases)
        .chain(open_input_cases);
    for (args, needle) in all {
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
    trainer::checkpoint::write_random_run(&run, &models::CancerNetConfig::default(), 11).unwrap();
    std::fs::write(
        run.join(trainer::checkpoint::THRESHOLD_FILE),
        r#"{"threshold": 0.73, "source": "max BAC on a test split"}"#,
    )
    .unwrap();
    let onnx = tmp.path().join("t.onnx");
    export_run(&run, &onnx, false);
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

/// `runtime` takes its preprocessing from the model: a model of another input size and resize
/// filter gives burn's probabilities through the binary; stripped of its metadata it needs
/// `--input-size` and `--resize-filter`, and then gives the same.
#[test]
fn preprocessing_comes_from_the_models_metadata() {
    use datasets::preprocess::Filter;
    use exporter::onnx_proto::ModelProto;
    use prost::Message;
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let cfg = models::CancerNetConfig::default()
        .with_input_size(32)
        .with_widths(vec![8, 16])
        .with_depths(vec![1, 1])
        .with_dense(16);
    trainer::checkpoint::write_random_run(&run, &cfg, 12).unwrap();
    std::fs::write(
        run.join("config.yaml"),
        "data:\n  resize_filter: bilinear\nmodel:\n  input_size: 32\n  widths: [8, 16]\n  depths: [1, 1]\n  dense: 16\n",
    )
    .unwrap();
    let onnx = tmp.path().join("m.onnx");
    export_run(&run, &onnx, false);
    let data = small_synth(tmp.path());
    let loaded = load(&run, Some(Checkpoint::Best)).unwrap();
    let pre = Preprocess {
        size: 32,
        filter: Filter::Bilinear,
    };
    let check = |model: &Path, extra: &[&str]| {
        let preds = tmp.path().join("p.csv");
        let args = [
            &[
                "eval",
                data.to_str().unwrap(),
                "--model",
                model.to_str().unwrap(),
                "--ep",
                "cpu",
            ][..],
            &["--predictions", preds.to_str().unwrap()],
            extra,
        ]
        .concat();
        stdout_ok(&runtime(&args));
        burn_agrees_with_csv(&loaded.model, pre, &preds, 5);
    };
    check(&onnx, &[]);
    // The same file without metadata.
    let mut proto = ModelProto::decode(std::fs::read(&onnx).unwrap().as_slice()).unwrap();
    proto.metadata_props.clear();
    let bare = tmp.path().join("bare.onnx");
    std::fs::write(&bare, proto.encode_to_vec()).unwrap();
    let o = runtime(&[
        "eval",
        data.to_str().unwrap(),
        "--model",
        bare.to_str().unwrap(),
        "--ep",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pass --input-size and --resize-filter"),
        "{err}"
    );
    check(
        &bare,
        &["--input-size", "32", "--resize-filter", "bilinear"],
    );
    // A size that contradicts the graph's input is refused.
    let o = runtime(&[
        "eval",
        data.to_str().unwrap(),
        "--model",
        bare.to_str().unwrap(),
        "--ep",
        "cpu",
        "--input-size",
        "48",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("the model's input side is 32 but its preprocessing says 48")
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

/// `--context`: each patch's probability is the weighted mean, in log-odds, of its own and its
/// grid neighbours' (recomputed here from the run without context), the others keep theirs, and
/// the report says how many had neighbours. A weight in the model's metadata applies it by
/// default (`--context=false` turns it off); one out of range is refused.
#[test]
fn neighbour_context_averages_log_odds_over_the_slide_grid() {
    use exporter::onnx_proto::{ModelProto, StringStringEntryProto};
    use prost::Message;
    let tmp = tempfile::tempdir().unwrap();
    let onnx = model(tmp.path());
    let data = small_synth(tmp.path());
    let (d, m) = (data.to_str().unwrap(), onnx.to_str().unwrap());
    let eval_with = |m: &str, extra: &[&str], name: &str| {
        let preds = tmp.path().join(format!("{name}.csv"));
        let json = tmp.path().join(format!("{name}.json"));
        let mut args = vec!["eval", d, "--model", m, "--ep", "cpu", "--predictions"];
        args.extend([preds.to_str().unwrap(), "--json", json.to_str().unwrap()]);
        args.extend(extra);
        let out = stdout_ok(&runtime(&args));
        let rows: Vec<(String, u32, u32, f64)> = csv::Reader::from_path(&preds)
            .unwrap()
            .records()
            .map(|r| {
                let r = r.unwrap();
                // The call follows the probability written (the one with context, if any).
                let p: f64 = r[5].parse().unwrap();
                assert_eq!(&r[6], if p >= 0.5 { "1" } else { "0" }, "{r:?}");
                (
                    r[1].to_string(),
                    r[2].parse().unwrap(),
                    r[3].parse().unwrap(),
                    r[5].parse().unwrap(),
                )
            })
            .collect();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        (out, rows, json)
    };
    let eval = |extra: &[&str], name: &str| eval_with(m, extra, name);
    let (_, plain, json) = eval(&[], "plain");
    assert!(json["run"]["context"].is_null());
    let (out, ctx, json) = eval(&["--context", "--context-weight", "0.75"], "ctx");
    assert_eq!(plain.len(), ctx.len());
    let logit = |p: f64| (p.clamp(1e-6, 1.0 - 1e-6) / (1.0 - p.clamp(1e-6, 1.0 - 1e-6))).ln();
    let mut with_neighbours = 0;
    let mut moved = 0;
    for (i, (patient, x, y, p)) in plain.iter().enumerate() {
        assert_eq!(
            (patient, x, y),
            (&ctx[i].0, &ctx[i].1, &ctx[i].2),
            "same order"
        );
        let near: Vec<f64> = plain
            .iter()
            .filter(|o| &o.0 == patient && (o.1, o.2) != (*x, *y))
            .filter(|o| o.1.abs_diff(*x) <= 50 && o.2.abs_diff(*y) <= 50)
            .map(|o| logit(o.3))
            .collect();
        let want = if near.is_empty() {
            *p
        } else {
            with_neighbours += 1;
            let z =
                (logit(*p) + 0.75 * near.iter().sum::<f64>()) / (1.0 + 0.75 * near.len() as f64);
            1.0 / (1.0 + (-z).exp())
        };
        assert!(
            (ctx[i].3 - want).abs() < 1e-4,
            "{patient} ({x}, {y}): {} != {want}",
            ctx[i].3
        );
        moved += usize::from((ctx[i].3 - p).abs() > 1e-6);
    }
    assert!(
        with_neighbours > 0 && moved > 0,
        "the synthetic slides have neighbours"
    );
    assert_eq!(json["run"]["context"]["with_neighbours"], with_neighbours);
    assert_eq!(json["run"]["context"]["weight"], 0.75);
    assert!(
        out.contains(&format!(
            "neighbour context (--context-weight): each patch's log-odds averaged with its grid \
             neighbours' at weight 0.75 ({with_neighbours} of {} patches had neighbours)",
            plain.len()
        )),
        "{out}"
    );
    // --context alone: the default weight, 0.5.
    let (out, half, _) = eval(&["--context"], "half");
    assert!(
        out.contains("(--context): each patch") && out.contains("weight 0.5 ("),
        "{out}"
    );
    assert_ne!(half, ctx);
    // The weight in (0, 4] only, and not with --context=false.
    for (bad, why) in [
        (
            &["--context=false", "--context-weight", "0.5"][..],
            "drop one of them",
        ),
        (&["--context", "--context-weight", "0"], "--context-weight"),
        (&["--context-weight", "4.01"], "--context-weight"),
    ] {
        let mut args = vec!["eval", d, "--model", m];
        args.extend(bad);
        let o = runtime(&args);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{bad:?}: {err}");
    }
    // A model carrying a weight (as the exporter writes the trainer's eval.context) applies it
    // unless told otherwise.
    let with_weight = |value: &str| {
        let mut proto = ModelProto::decode(std::fs::read(&onnx).unwrap().as_slice()).unwrap();
        proto.metadata_props.push(StringStringEntryProto {
            key: Some(contract::keys::CONTEXT.into()),
            value: Some(value.into()),
        });
        let path = tmp.path().join(format!("context-{value}.onnx"));
        std::fs::write(&path, proto.encode_to_vec()).unwrap();
        path.to_str().unwrap().to_string()
    };
    let own = with_weight("0.75");
    let (out, rows, _) = eval_with(&own, &[], "own");
    assert_eq!(rows, ctx);
    assert!(
        out.contains("neighbour context (from the model's metadata)"),
        "{out}"
    );
    // --context keeps the model's weight.
    let (out, rows, _) = eval_with(&own, &["--context"], "own-on");
    assert_eq!(rows, ctx);
    assert!(
        out.contains("neighbour context (from the model's metadata)"),
        "{out}"
    );
    let (out, rows, _) = eval_with(&own, &["--context=false"], "own-off");
    assert_eq!(rows, plain);
    assert!(!out.contains("neighbour context"), "{out}");
    let (_, rows, _) = eval_with(&own, &["--context-weight", "0.5"], "own-half");
    assert_eq!(rows, half);
    let bad = with_weight("nan");
    let o = runtime(&["eval", d, "--model", &bad, "--ep", "cpu"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("context.weight") && err.contains("--context=false to override it"),
        "{err}"
    );
    let o = runtime(&["eval", d, "--model", &bad, "--ep", "cpu", "--context"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "--context does not override a bad weight"
    );
    let (_, rows, _) = eval_with(&bad, &["--context=false"], "bad-off");
    assert_eq!(rows, plain);
}

/// A threshold chosen on the model's predictions holds for the neighbour context they had
/// (metadata `threshold.context`, as the exporter writes it): a run with other context falls back
/// to 0.5 and says why; `--threshold` still sets one, a fixed threshold ("any") holds for any
/// context, and a model without the key is taken as chosen for its own context.
#[test]
fn a_threshold_chosen_for_one_context_is_not_used_with_another() {
    use contract::keys;
    use exporter::onnx_proto::{ModelProto, StringStringEntryProto};
    use prost::Message;
    let tmp = tempfile::tempdir().unwrap();
    let onnx = model(tmp.path());
    let data = small_synth(tmp.path());
    let d = data.to_str().unwrap();
    let with_meta = |name: &str, pairs: &[(&str, &str)]| {
        let mut proto = ModelProto::decode(std::fs::read(&onnx).unwrap().as_slice()).unwrap();
        proto.metadata_props.retain(|e| {
            !matches!(e.key.as_deref(), Some(k) if k.starts_with("threshold") || k == keys::CONTEXT)
        });
        for (k, v) in pairs {
            proto.metadata_props.push(StringStringEntryProto {
                key: Some(k.to_string()),
                value: Some(v.to_string()),
            });
        }
        let path = tmp.path().join(format!("{name}.onnx"));
        std::fs::write(&path, proto.encode_to_vec()).unwrap();
        path.to_str().unwrap().to_string()
    };
    let header = |m: &str, extra: &[&str]| {
        let mut args = vec!["eval", d, "--model", m, "--ep", "cpu"];
        args.extend(extra);
        let out = stdout_ok(&runtime(&args));
        out.lines()
            .find(|l| l.starts_with("threshold "))
            .unwrap_or_else(|| panic!("no threshold line:\n{out}"))
            .to_string()
    };
    let threshold = [
        (keys::THRESHOLD, "0.73"),
        (keys::THRESHOLD_SOURCE, "trainer: max BAC"),
    ];
    let chosen_with = with_meta(
        "chosen-with",
        &[
            threshold[0],
            threshold[1],
            (keys::THRESHOLD_CONTEXT, "0.75"),
            (keys::CONTEXT, "0.75"),
        ],
    );
    let from_model = "threshold 0.73 (from the model's metadata; trainer: max BAC)";
    assert!(header(&chosen_with, &[]).starts_with(from_model));
    let not_without = "threshold 0.5 (default; the model's threshold 0.73 (trainer: max BAC) was \
                       chosen with neighbour context at weight 0.75, and this run evaluates \
                       without neighbour context: pass --threshold";
    let off = header(&chosen_with, &["--context=false"]);
    assert!(off.starts_with(not_without), "{off}");
    let other = header(&chosen_with, &["--context-weight", "0.5"]);
    assert!(
        other.starts_with("threshold 0.5 (default;")
            && other.contains("this run evaluates with neighbour context at weight 0.5:"),
        "{other}"
    );
    let given = header(&chosen_with, &["--context=false", "--threshold", "0.2"]);
    assert!(given.starts_with("threshold 0.2 (--threshold)"), "{given}");
    // Chosen without context: it holds for a plain run, not for --context.
    let chosen_without = with_meta(
        "chosen-without",
        &[
            threshold[0],
            threshold[1],
            (keys::THRESHOLD_CONTEXT, "none"),
        ],
    );
    assert!(header(&chosen_without, &[]).starts_with(from_model));
    let on = header(&chosen_without, &["--context"]);
    assert!(
        on.contains(
            "chosen without neighbour context, and this run evaluates with neighbour context \
             at weight 0.5"
        ),
        "{on}"
    );
    // Fixed ("any"): it holds whatever the context. Without the key (a model exported before
    // it): chosen for the model's own context.
    let fixed = with_meta(
        "fixed",
        &[
            threshold[0],
            threshold[1],
            (keys::THRESHOLD_CONTEXT, "any"),
            (keys::CONTEXT, "0.75"),
        ],
    );
    let legacy = with_meta(
        "legacy",
        &[threshold[0], threshold[1], (keys::CONTEXT, "0.75")],
    );
    for extra in [&[][..], &["--context=false"], &["--context-weight", "2"]] {
        assert!(header(&fixed, extra).starts_with(from_model), "{extra:?}");
    }
    assert!(header(&legacy, &[]).starts_with(from_model));
    let off = header(&legacy, &["--context=false"]);
    assert!(off.starts_with(not_without), "{off}");
    // A value that is none of those is refused, naming the key and the override.
    let bad = with_meta("bad", &[threshold[0], (keys::THRESHOLD_CONTEXT, "often")]);
    let o = runtime(&["eval", d, "--model", &bad, "--ep", "cpu"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("threshold.context = \"often\"") && err.contains("pass --threshold"),
        "{err}"
    );
    let given = header(&bad, &["--threshold", "0.3"]);
    assert!(given.starts_with("threshold 0.3 (--threshold)"), "{given}");
    // Through the exporter: a run whose report chose its threshold with context 0.75.
    let run = tmp.path().join("context-run");
    trainer::checkpoint::write_random_run(&run, &models::CancerNetConfig::default(), 11).unwrap();
    std::fs::write(
        run.join(trainer::checkpoint::CONFIG_FILE),
        "eval:\n  context: 0.75\n",
    )
    .unwrap();
    std::fs::write(
        run.join(trainer::checkpoint::THRESHOLD_FILE),
        r#"{"threshold": 0.73, "source": "max BAC", "epoch": 0, "context": 0.75}"#,
    )
    .unwrap();
    let exported = tmp.path().join("exported.onnx");
    export_run(&run, &exported, false);
    let exported = exported.to_str().unwrap();
    assert!(header(exported, &[]).starts_with(from_model));
    let off = header(exported, &["--context=false"]);
    assert!(off.starts_with(not_without), "{off}");
}
