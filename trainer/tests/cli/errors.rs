//! Runs that stop or are refused: a loss that is not a number, clear one-line errors, another
//! config in a run folder (and `--force`).

use super::{ok, setup, trainer};
use std::process::Output;

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
    // Flags that do not go together are refused before anything runs: --resume with --force
    // (which would start over), the cross-validation's flags without --folds.
    for (args, want) in [
        (
            vec!["--resume", "--force"],
            "the argument '--resume' cannot be used with '--force'",
        ),
        (vec!["--cv-seed", "7"], "--folds <FOLDS>"),
        (vec!["--cv-val-fraction", "0.2"], "--folds <FOLDS>"),
        (vec!["--cv-source", "."], "--folds <FOLDS>"),
    ] {
        let mut all = vec!["--config", cfg, "--output", o];
        all.extend(&args);
        let out = trainer(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(!out.exists(), "a refused run wrote {}", out.display());
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
    // A folder of someone's own that holds what a run writes (no run.json, no checkpoint) is
    // refused, --force or not, and left as it was; other files beside a run's do not matter.
    let own = tmp.path().join("own");
    std::fs::create_dir_all(own.join("checkpoints")).unwrap();
    std::fs::write(own.join("checkpoints/weights.h5"), "mine").unwrap();
    std::fs::write(own.join("metrics.csv"), "mine").unwrap();
    for force in [&[][..], &["--force"]] {
        let mut args = vec!["--config", cfg, "--output", own.to_str().unwrap()];
        args.extend(force);
        let o = trainer(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("holds checkpoints but is not a trainer's run folder"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(own.join("checkpoints/weights.h5")).unwrap(),
        b"mine"
    );
    assert_eq!(std::fs::read(own.join("metrics.csv")).unwrap(), b"mine");
}

/// Another config in a run folder is refused (nothing of the old run changes); --force starts
/// over there, leaving what the trainer did not write (a copy kept in checkpoints/); the best
/// checkpoint is the epoch with the lowest validation loss.
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
    let kept = out.join("checkpoints/kept-best");
    std::fs::create_dir(&kept).unwrap();
    std::fs::copy(
        out.join("checkpoints/best/model.mpk"),
        kept.join("model.mpk"),
    )
    .unwrap();
    let forced = ok(&trainer(&[
        "--config", cfg, "--output", o, "--quiet", "--seed", "7", "--force",
    ]));
    assert!(forced.contains("epoch 1/3"), "{forced}");
    assert_ne!(std::fs::read(out.join("metrics.csv")).unwrap(), metrics);
    assert!(kept.join("model.mpk").is_file());
    assert!(
        std::fs::read_to_string(out.join("config.yaml"))
            .unwrap()
            .contains("seed: 7")
    );
}

#[test]
fn a_config_in_the_output_folder_is_refused_until_the_run_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let mine = format!(
        "# my experiment: the tutorial's recipe, smaller\n{}",
        std::fs::read_to_string(setup(tmp.path())).unwrap()
    );
    let out = tmp.path().join("exp");
    std::fs::create_dir(&out).unwrap();
    let config = out.join("config.yaml");
    std::fs::write(&config, &mine).unwrap();
    let (cfg, o) = (config.to_str().unwrap(), out.to_str().unwrap());
    // A run would write its resolved config over the user's file: refused, --force or not,
    // with where to keep it instead.
    for force in [&[][..], &["--force"]] {
        let refused = trainer(&[&["--config", cfg, "--output", o, "--quiet"][..], force].concat());
        assert_eq!(refused.status.code(), Some(2));
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            err.contains("is the --config, and it lies where a run writes the config")
                && err.contains(&format!("{}.yaml", out.display())),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&config).unwrap(), mine);
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    }
    // Kept beside the run folder, as the error says, it trains; the run's own config.yaml
    // passed back is how a run goes on.
    let beside = tmp.path().join("exp.yaml");
    std::fs::rename(&config, &beside).unwrap();
    let run = ["--output", o, "--quiet", "--stop-after", "1"];
    ok(&trainer(
        &[&["--config", beside.to_str().unwrap()][..], &run].concat(),
    ));
    ok(&trainer(
        &[&["--config", cfg, "--resume"][..], &run].concat(),
    ));
    assert!(out.join("checkpoints/epoch-002").is_dir());
}
