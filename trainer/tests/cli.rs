//! The real `trainer` binary on small synthetic data: outputs, resume equivalence, errors.

use datasets::build::{BuildOptions, build};
use datasets::split::SplitConfig;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A small synthetic split and a config for a small CancerNet (same code path, fewer FLOPs).
fn setup(tmp: &Path) -> PathBuf {
    let orig = tmp.join("orig");
    datasets::testdata::small_synth(&orig, 8, 50.0);
    build(&BuildOptions {
        source: orig,
        out: tmp.join("idc"),
        split: SplitConfig::default(),
        force: false,
        ..Default::default()
    })
    .unwrap();
    let config = tmp.join("tiny.yaml");
    std::fs::write(
        &config,
        format!(
            "data:\n  root: {}\nmodel:\n  input_size: 24\n  widths: [8, 16]\n  depths: [1, 1]\n  dense: 16\ntrain:\n  epochs: 3\n  batch_size: 16\n  max_steps_per_epoch: 6\n",
            tmp.join("idc").display()
        ),
    )
    .unwrap();
    config
}

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "stdout:\n{out}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// metrics.csv without the timing columns (seconds, images/s), which differ between runs.
fn metrics_without_timing(dir: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(dir.join("metrics.csv")).unwrap();
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            headers
                .iter()
                .zip(rec.iter())
                .filter(|(h, _)| !matches!(*h, "seconds" | "train_images_per_second"))
                .map(|(_, v)| v.to_string())
                .collect()
        })
        .collect()
}

#[test]
fn trains_writes_every_artifact_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let cfg = config.to_str().unwrap();
    let straight = tmp.path().join("straight");
    let out = ok(&trainer(&[
        "--config",
        cfg,
        "--output",
        straight.to_str().unwrap(),
        "--quiet",
    ]));
    for word in [
        "epoch 3/3",
        "sensitivity (IDC recall)",
        "weighted avg",
        "trained 3 epochs",
    ] {
        assert!(out.contains(word), "{word} missing from\n{out}");
    }
    for f in [
        "config.yaml",
        "model.json",
        "run.json",
        "metrics.csv",
        "plot.png",
        "test_report.json",
        "checkpoints/best/model.mpk",
        "checkpoints/epoch-003/optim.mpk",
    ] {
        assert!(straight.join(f).is_file(), "{f} missing");
    }
    assert_eq!(metrics_without_timing(&straight).len(), 3);

    // Interrupted after one epoch, then resumed: the same metrics as the straight run.
    let resumed = tmp.path().join("resumed");
    let r = resumed.to_str().unwrap();
    let out = ok(&trainer(&[
        "--config",
        cfg,
        "--output",
        r,
        "--quiet",
        "--stop-after",
        "1",
    ]));
    assert!(out.contains("continue with --resume"), "{out}");
    let again = trainer(&["--config", cfg, "--output", r, "--quiet"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    ok(&trainer(&[
        "--config", cfg, "--output", r, "--quiet", "--resume",
    ]));
    assert_eq!(
        metrics_without_timing(&resumed),
        metrics_without_timing(&straight)
    );
    // The final test report (best checkpoint on the testing split) is the same too.
    let report = |d: &Path| std::fs::read_to_string(d.join("test_report.json")).unwrap();
    assert_eq!(report(&resumed), report(&straight));

    // A finished run with the same config is reused.
    let out = ok(&trainer(&["--config", cfg, "--output", r, "--quiet"]));
    assert!(out.contains("already complete"), "{out}");
    // Finished but stopped before the final report: only the report is made, the same one.
    let before = report(&resumed);
    std::fs::remove_file(resumed.join("test_report.json")).unwrap();
    let out = ok(&trainer(&["--config", cfg, "--output", r, "--quiet"]));
    assert!(
        out.contains("testing split") && !out.contains("epoch 1/"),
        "{out}"
    );
    assert_eq!(report(&resumed), before);
}

#[test]
fn clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let cfg = config.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--config", "nope.yaml"], "cannot read config nope.yaml"),
        (
            &["--config", cfg, "--data", "/nonexistent"],
            "run `datasets build` first",
        ),
        (&["--config", cfg, "--epochs", "0"], "train.epochs"),
        (&["--config", cfg, "--device", "cuda"], "cuda"),
    ];
    for (args, needle) in cases {
        let o = trainer(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A split with one class only.
    let one = tmp.path().join("one");
    std::fs::create_dir_all(one.join("training/0")).unwrap();
    for f in std::fs::read_dir(tmp.path().join("idc/training/0"))
        .unwrap()
        .take(3)
    {
        let f = f.unwrap().path();
        std::fs::copy(&f, one.join("training/0").join(f.file_name().unwrap())).unwrap();
    }
    let o = trainer(&["--config", cfg, "--data", one.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("one class only"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
