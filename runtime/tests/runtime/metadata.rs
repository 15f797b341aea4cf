//! What travels in the model's metadata: the operating threshold and the preprocessing.

use super::{runtime, small_synth, stdout_ok};
use crate::common::{burn_agrees_with_csv, export_run};
use datasets::preprocess::Preprocess;
use exporter::export::{Checkpoint, load};
use std::path::Path;

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
    // `runtime eval` of the patches with `model` on the CPU, and any flags after.
    let eval = |model: &Path, extra: &[&str]| {
        let args = [
            &[
                "eval",
                data.to_str().unwrap(),
                "--model",
                model.to_str().unwrap(),
                "--ep",
                "cpu",
            ][..],
            extra,
        ]
        .concat();
        runtime(&args)
    };
    let check = |model: &Path, extra: &[&str]| {
        let preds = tmp.path().join("p.csv");
        let args = [&["--predictions", preds.to_str().unwrap()][..], extra].concat();
        stdout_ok(&eval(model, &args));
        burn_agrees_with_csv(&loaded.model, pre, &preds, 5);
    };
    check(&onnx, &[]);
    // The same file without metadata.
    let mut proto = ModelProto::decode(std::fs::read(&onnx).unwrap().as_slice()).unwrap();
    proto.metadata_props.clear();
    let bare = tmp.path().join("bare.onnx");
    std::fs::write(&bare, proto.encode_to_vec()).unwrap();
    let refused = |extra: &[&str], want: &str| {
        let o = eval(&bare, extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
    };
    refused(&[], "pass --input-size and --resize-filter");
    check(
        &bare,
        &["--input-size", "32", "--resize-filter", "bilinear"],
    );
    // A filter without a size would be ignored: it is refused, naming the flag it needs.
    refused(
        &["--resize-filter", "bilinear"],
        "--input-size <INPUT_SIZE>",
    );
    // A size that contradicts the graph's input is refused.
    refused(
        &["--input-size", "48"],
        "the model's input side is 32 but its preprocessing says 48",
    );
}
