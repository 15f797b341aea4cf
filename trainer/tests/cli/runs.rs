//! Runs that must give the same bytes: twice, resumed (also after a kill at any moment), with
//! Adam, streaming or cached on 1 or 2 workers.

use super::{ok, same_bytes, setup, trainer};
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn trains_writes_every_artifact_and_repeats_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let cfg = config.to_str().unwrap();
    // The same output folder name for both runs (it is part of the resolved config).
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join("out");
        let o = trainer(
            &[
                &[
                    "--config",
                    cfg,
                    "--output",
                    out.to_str().unwrap(),
                    "--quiet",
                ],
                extra,
            ]
            .concat(),
        );
        let text = ok(&o);
        let kept = tmp.path().join(name);
        if !extra.contains(&"--stop-after") {
            std::fs::rename(&out, &kept).unwrap();
        }
        text
    };
    let out = run("straight", &[]);
    for word in [
        "epoch 3/3",
        "sensitivity (IDC recall)",
        "weighted avg",
        "trained 3 epochs",
    ] {
        assert!(out.contains(word), "{word} missing from\n{out}");
    }
    let straight = tmp.path().join("straight");
    for f in [
        "config.yaml",
        "model.json",
        "run.json",
        "metrics.csv",
        "timing.csv",
        "plot.png",
        "test_report.json",
        "checkpoints/best/model.mpk",
        "checkpoints/epoch-003/optim.mpk",
    ] {
        assert!(straight.join(f).is_file(), "{f} missing");
    }
    // Each epoch's row: 6 steps an epoch (max_steps_per_epoch) counted, its training loss and
    // accuracy the means over the patches it saw.
    let rows: Vec<trainer::checkpoint::EpochMetrics> =
        csv::Reader::from_path(straight.join("metrics.csv"))
            .unwrap()
            .deserialize()
            .map(Result::unwrap)
            .collect();
    assert_eq!(rows.len(), 3);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!((r.epoch, r.step), (i + 1, 6 * (i + 1)), "{r:?}");
        assert!(r.train_loss > 0.02 && r.train_loss < 5.0, "{r:?}");
        assert!(r.train_accuracy > 0.0 && r.train_accuracy < 1.0, "{r:?}");
    }
    // The same run at the default thread count (one per core) instead of 2: the same bytes.
    let default_threads = tmp.path().join("default-threads.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("  threads: 2\n"));
    std::fs::write(&default_threads, text.replace("  threads: 2\n", "")).unwrap();
    let out = tmp.path().join("out");
    ok(&trainer(&[
        "--config",
        default_threads.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]));
    std::fs::rename(&out, tmp.path().join("again")).unwrap();
    same_bytes(&straight, &tmp.path().join("again"));

    // Interrupted after two epochs, then torn (an epoch folder without its state file, a
    // leftover temp folder), then resumed: it starts after epoch 2 and ends as the straight run.
    let out_dir = tmp.path().join("out");
    let o = run("", &["--stop-after", "2"]);
    assert!(o.contains("continue with --resume"), "{o}");
    let again = trainer(&[
        "--config",
        cfg,
        "--output",
        out_dir.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let ckpt = out_dir.join("checkpoints");
    std::fs::create_dir_all(ckpt.join("epoch-003")).unwrap();
    std::fs::write(ckpt.join("epoch-003/model.mpk"), b"torn").unwrap();
    std::fs::create_dir_all(ckpt.join(".epoch-003.saving-4242")).unwrap();
    let first = std::fs::metadata(ckpt.join("epoch-001/model.mpk")).unwrap();
    let out = ok(&trainer(&[
        "--config",
        cfg,
        "--output",
        out_dir.to_str().unwrap(),
        "--quiet",
        "--resume",
    ]));
    assert!(out.contains("resuming after epoch 2"), "{out}");
    assert!(
        !out.contains("epoch 1/3") && !out.contains("epoch 2/3") && out.contains("epoch 3/3"),
        "{out}"
    );
    let after = std::fs::metadata(ckpt.join("epoch-001/model.mpk")).unwrap();
    assert_eq!(
        (
            first.modified().unwrap(),
            std::os::unix::fs::MetadataExt::ino(&first)
        ),
        (
            after.modified().unwrap(),
            std::os::unix::fs::MetadataExt::ino(&after)
        ),
        "epoch-001 was rewritten: the resume retrained from the start"
    );
    assert!(!ckpt.join(".epoch-003.saving-4242").exists());
    same_bytes(&straight, &out_dir);
    // timing.csv (not compared: seconds differ) keeps the first session's epochs too.
    let epochs: Vec<String> = csv::Reader::from_path(out_dir.join("timing.csv"))
        .unwrap()
        .records()
        .map(|r| r.unwrap()[0].to_string())
        .collect();
    assert_eq!(epochs, ["1", "2", "3"]);
    let report = |d: &Path| std::fs::read_to_string(d.join("test_report.json")).unwrap();

    // A finished run with the same config is reused.
    let r = out_dir.to_str().unwrap();
    let out = ok(&trainer(&["--config", cfg, "--output", r, "--quiet"]));
    assert!(out.contains("already complete"), "{out}");
    // Finished but stopped before the final report: only the report is made, the same one.
    let before = report(&out_dir);
    std::fs::remove_file(out_dir.join("test_report.json")).unwrap();
    let out = ok(&trainer(&["--config", cfg, "--output", r, "--quiet"]));
    assert!(
        out.contains("testing split") && !out.contains("epoch 1/"),
        "{out}"
    );
    assert_eq!(report(&out_dir), before);
}

/// `train.optimizer: adam` trains with Adam (other weights and optimizer state than Adagrad's),
/// and an interrupted Adam run resumes to the same bytes as a straight one.
#[test]
fn adam_resumes_exactly_and_is_not_adagrad() {
    let tmp = tempfile::tempdir().unwrap();
    let adagrad = setup(tmp.path());
    let adam = tmp.path().join("adam.yaml");
    let text = std::fs::read_to_string(&adagrad).unwrap();
    std::fs::write(
        &adam,
        text.replace(
            "train:\n",
            "train:\n  optimizer: adam\n  learning_rate: 0.001\n",
        ),
    )
    .unwrap();
    let train = |cfg: &Path, out: &str, extra: &[&str]| {
        let out = tmp.path().join(out);
        let args = [
            "--config",
            cfg.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--quiet",
        ];
        ok(&trainer(&[&args[..], extra].concat()));
        out
    };
    let straight = train(&adam, "adam", &[]);
    std::fs::rename(&straight, tmp.path().join("adam-straight")).unwrap();
    let straight = tmp.path().join("adam-straight");
    train(&adam, "adam", &["--stop-after", "1"]);
    let resumed = train(&adam, "adam", &["--resume"]);
    same_bytes(&straight, &resumed);
    let other = train(&adagrad, "adagrad", &[]);
    for f in [
        "checkpoints/epoch-001/model.mpk",
        "checkpoints/epoch-001/optim.mpk",
    ] {
        let read = |d: &Path| std::fs::read(d.join(f)).unwrap();
        assert_ne!(
            read(&straight),
            read(&other),
            "{f}: Adam gave Adagrad's bytes"
        );
    }
    // An Adagrad run's folder is another config for Adam.
    let o = trainer(&[
        "--config",
        adam.to_str().unwrap(),
        "--output",
        other.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("different config"));
}

/// The data path does not change the numbers: decoding on 1 or 2 workers, streaming or from
/// the in-memory cache, the same metrics and checkpoints.
#[test]
fn cache_and_worker_count_give_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let cfg = config.to_str().unwrap();
    let out = tmp.path().join("out");
    let mut first: Option<PathBuf> = None;
    for (k, (cache, workers)) in [("false", "1"), ("true", "2"), ("true", "1")]
        .into_iter()
        .enumerate()
    {
        ok(&trainer(&[
            "--config",
            cfg,
            "--output",
            out.to_str().unwrap(),
            "--quiet",
            "--cache",
            cache,
            "--workers",
            workers,
        ]));
        // The output folder name is part of the resolved config: keep it, move the result.
        let kept = tmp.path().join(format!("run{k}"));
        std::fs::rename(&out, &kept).unwrap();
        match &first {
            None => first = Some(kept),
            Some(f) => {
                for file in [
                    "metrics.csv",
                    "checkpoints/epoch-003/model.mpk",
                    "test_report.json",
                ] {
                    assert!(
                        std::fs::read(f.join(file)).unwrap()
                            == std::fs::read(kept.join(file)).unwrap(),
                        "{file} differs with cache {cache}, {workers} workers"
                    );
                }
            }
        }
    }
}

/// Killed at any moment (SIGKILL, no chance to clean up), a run leaves only whole files: every
/// checkpoint that exists is whole, metrics.csv parses, and --resume goes on from the last
/// checkpoint (loading it) and ends where a straight run ends.
#[test]
fn a_killed_run_leaves_whole_files_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let cfg = config.to_str().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    ok(&trainer(&["--config", cfg, "--output", o, "--quiet"]));
    let straight = tmp.path().join("straight");
    std::fs::rename(&out, &straight).unwrap();
    for delay_ms in [0u64, 3, 7, 15] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args(["--config", cfg, "--output", o, "--quiet"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill once the first checkpoint exists (plus a little), mid-epoch or mid-write.
        let ckpt = out.join("checkpoints/epoch-001/state.json");
        while !ckpt.exists() && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        // Cut short: killed before it could finish (the last epoch's checkpoint not written).
        assert!(
            !status.success(),
            "the run finished before the kill ({delay_ms} ms)"
        );
        assert!(!out.join("checkpoints/epoch-003/state.json").exists());
        let metrics = out.join("metrics.csv");
        if metrics.exists() {
            assert!(
                csv::Reader::from_path(&metrics)
                    .unwrap()
                    .records()
                    .all(|r| r.is_ok())
            );
        }
        let mut last_epoch = 0;
        for e in std::fs::read_dir(out.join("checkpoints")).unwrap() {
            let dir = e.unwrap().path();
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // a temp folder being written: never read
            }
            if let Some(n) = name.strip_prefix("epoch-") {
                last_epoch = last_epoch.max(n.parse::<usize>().unwrap());
            }
            for f in ["model.mpk", "state.json"] {
                assert!(dir.join(f).is_file(), "{name} lacks {f}");
            }
            let state = std::fs::read_to_string(dir.join("state.json")).unwrap();
            serde_json::from_str::<serde_json::Value>(&state).unwrap();
        }
        // It goes on from the last whole checkpoint (not from scratch, which would also end
        // with the same bytes), then ends where the straight run did.
        let resumed = ok(&trainer(&[
            "--config", cfg, "--output", o, "--quiet", "--resume",
        ]));
        assert!(
            resumed.contains(&format!("resuming after epoch {last_epoch} ")),
            "{delay_ms} ms: {resumed}"
        );
        same_bytes(&straight, &out);
        std::fs::remove_dir_all(&out).unwrap();
    }
}
