use super::*;

#[test]
fn the_runs_threshold_is_read_and_checked() {
    let (tmp, _) = small_random_run();
    assert!(
        load(tmp.path(), Some(Checkpoint::Best))
            .unwrap()
            .threshold
            .is_none()
    );
    let path = tmp.path().join(checkpoint::THRESHOLD_FILE);
    let write = |t: &str| {
        let json = format!(r#"{{"threshold": {t}, "source": "max_bac", "epoch": 1}}"#);
        std::fs::write(&path, json).unwrap();
    };
    write("0.3");
    let t = load(tmp.path(), Some(Checkpoint::Best))
        .unwrap()
        .threshold
        .unwrap();
    assert_eq!((t.threshold, t.chosen_with.epoch), (0.3, 1));
    // Chosen for epoch 1; the random run's checkpoint is epoch 0: left out, and said so.
    let opts = Options {
        verify: false,
        ..Options::new(tmp.path(), &tmp.path().join("m.onnx"))
    };
    let note = export(&opts).unwrap().note.unwrap();
    assert!(
        note.contains("chosen for epoch 1") && note.contains("leaves it out"),
        "{note}"
    );
    let json = r#"{"threshold": 0.3, "source": "max_bac", "epoch": 0}"#;
    std::fs::write(&path, json).unwrap();
    assert!(export(&opts).unwrap().note.is_none());
    for bad in ["1.5", "-0.1"] {
        write(bad);
        let e = format!(
            "{:#}",
            load(tmp.path(), Some(Checkpoint::Best)).err().unwrap()
        );
        assert!(
            e.contains("is not in [0, 1]") && e.contains("threshold.json"),
            "{e}"
        );
    }
    std::fs::write(&path, "{").unwrap();
    let e = format!(
        "{:#}",
        load(tmp.path(), Some(Checkpoint::Best)).err().unwrap()
    );
    assert!(e.contains("malformed"), "{e}");
}
/// A random run of a small CancerNet, and its model config.
fn small_random_run() -> (tempfile::TempDir, models::CancerNetConfig) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = models::CancerNetConfig::default()
        .with_input_size(32)
        .with_widths(vec![8])
        .with_depths(vec![1])
        .with_dense(8);
    trainer::checkpoint::write_random_run(tmp.path(), &cfg, 3).unwrap();
    (tmp, cfg)
}

fn flat(model: &CancerNet<B>) -> Vec<f32> {
    model.dense.weight.val().into_data().to_vec().unwrap()
}

/// With no --checkpoint, the exporter takes the checkpoint the run's report stands for
/// (`eval.checkpoint` in its config.yaml); best when the run says nothing.
#[test]
fn the_runs_checkpoint_is_the_default() {
    let (tmp, cfg) = small_random_run();
    // A second checkpoint, epoch 2, with other weights.
    let other = tmp.path().join("other");
    trainer::checkpoint::write_random_run(&other, &cfg, 4).unwrap();
    let run = RunDir {
        root: tmp.path().to_path_buf(),
    };
    std::fs::rename(other.join("checkpoints/best"), run.epoch_dir(2)).unwrap();
    let state = run.epoch_dir(2).join(checkpoint::STATE_FILE);
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, text.replace("\"epoch\": 0", "\"epoch\": 2")).unwrap();
    let epoch = |which| load(tmp.path(), which).unwrap().epoch;
    assert_eq!((epoch(None), epoch(Some(Checkpoint::Last))), (0, 2));
    let yaml = tmp.path().join(checkpoint::CONFIG_FILE);
    std::fs::write(&yaml, "eval:\n  checkpoint: last\n").unwrap();
    let loaded = load(tmp.path(), None).unwrap();
    let meta: std::collections::BTreeMap<_, _> =
        loaded.contract.to_metadata().into_iter().collect();
    assert_eq!(
        (loaded.epoch, meta["train.checkpoint"].as_str()),
        (2, "last (epoch 2)")
    );
    assert_eq!(epoch(Some(Checkpoint::Best)), 0);
    // The trainer's average of epochs 1-2, and the threshold chosen for it.
    let third = tmp.path().join("third");
    trainer::checkpoint::write_random_run(&third, &cfg, 5).unwrap();
    std::fs::rename(third.join("checkpoints/best"), run.average_dir()).unwrap();
    std::fs::copy(&state, run.average_dir().join(checkpoint::STATE_FILE)).unwrap();
    std::fs::write(&yaml, "eval:\n  checkpoint: average\n  average_epochs: 2\n").unwrap();
    let threshold = tmp.path().join(checkpoint::THRESHOLD_FILE);
    let json = r#"{"threshold": 0.4, "source": "max_bac", "epoch": 2, "averaged": true}"#;
    std::fs::write(&threshold, json).unwrap();
    let loaded = load(tmp.path(), None).unwrap();
    assert!(loaded.averaged && loaded.epoch == 2);
    let meta: std::collections::BTreeMap<_, _> =
        loaded.contract.to_metadata().into_iter().collect();
    assert_eq!(meta["train.checkpoint"], "average of epochs 1-2");
    let last = load(tmp.path(), Some(Checkpoint::Last)).unwrap();
    assert!(!last.averaged);
    let t = loaded.threshold.as_ref().unwrap();
    let with_context = trainer::threshold::Evaluation {
        context: Some(0.5),
        ..loaded.evaluation(false)
    };
    assert!(t.holds_for(&loaded.evaluation(false)));
    assert!(!t.holds_for(&last.evaluation(false)) && !t.holds_for(&with_context));
    assert_ne!(
        flat(&loaded.model),
        flat(&last.model),
        "average/ and the last epoch loaded the same weights"
    );
    // With eval.precise_bn: precise-bn/, the average with recomputed statistics; the
    // threshold chosen for the plain average does not hold for it.
    let fourth = tmp.path().join("fourth");
    trainer::checkpoint::write_random_run(&fourth, &cfg, 6).unwrap();
    std::fs::rename(fourth.join("checkpoints/best"), run.precise_bn_dir()).unwrap();
    std::fs::copy(&state, run.precise_bn_dir().join(checkpoint::STATE_FILE)).unwrap();
    let eval = "eval:\n  checkpoint: average\n  average_epochs: 2\n  precise_bn: true\n";
    std::fs::write(&yaml, eval).unwrap();
    let precise = load(tmp.path(), None).unwrap();
    assert!(precise.averaged && precise.precise_bn && precise.epoch == 2);
    let meta: std::collections::BTreeMap<_, _> =
        precise.contract.to_metadata().into_iter().collect();
    assert_eq!(
        meta["train.checkpoint"],
        "average of epochs 1-2, BatchNorm statistics recomputed on the training split"
    );
    assert_ne!(flat(&precise.model), flat(&loaded.model));
    let average = load(tmp.path(), Some(Checkpoint::Average)).unwrap();
    assert!(average.averaged && !average.precise_bn);
    assert_eq!(flat(&average.model), flat(&loaded.model));
    let opts = Options {
        verify: false,
        ..Options::new(tmp.path(), &tmp.path().join("m.onnx"))
    };
    let note = export(&opts).unwrap().note.unwrap();
    assert!(
        note.contains("chosen for epoch 2 (averaged);")
            && note.contains("export (epoch 2 (averaged, precise BatchNorm))"),
        "{note}"
    );
    let json = r#"{"threshold": 0.4, "source": "max_bac", "epoch": 2, "averaged": true,
        "precise_bn": true}"#;
    std::fs::write(&threshold, json).unwrap();
    assert!(export(&opts).unwrap().note.is_none());
    assert_eq!("precise-bn".parse(), Ok(Checkpoint::PreciseBn));
    std::fs::write(&yaml, "eval:\n  checkpoint: first\n").unwrap();
    let e = format!("{:#}", load(tmp.path(), None).err().unwrap());
    assert!(e.contains("config.yaml"), "{e}");
}

/// The run's `eval.context` becomes the metadata's `context.weight`; `--context=false`
/// leaves it out and `--context` adds the default weight to a run without one. A threshold
/// chosen on predictions carries the weight it was chosen with, a fixed one "any".
#[test]
fn neighbour_context_travels_in_the_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = CancerNetConfig::default()
        .with_widths(vec![8, 16])
        .with_depths(vec![1, 1]);
    trainer::checkpoint::write_random_run(tmp.path(), &cfg, 3).unwrap();
    let value = |context: Option<bool>, key: &str| {
        let mut loaded = load(tmp.path(), None).unwrap();
        let opts = Options {
            context,
            ..Options::new(tmp.path(), &tmp.path().join("m.onnx"))
        };
        loaded.context = opts.context_for(loaded.context);
        let tta = opts.tta_for(&loaded);
        let bytes = to_onnx(&loaded, true, tta).unwrap();
        let meta = ModelProto::decode(bytes.as_slice()).unwrap().metadata_props;
        let values: Vec<_> = meta
            .into_iter()
            .filter(|e| e.key.as_deref() == Some(key))
            .filter_map(|e| e.value)
            .collect();
        assert!(values.len() <= 1, "{values:?}");
        values.into_iter().next()
    };
    let weight = |context| value(context, contract::keys::CONTEXT);
    assert_eq!(weight(None), None, "no context unless asked");
    assert_eq!(weight(Some(true)).as_deref(), Some("0.5"));
    std::fs::write(
        tmp.path().join(checkpoint::CONFIG_FILE),
        "eval:\n  context: 0.75\n",
    )
    .unwrap();
    assert_eq!(weight(None).as_deref(), Some("0.75"));
    assert_eq!(weight(Some(true)).as_deref(), Some("0.75"));
    assert_eq!(weight(Some(false)), None);
    let threshold = tmp.path().join(checkpoint::THRESHOLD_FILE);
    let chosen = |context| {
        (
            value(context, contract::keys::THRESHOLD),
            value(context, contract::keys::THRESHOLD_CONTEXT),
        )
    };
    let json = r#"{"threshold": 0.4, "source": "max_bac", "epoch": 0, "context": 0.75}"#;
    std::fs::write(&threshold, json).unwrap();
    let (t, with) = chosen(None);
    assert_eq!((t.as_deref(), with.as_deref()), (Some("0.4"), Some("0.75")));
    assert_eq!(chosen(Some(false)), (None, None), "chosen with context");
    std::fs::write(
        &threshold,
        r#"{"threshold": 0.4, "source": "max_bac", "epoch": 0}"#,
    )
    .unwrap();
    let (t, with) = chosen(Some(false));
    assert_eq!((t.as_deref(), with.as_deref()), (Some("0.4"), Some("none")));
    let json = r#"{"threshold": 0.5, "source": "fixed", "fixed": true, "epoch": 0}"#;
    std::fs::write(&threshold, json).unwrap();
    for context in [None, Some(false)] {
        let (t, with) = chosen(context);
        let expected = (Some("0.5"), Some("any"));
        assert_eq!((t.as_deref(), with.as_deref()), expected, "{context:?}");
    }
    // A weight out of range in the run's config is refused, naming the file.
    std::fs::write(
        tmp.path().join(checkpoint::CONFIG_FILE),
        "eval:\n  context: 7\n",
    )
    .unwrap();
    let e = format!("{:#}", load(tmp.path(), None).err().unwrap());
    assert!(
        e.contains("config.yaml") && e.contains("eval.context = 7"),
        "{e}"
    );
}
