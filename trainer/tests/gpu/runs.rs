//! The commands on the device: a whole run (train, export, evaluate) and a run resumed on another
//! device.

use burn::prelude::*;
use models::CancerNetConfig;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A small synthetic split and a config for `trainer --device <device>` (a short run). Dropout
/// is off: the devices draw their masks from different generators (the CPU's fused kernels, the
/// GPU's block-end kernel, burn's dropout in the dense head on each), so with dropout two devices
/// train like two seeds; without it they train alike. 8 steps an epoch:
/// the trainer reads steps back from the device in groups of 8, and a whole last group must leave
/// nothing (no empty read) behind.
fn setup(tmp: &Path, device: &str) -> PathBuf {
    let orig = tmp.join("orig");
    datasets::testdata::small_synth(&orig, 6, 30.0);
    datasets::build::build(&datasets::build::BuildOptions {
        source: orig,
        out: tmp.join("idc"),
        ..Default::default()
    })
    .unwrap();
    let config = tmp.join(format!("{device}.yaml"));
    std::fs::write(
        &config,
        format!(
            "data:\n  root: {}\nmodel:\n  input_size: 16\n  widths: [6, 8]\n  depths: [1, 2]\n  dense: 16\n  bn_momentum: 0.9\n  conv_dropout: 0.0\n  dense_dropout: 0.0\n\
             train:\n  epochs: 2\n  batch_size: 8\n  max_steps_per_epoch: 8\ndevice: {device}\n",
            tmp.join("idc").display()
        ),
    )
    .unwrap();
    config
}

fn run(exe: &Path, args: &[&str]) -> String {
    let o: Output = Command::new(exe).args(args).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{} {args:?}:\n{out}\n{}",
        exe.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A workspace binary beside the trainer being tested (built by the workspace's tests).
fn sibling(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_trainer")).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is not built: run the workspace's tests first (`make test` does)",
        p.display()
    );
    p
}

/// The whole chain on the device: `trainer --device` (checkpoints, metrics, plot, test report),
/// `exporter` on its checkpoint (verified against ONNX Runtime), `runtime eval` of the file; and
/// the device model's eval-mode outputs equal ONNX Runtime's on the exported file.
pub(super) fn whole_run_exports_and_evaluates<B: Backend>(flag: &str, device: B::Device) {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path(), flag);
    let out = tmp.path().join("run");
    let trainer = Path::new(env!("CARGO_BIN_EXE_trainer"));
    let text = run(
        trainer,
        &[
            "--config",
            config.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert!(
        text.contains(&format!("device {flag}: ")),
        "the header names no adapter:\n{text}"
    );
    assert!(
        text.contains("epoch 2/2") && text.contains("testing split"),
        "{text}"
    );
    for f in [
        "metrics.csv",
        "plot.png",
        "test_report.json",
        "checkpoints/best/model.mpk",
        "checkpoints/epoch-002/optim.mpk",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let onnx = tmp.path().join("m.onnx");
    let exported = run(
        &sibling("exporter"),
        &[
            "--model",
            out.to_str().unwrap(),
            "--out",
            onnx.to_str().unwrap(),
        ],
    );
    assert!(
        exported.contains("verified with ONNX Runtime"),
        "{exported}"
    );
    let json = tmp.path().join("eval.json");
    let preds = tmp.path().join("p.csv");
    let testing = tmp.path().join("idc/testing");
    run(
        &sibling("runtime"),
        &[
            "eval",
            testing.to_str().unwrap(),
            "--model",
            onnx.to_str().unwrap(),
            "--ep",
            "cpu",
            "--json",
            json.to_str().unwrap(),
            "--predictions",
            preds.to_str().unwrap(),
        ],
    );
    // The device model, loaded from the checkpoint onto the device, against ONNX Runtime's
    // probabilities of the same files.
    let cfg = CancerNetConfig::load(out.join("model.json")).unwrap();
    let run_dir = trainer::checkpoint::RunDir { root: out.clone() };
    let model = run_dir
        .load_model(cfg.init::<B>(&device), &run_dir.best_dir(), &device)
        .unwrap();
    let pre = datasets::preprocess::Preprocess {
        size: 16,
        filter: datasets::preprocess::Filter::Nearest,
    };
    let rows: Vec<csv::StringRecord> = csv::Reader::from_path(&preds)
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .collect();
    let mut x = vec![0f32; rows.len() * pre.len()];
    for (i, r) in rows.iter().enumerate() {
        pre.load_into(Path::new(&r[0]), &mut x[i * pre.len()..(i + 1) * pre.len()])
            .unwrap();
    }
    let t = Tensor::<B, 4>::from_data(TensorData::new(x, [rows.len(), 3, 16, 16]), &device);
    let probs: Vec<f32> = model
        .probabilities(t)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap();
    let mut worst = 0f32;
    for (i, r) in rows.iter().enumerate() {
        let ort: f32 = r[5].parse().unwrap();
        worst = worst.max((ort - probs[i * 2 + 1]).abs());
    }
    eprintln!(
        "device vs ONNX Runtime on {} patches: max |diff| = {worst:.2e}",
        rows.len()
    );
    assert!(
        worst <= 1e-4,
        "device vs ONNX Runtime: max |diff| = {worst}"
    );
}

/// A run stopped on one device resumes on the other and ends as a straight CPU run does: its
/// losses within `tolerance` (relative) of the straight run's, the resumed epochs included.
pub(super) fn resume_across_devices(flag: &str, tolerance: f64) {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path(), flag);
    let trainer = Path::new(env!("CARGO_BIN_EXE_trainer"));
    let c = config.to_str().unwrap();
    let metrics = |d: &Path| -> Vec<(f64, f64)> {
        csv::Reader::from_path(d.join("metrics.csv"))
            .unwrap()
            .deserialize::<std::collections::HashMap<String, String>>()
            .map(|r| {
                let r = r.unwrap();
                (
                    r["train_loss"].parse().unwrap(),
                    r["val_loss"].parse().unwrap(),
                )
            })
            .collect()
    };
    let straight = tmp.path().join("straight");
    run(
        trainer,
        &[
            "--config",
            c,
            "--output",
            straight.to_str().unwrap(),
            "--quiet",
            "--device",
            "cpu",
        ],
    );
    let want = metrics(&straight);
    for (first, second) in [(flag, "cpu"), ("cpu", flag)] {
        let out = tmp.path().join(format!("{first}-then-{second}"));
        let o = out.to_str().unwrap();
        run(
            trainer,
            &[
                "--config",
                c,
                "--output",
                o,
                "--quiet",
                "--device",
                first,
                "--stop-after",
                "1",
            ],
        );
        let resumed = run(
            trainer,
            &[
                "--config", c, "--output", o, "--quiet", "--device", second, "--resume",
            ],
        );
        assert!(
            resumed.contains("resuming after epoch 1")
                && resumed.contains(&format!("device {second}")),
            "{resumed}"
        );
        let got = metrics(&out);
        assert_eq!(
            got.len(),
            want.len(),
            "{first} then {second}: epochs in metrics.csv"
        );
        for (epoch, ((tl, vl), (wtl, wvl))) in got.iter().zip(&want).enumerate() {
            eprintln!(
                "{first} then {second}, epoch {}: train loss {tl} vs {wtl}, val loss {vl} vs {wvl}",
                epoch + 1
            );
            assert!(
                (tl - wtl).abs() <= tolerance * wtl && (vl - wvl).abs() <= tolerance * wvl,
                "{first} then {second}, epoch {}: losses {tl} {vl} vs straight {wtl} {wvl}",
                epoch + 1
            );
        }
    }
}
