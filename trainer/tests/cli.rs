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
            "data:\n  root: {}\nmodel:\n  input_size: 24\n  widths: [8, 16]\n  depths: [1, 1]\n  dense: 16\ntrain:\n  epochs: 3\n  batch_size: 16\n  max_steps_per_epoch: 6\n  threads: 2\n",
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

/// The files a run writes that must be the same bytes on a rerun and after a resume.
const SAME_BYTES: [&str; 7] = [
    "metrics.csv",
    "test_report.json",
    "checkpoints/epoch-003/model.mpk",
    "checkpoints/epoch-003/optim.mpk",
    "checkpoints/epoch-003/state.json",
    "checkpoints/best/model.mpk",
    "model.json",
];

fn same_bytes(a: &Path, b: &Path) {
    for f in SAME_BYTES {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(
            x == y,
            "{f} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

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

/// A loss that is not a number stops the run at once, exit status 2, naming where, with nothing
/// written for the epoch it was in. Class weights near f32's largest value make the very first
/// batch's loss overflow to infinity (a weight that large is valid YAML and a positive number);
/// a NaN output bias in a checkpoint makes a resumed run's loss NaN.
#[test]
fn a_loss_that_is_not_a_number_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let text = std::fs::read_to_string(&config).unwrap();
    let huge = tmp.path().join("huge.yaml");
    std::fs::write(
        &huge,
        text.replace("train:\n", "train:\n  class_weights: [3.0e38, 3.0e38]\n"),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = trainer(&[
        "--config",
        huge.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    // Exit status 2 and the whole message, `at` saying what the loss became and where.
    let stopped = |o: &Output, at: &str| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(
            err.trim(),
            format!(
                "error: loss became {at} (batch 0); lower train.learning_rate (or \
                 train.class_weights, when set by hand)"
            )
        );
    };
    stopped(&o, "inf at epoch 1, step 0");
    assert!(!out.join("checkpoints/epoch-001").exists());
    assert!(!out.join("test_report.json").exists());

    // NaN too, later in a run: resumed from a checkpoint whose output layer's bias is NaN, the
    // run stops at its first batch, the checkpoint it resumed from left as it was.
    use burn::config::Config;
    use burn::module::{Module, Param};
    type Cpu = burn::backend::Flex;
    let nan = tmp.path().join("nan");
    let n = nan.to_str().unwrap();
    let cfg = config.to_str().unwrap();
    ok(&trainer(&[
        "--config",
        cfg,
        "--output",
        n,
        "--quiet",
        "--stop-after",
        "1",
    ]));
    let run = trainer::checkpoint::RunDir { root: nan.clone() };
    let epoch1 = run.epoch_dir(1);
    let device = Default::default();
    let model_cfg =
        models::CancerNetConfig::load(nan.join(trainer::checkpoint::MODEL_CONFIG_FILE)).unwrap();
    let mut model = run
        .load_model(model_cfg.init::<Cpu>(&device), &epoch1, &device)
        .unwrap();
    let bias = model.head.bias.take().unwrap();
    let nans = burn::tensor::Tensor::full(bias.dims(), f32::NAN, &device);
    model.head.bias = Some(Param::initialized(bias.id, nans));
    model
        .save_file(epoch1.join("model"), &trainer::checkpoint::recorder())
        .unwrap();
    let saved = std::fs::read(epoch1.join(trainer::checkpoint::MODEL_FILE)).unwrap();
    let o = trainer(&["--config", cfg, "--output", n, "--quiet", "--resume"]);
    stopped(&o, "NaN at epoch 2, step 6");
    assert!(!nan.join("checkpoints/epoch-002").exists());
    assert_eq!(
        std::fs::read(epoch1.join(trainer::checkpoint::MODEL_FILE)).unwrap(),
        saved
    );
}

#[test]
fn clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let cfg = config.to_str().unwrap();
    let missing = tmp.path().join("nonexistent");
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--config", "nope.yaml"],
            "cannot read config nope.yaml: No such file or directory (os error 2)".into(),
        ),
        (
            vec![
                "--config",
                cfg,
                "--data",
                missing.to_str().unwrap(),
                "--output",
                o,
            ],
            format!(
                "split folder {}/training is missing: run `datasets build` first (or set data.root)",
                missing.display()
            ),
        ),
        (
            vec!["--config", cfg, "--epochs", "0"],
            "train.epochs = 0 is out of range [1, 100000]".into(),
        ),
        #[cfg(not(feature = "cuda"))]
        (
            vec!["--config", cfg, "--device", "cuda", "--output", o],
            "device: cuda was asked for, but this trainer was built without CUDA: rebuild with \
             `cargo build --release --features cuda` (or use --device cpu)"
                .into(),
        ),
    ];
    for (args, want) in cases {
        let o = trainer(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        // The whole message, on one line, and nothing on stdout.
        assert_eq!(err.trim(), format!("error: {want}"), "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    // Built with CUDA on a machine without a usable GPU: the missing part, on one line
    // (trainer/tests/gpu/ checks each part's message; a machine with a GPU trains).
    #[cfg(feature = "cuda")]
    {
        let o = trainer(&["--config", cfg, "--device", "cuda", "--output", o]);
        let err = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() {
            assert_eq!(o.status.code(), Some(2), "{err}");
            assert!(
                err.trim().starts_with(
                    "error: device: cuda was asked for but CUDA cannot be used here: "
                ),
                "{err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }
    // A split with one class only: the counts and the way out.
    let one = tmp.path().join("one");
    std::fs::create_dir_all(one.join("training/0")).unwrap();
    for f in std::fs::read_dir(tmp.path().join("idc/training/0"))
        .unwrap()
        .take(3)
    {
        let f = f.unwrap().path();
        std::fs::copy(&f, one.join("training/0").join(f.file_name().unwrap())).unwrap();
    }
    let o = trainer(&[
        "--config",
        cfg,
        "--data",
        one.to_str().unwrap(),
        "--output",
        o,
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("has one class only (3 no-IDC, 0 IDC patches): a classifier needs both"),
        "{err}"
    );
    assert!(!out.exists(), "a refused run wrote {}", out.display());
}

/// Another config in a run folder is refused (nothing of the old run changes); --force starts
/// over there; the best checkpoint is the epoch with the lowest validation loss.
#[test]
fn another_config_is_refused_and_force_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let cfg = config.to_str().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    ok(&trainer(&["--config", cfg, "--output", o, "--quiet"]));
    let metrics = std::fs::read(out.join("metrics.csv")).unwrap();
    // Best = lowest validation loss.
    let rows: Vec<(usize, f64)> = csv::Reader::from_path(out.join("metrics.csv"))
        .unwrap()
        .deserialize::<std::collections::HashMap<String, String>>()
        .map(|r| {
            let r = r.unwrap();
            (r["epoch"].parse().unwrap(), r["val_loss"].parse().unwrap())
        })
        .collect();
    let best = rows.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("checkpoints/best/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["epoch"], best);
    assert_eq!(
        std::fs::read(out.join("checkpoints/best/model.mpk")).unwrap(),
        std::fs::read(out.join(format!("checkpoints/epoch-{best:03}/model.mpk"))).unwrap()
    );
    let other = trainer(&["--config", cfg, "--output", o, "--quiet", "--seed", "7"]);
    assert_eq!(other.status.code(), Some(2));
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        err.contains("holds a run with a different config; pass --force"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("metrics.csv")).unwrap(), metrics);
    let forced = ok(&trainer(&[
        "--config", cfg, "--output", o, "--quiet", "--seed", "7", "--force",
    ]));
    assert!(forced.contains("epoch 1/3"), "{forced}");
    assert_ne!(std::fs::read(out.join("metrics.csv")).unwrap(), metrics);
    assert!(
        std::fs::read_to_string(out.join("config.yaml"))
            .unwrap()
            .contains("seed: 7")
    );
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
