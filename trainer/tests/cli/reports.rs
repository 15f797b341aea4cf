//! What a run reports: the checkpoint the report stands for, every skipped file named, and
//! patient-level cross-validation.

use super::{ok, setup, trainer};
use std::path::Path;

/// `eval.checkpoint: last` reports the last epoch's model, `average` the mean of the last
/// epochs' weights (written to checkpoints/average/), and each says so; the default the best.
#[test]
fn the_report_stands_for_the_checkpoint_the_config_names() {
    let tmp = tempfile::tempdir().unwrap();
    let best = setup(tmp.path());
    let text = std::fs::read_to_string(&best).unwrap();
    let with = |name: &str, eval: &str| {
        let path = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(&path, format!("{text}eval:\n{eval}")).unwrap();
        path
    };
    let last = with("last", "  checkpoint: last\n");
    let average = with("average", "  checkpoint: average\n  average_epochs: 2\n");
    let precise = with(
        "precise",
        "  checkpoint: average\n  average_epochs: 2\n  precise_bn: true\n",
    );
    let best_precise = with("best-precise", "  precise_bn: true\n");
    let runs = [
        (&best, "best"),
        (&last, "last"),
        (&average, "average"),
        (&precise, "precise"),
        (&best_precise, "best-precise"),
    ];
    for (cfg, run) in runs {
        let (name, precise) = match run {
            "precise" => ("average", true),
            "best-precise" => ("best", true),
            _ => (run, false),
        };
        let out = tmp.path().join(run);
        let args = [
            "--config",
            cfg.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ];
        let printed = ok(&trainer(&[&args[..], &["--quiet"]].concat()));
        let read = |f: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(out.join(f)).unwrap()).unwrap()
        };
        let want = match name {
            "best" => read("checkpoints/best/state.json")["epoch"]
                .as_u64()
                .unwrap(),
            _ => 3,
        };
        let report = read("test_report.json");
        assert_eq!(report["checkpoint"], name);
        assert_eq!(report["checkpoint_epoch"], want);
        assert_eq!(read("threshold.json")["epoch"], want);
        let mut what = match name {
            "average" => ", the mean of epochs 2-3".to_string(),
            _ => String::new(),
        };
        if precise {
            what += ", BatchNorm statistics recomputed on the training split";
        }
        let line = format!("testing split, {name} checkpoint (epoch {want}{what})");
        assert!(printed.contains(&line), "{line} missing from\n{printed}");
        assert_eq!(read("threshold.json")["averaged"], name == "average");
        assert_eq!(read("threshold.json")["precise_bn"], precise);
        assert_eq!(report["precise_bn"], precise);
        let averaged = out.join("checkpoints/average/model.mpk");
        assert_eq!(averaged.is_file(), name == "average");
        let recomputed = out.join("checkpoints/precise-bn/model.mpk");
        assert_eq!(recomputed.is_file(), precise);
        let bytes = |p: &Path| std::fs::read(p).unwrap();
        if name == "average" {
            let last = out.join("checkpoints/epoch-003/model.mpk");
            assert_ne!(
                bytes(&averaged),
                bytes(&last),
                "the average is the last epoch"
            );
        }
        let state = |dir: &str| read(&format!("checkpoints/{dir}/state.json"));
        if name == "average" {
            // The average's own validation numbers, not the last epoch's.
            assert_eq!(state("average")["epoch"], 3);
            assert_ne!(state("average")["val_loss"], state("epoch-003")["val_loss"]);
        }
        if precise {
            // The same model as without precise_bn (same seed, same epochs), new statistics,
            // the epoch it stands for and its own validation numbers.
            let (source, plain) = match name {
                "average" => ("average", averaged.clone()),
                _ => ("best", out.join("checkpoints/best/model.mpk")),
            };
            let without = tmp
                .path()
                .join(format!("{name}/checkpoints/{source}/model.mpk"));
            assert_eq!(bytes(&plain), bytes(&without));
            assert_ne!(bytes(&recomputed), bytes(&plain));
            assert_eq!(state("precise-bn")["epoch"], want);
            assert_ne!(state("precise-bn")["val_loss"], state(source)["val_loss"]);
        }
    }
}

#[test]
fn every_skipped_file_is_named_in_the_log_and_the_run_files() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let idc = tmp.path().join("idc");
    let corrupt = [
        idc.join("validation/0/900_idx5_x1_y1_class0.png"),
        idc.join("validation/1/900_idx5_x51_y1_class1.png"),
        idc.join("testing/0/901_idx5_x1_y1_class0.png"),
    ];
    for f in &corrupt {
        std::fs::write(f, b"\x89PNG\r\n\x1a\nbroken").unwrap();
    }
    let out_dir = tmp.path().join("out");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--output",
        out_dir.to_str().unwrap(),
        "--quiet",
        "--epochs",
        "1",
    ];
    let o = trainer(&args);
    ok(&o);
    let log = String::from_utf8_lossy(&o.stderr);
    for f in &corrupt {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            log.matches(name).count(),
            1,
            "{name} not named once in:\n{log}"
        );
    }
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("run.json")).unwrap()).unwrap();
    let skipped = run["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert_eq!(
        skipped
            .iter()
            .filter(|s| s["split"] == "validation")
            .count(),
        2
    );
    let test: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("test_report.json")).unwrap())
            .unwrap();
    let test_skipped = test["skipped"].as_array().unwrap();
    assert_eq!(test_skipped.len(), 1);
    assert!(
        test_skipped[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("901_idx5_x1_y1_class0.png")
    );
    // --strict: the first of them stops the run, by name.
    let strict = trainer(&[&args[..], &["--force", "--strict"]].concat());
    assert_eq!(strict.status.code(), Some(2));
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(err.contains("--strict") && err.contains("idx5_x"), "{err}");
    // The forced run began from an empty slate: nothing of the earlier run's report can pass for
    // it, so a run without --strict is not "already complete".
    assert!(!out_dir.join("test_report.json").exists());
    let again = ok(&trainer(&args));
    assert!(!again.contains("already complete"), "{again}");
}

/// Patient-level cross-validation through the binary: every patient tested once, by a fold
/// that never trained on it; folds in the provenance; a rerun reuses the finished folds.
#[test]
fn cross_validation_tests_every_patient_once() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let out = tmp.path().join("cv");
    let orig = tmp.path().join("orig");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--quiet",
        "--epochs",
        "1",
        "--folds",
        "3",
        "--cv-source",
        orig.to_str().unwrap(),
    ];
    let text = ok(&trainer(&args));
    assert!(
        text.contains("mean ± sd over folds") && text.contains("tta@max_bac"),
        "{text}"
    );
    let cv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("cv.json")).unwrap()).unwrap();
    assert_eq!(cv["per_fold"].as_array().unwrap().len(), 3);
    let mut tested = std::collections::BTreeMap::new();
    for k in 1..=3 {
        let run: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("fold-{k}/run.json"))).unwrap(),
        )
        .unwrap();
        let splits = &run["splits"];
        assert_eq!(splits["cross_validation"]["fold"], k);
        let set = |s: &str| -> std::collections::BTreeSet<String> {
            splits[s]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect()
        };
        let (train, val, test) = (set("training"), set("validation"), set("testing"));
        assert!(train.is_disjoint(&test) && val.is_disjoint(&test) && train.is_disjoint(&val));
        for p in test {
            assert!(tested.insert(p, k).is_none(), "a patient is tested twice");
        }
    }
    let folds_csv = std::fs::read_to_string(out.join("cv-folds.csv")).unwrap();
    assert_eq!(folds_csv.lines().count() - 1, tested.len());
    assert_eq!(tested.len(), 8, "every synthetic patient is tested once");
    let summary = &cv["summary"]["configured"]["balanced_accuracy"];
    assert_eq!(summary["folds"], 3);
    // Precise and per-patient BatchNorm statistics are reported for every fold (the mean of up
    // to 10 epochs: here the one).
    for v in ["last-pbn", "avg10-pbn", "avg10-adabn"] {
        for view in ["plain", "tta"] {
            let s = &cv["summary"][format!("{v}-{view}@0.5")]["roc_auc"];
            assert_eq!(s["folds"], 3, "{v}-{view}: {s}");
        }
    }
    // So is neighbour context on the configured model; the synthetic slides have neighbours, so
    // it moves the probabilities, and the per-patient ranking with them.
    for view in ["plain", "tta"] {
        let s = &cv["summary"][format!("{view}-context@0.5")];
        assert_eq!(s["roc_auc"]["folds"], 3, "{view}: {s}");
        assert_ne!(
            s["roc_auc"],
            cv["summary"][format!("{view}@0.5")]["roc_auc"]
        );
    }
    let again = ok(&trainer(&args));
    assert_eq!(again.matches("reused").count(), 3, "{again}");
    // Another cross-validation in the same folder holds other patients per fold: refused.
    let other = trainer(&[&args[..], &["--cv-seed", "7"]].concat());
    assert_eq!(other.status.code(), Some(2));
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("of another cross-validation"), "{err}");
    // More folds than patients: refused.
    let mut too_many = args.to_vec();
    too_many[8] = "9";
    let o = trainer(&too_many);
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot fill 9 folds"));
}
