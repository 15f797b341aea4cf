//! The demo's chain through the real binaries, small: synth -> build -> trainer (1 epoch) ->
//! exporter -> runtime eval + heatmap, asserting on what a user reads.

mod common;

use common::bin;
use prost::Message;
use std::path::Path;
use std::process::Command;

fn run(dir: &Path, name: &str, args: &[&str]) -> String {
    let o = Command::new(bin(name))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{name} {args:?} failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The classification report in a command's output, from its header to its last metric (PR AUC)
/// included.
fn report_block(text: &str) -> String {
    let start = text.find("                precision").expect("a report");
    let last = text[start..].find("PR AUC").expect("its last line") + start;
    let end = text[last..].find('\n').map_or(text.len(), |e| e + last);
    text[start..end].to_string()
}

#[test]
fn demo_chain_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("e2e.yaml"),
        "model:\n  bn_momentum: 0.9\ntrain:\n  epochs: 1\n  max_steps_per_epoch: 25\n",
    )
    .unwrap();
    run(
        dir,
        "datasets",
        &["synth", "--patients", "6", "--mean-patches", "120"],
    );
    let table = run(dir, "datasets", &["build"]);
    assert!(
        table.contains("testing") && table.contains("patients"),
        "{table}"
    );
    let train = run(dir, "trainer", &["--config", "e2e.yaml", "--quiet"]);
    assert!(
        train.contains("epoch 1/1") && train.contains("testing split"),
        "{train}"
    );
    assert!(dir.join("models/cancernet/plot.png").is_file());
    let export = run(dir, "exporter", &[]);
    assert!(export.contains("verified with ONNX Runtime"), "{export}");
    // The model names the run it came from: run.json's hashes of the config and the dataset.
    let run_file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("models/cancernet/run.json")).unwrap(),
    )
    .unwrap();
    let onnx = std::fs::read(dir.join("models/cancernet.onnx")).unwrap();
    let model = exporter::onnx_proto::ModelProto::decode(onnx.as_slice()).unwrap();
    for key in ["config_sha256", "dataset_manifest_sha256"] {
        let meta = model
            .metadata_props
            .iter()
            .find(|e| e.key.as_deref() == Some(&format!("train.{key}")))
            .and_then(|e| e.value.as_deref());
        assert_eq!(meta, run_file[key].as_str(), "{key}");
    }
    let eval = run(
        dir,
        "runtime",
        &[
            "eval",
            "datasets/idc/testing",
            "--json",
            "reports/eval.json",
            "--roc",
            "reports/roc.png",
            "--patients",
        ],
    );
    for needle in [
        "CPUExecutionProvider",
        "precision",
        "accuracy",
        "specificity (healthy recall)",
        "ROC AUC",
        "patient",
    ] {
        assert!(eval.contains(needle), "{needle} missing from\n{eval}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reports/eval.json")).unwrap())
            .unwrap();
    // The trainer's final report (burn) and runtime's (ONNX Runtime) on the same checkpoint and
    // files: the same text to the last printed digit, and the same confusion matrix.
    assert_eq!(
        report_block(&train),
        report_block(&eval),
        "trainer and runtime reports differ"
    );
    let test_report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("models/cancernet/test_report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        test_report["report"]["confusion"],
        report["report"]["confusion"]
    );
    let auc = |r: &serde_json::Value| r["report"]["roc_auc"].as_f64().unwrap();
    assert!((auc(&test_report) - auc(&report)).abs() < 1e-6);
    let n = report["run"]["images"].as_u64().unwrap();
    let manifest = std::fs::read_to_string(dir.join("datasets/idc/manifest.csv")).unwrap();
    assert_eq!(
        n as usize,
        manifest
            .lines()
            .filter(|l| l.starts_with("testing,"))
            .count()
    );
    let heat = run(
        dir,
        "runtime",
        &["heatmap", "datasets/idc/testing", "--max-patients", "1"],
    );
    assert!(heat.contains("1 heatmaps"), "{heat}");
    assert!(dir.join("reports/roc.png").is_file());
}

/// The shipped robust recipe (`configs/cancernet-robust.yaml`, shortened to 2 epochs of 10
/// steps, with a threshold chosen on the validation split for the best balanced accuracy)
/// through the real binaries: the trainer reports the mean of the last epochs with precise
/// BatchNorm statistics, TTA and neighbour context at that threshold; `exporter` with no options
/// ships that model with TTA in the graph and the context weight and threshold in its metadata;
/// `runtime eval` on the same files applies all of it and prints the same report, PR AUC and the
/// per-patient table included.
#[test]
fn the_exported_model_is_the_one_the_robust_report_evaluated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let robust = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cancernet-robust.yaml");
    let mut cfg = trainer::config::TrainConfig::load(&robust).unwrap();
    // Short: two epochs, BatchNorm's running statistics quick to follow (the pitfall of short
    // runs), the threshold chosen on validation.
    cfg.train.epochs = 2;
    cfg.train.max_steps_per_epoch = Some(10);
    cfg.model.bn_momentum = 0.9;
    cfg.eval.threshold = trainer::config::Threshold::Rule(trainer::config::ThresholdRule::MaxBac);
    std::fs::write(dir.join("robust.yaml"), cfg.to_yaml().unwrap()).unwrap();
    run(
        dir,
        "datasets",
        &["synth", "--patients", "6", "--mean-patches", "80"],
    );
    run(dir, "datasets", &["build"]);
    let train = run(dir, "trainer", &["--config", "robust.yaml", "--quiet"]);
    let line = "average checkpoint (epoch 2, the mean of epochs 1-2, BatchNorm statistics \
                recomputed on the training split), loss";
    assert!(train.contains(line), "{line} missing from\n{train}");
    let line = "test-time augmentation (8 views), neighbour context (weight 0.5), threshold";
    assert!(train.contains(line), "{line} missing from\n{train}");
    let test_report =
        trainer::test_report::TestReport::read(&dir.join("models/cancernet")).unwrap();
    let chosen = &test_report.threshold;
    assert!(
        !chosen.fixed
            && chosen
                .source
                .contains("highest balanced accuracy on the validation"),
        "{chosen:?}"
    );
    let export = run(dir, "exporter", &[]);
    assert!(
        export.contains("test-time augmentation (8 views) in the graph")
            && export.contains("neighbour context (weight 0.5) in the metadata")
            && export.contains("verified with ONNX Runtime"),
        "{export}"
    );
    let eval = run(
        dir,
        "runtime",
        &[
            "eval",
            "datasets/idc/testing",
            "--predictions",
            "ctx.csv",
            "--patients",
            "--json",
            "eval.json",
        ],
    );
    assert_eq!(
        report_block(&train),
        report_block(&eval),
        "trainer and runtime reports differ"
    );
    // The model's own threshold, chosen on validation, and the same per-patient table.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("eval.json")).unwrap()).unwrap();
    assert_eq!(
        json["report"]["threshold"].as_f64(),
        Some(test_report.threshold.threshold)
    );
    assert_eq!(
        json["patients"],
        serde_json::to_value(&test_report.per_patient).unwrap()
    );
    let table = evaluation::patients::table(&test_report.per_patient);
    assert!(
        test_report.per_patient.len() > 1 && eval.contains(&table),
        "{table}\n{eval}"
    );
    assert!(
        eval.contains("neighbour context (from the model's metadata): each patch's log-odds averaged with its grid neighbours' at weight 0.5"),
        "{eval}"
    );
    // --context=false gives each patch alone: other probabilities, no context line, and not the
    // model's threshold, which was chosen with context.
    let alone = run(
        dir,
        "runtime",
        &[
            "eval",
            "datasets/idc/testing",
            "--context=false",
            "--predictions",
            "alone.csv",
        ],
    );
    assert!(
        !alone.contains("neighbour context (from")
            && alone.contains("threshold 0.5 (default; the model's threshold")
            && alone.contains("this run evaluates without neighbour context"),
        "{alone}"
    );
    let probs = |f: &str| -> Vec<String> {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        text.lines()
            .map(|l| l.rsplit(',').nth(1).unwrap().to_string())
            .collect()
    };
    let (ctx, alone) = (probs("ctx.csv"), probs("alone.csv"));
    assert_eq!(ctx.len(), alone.len());
    assert!(ctx != alone, "context changed no probability");
    // The heatmaps show what eval called, context included.
    let heat = run(dir, "runtime", &["heatmap", "datasets/idc/testing"]);
    assert!(
        heat.contains("neighbour context (from the model's metadata)"),
        "{heat}"
    );
    // --tta=false leaves the views out, --context=false the context (and say nothing of them).
    let plain = run(
        dir,
        "exporter",
        &["--tta=false", "--context=false", "--out", "plain.onnx"],
    );
    assert!(
        !plain.contains("test-time augmentation") && !plain.contains("neighbour context"),
        "{plain}"
    );
    let eval = run(
        dir,
        "runtime",
        &["eval", "datasets/idc/testing", "--model", "plain.onnx"],
    );
    assert!(!eval.contains("neighbour context (from"), "{eval}");
}
