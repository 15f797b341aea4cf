use super::*;

#[test]
fn shipped_config_is_the_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cancernet.yaml");
    let cfg = TrainConfig::load(&path).unwrap();
    assert_eq!(cfg, TrainConfig::default());
    cfg.validate().unwrap();
    assert_eq!(cfg.model, CancerNetConfig::default());
}

#[test]
fn a_run_is_its_numbers_not_its_place_or_speed() {
    let a = TrainConfig::default();
    let mut b = a.clone();
    b.output = "elsewhere/run".into();
    b.device = Device::Wgpu;
    b.data.workers = 3;
    b.data.cache = true;
    b.train.threads = 1;
    assert!(a.same_run(&b));
    b.train.epochs += 1;
    assert!(!a.same_run(&b));
    let mut c = a.clone();
    c.eval.tta = true;
    assert!(!a.same_run(&c));
}

/// configs/cancernet.yaml holds every knob, as it says: each key of the config (with its
/// default) is in the file, or shown there commented out (`# context: 0.5`, a key absent by
/// default).
#[test]
fn shipped_config_names_every_key() {
    fn keys(v: &yaml_serde::Value, path: &str, out: &mut Vec<String>) {
        if let yaml_serde::Value::Mapping(m) = v {
            for (k, v) in m {
                let k = format!("{path}{}", k.as_str().unwrap());
                keys(v, &format!("{k}."), out);
                out.push(k);
            }
        }
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cancernet.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let shipped: yaml_serde::Value = yaml_serde::from_str(&text).unwrap();
    let (mut all, mut present) = (Vec::new(), Vec::new());
    keys(
        &yaml_serde::to_value(TrainConfig::default()).unwrap(),
        "",
        &mut all,
    );
    keys(&shipped, "", &mut present);
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| !present.contains(k))
        .filter(|k| !text.contains(&format!("# {}:", k.rsplit('.').next().unwrap())))
        .collect();
    assert!(all.len() > 40, "{all:?}");
    assert!(
        missing.is_empty(),
        "not in configs/cancernet.yaml: {missing:?}"
    );
}

/// Every config the project ships (configs/, the cross-validation recipes in bench/cv/)
/// loads and validates.
#[test]
fn every_shipped_config_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut n = 0;
    for dir in ["configs", "bench/cv"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let cfg = TrainConfig::load(&path).unwrap();
                cfg.validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
    }
    assert!(n >= 5, "{n} configs found");
}

/// The tutorial's recipe stays the default: no colour jitter, threshold 0.5, no TTA, and
/// the tutorial's numbers everywhere else.
#[test]
fn the_default_is_pinned_to_the_tutorial() {
    let c = TrainConfig::default();
    let a = &c.augment;
    assert_eq!(
        (a.rotation, a.zoom, a.width_shift, a.height_shift, a.shear),
        (20.0, 0.05, 0.1, 0.1, 0.05)
    );
    assert!(a.horizontal_flip && a.vertical_flip && !a.quarter_turns && a.stain().is_off());
    assert_eq!(c.eval.threshold, Threshold::Fixed(0.5));
    assert!(!c.eval.tta && c.eval.context.is_none());
    assert_eq!(c.eval.checkpoint, CheckpointChoice::Best);
    let t = &c.train;
    assert_eq!((t.epochs, t.batch_size, t.learning_rate), (40, 32, 1e-2));
    assert_eq!(t.optimizer, OptimizerKind::Adagrad);
    assert_eq!(
        (t.initial_accumulator, t.epsilon, t.decay),
        (0.1, 1e-7, None)
    );
    assert_eq!(t.class_weights, ClassWeights::Auto(AutoWeights::Auto));
    let m = &c.model;
    assert_eq!((m.conv_dropout, m.dense_dropout), (0.25, 0.5));
    assert_eq!((m.bn_momentum, m.bn_epsilon), (0.99, 1e-3));
    assert_eq!(a.fill_mode, datasets::augment::FillMode::Nearest);
    // The tutorial's images are 50x50 resized to 48x48 by Keras' load_img: nearest neighbour.
    assert_eq!((m.input_size, c.data.resize_filter), (48, Filter::Nearest));
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let err = format!(
        "{:#}",
        yaml_serde::from_str::<TrainConfig>("train:\n  epoch: 3\n").unwrap_err()
    );
    assert!(err.contains("epoch"), "{err}");
    let err = format!(
        "{:#}",
        yaml_serde::from_str::<TrainConfig>("augment:\n  rotate: 3\n").unwrap_err()
    );
    assert!(err.contains("rotate"), "{err}");
    let err = format!(
        "{:#}",
        yaml_serde::from_str::<TrainConfig>("model:\n  width: [8]\n").unwrap_err()
    );
    assert!(err.contains("width"), "{err}");
}

/// The model section is CancerNet's own config; its channels and classes are the trainer's
/// data's, and config.yaml leaves them out (it reads as before they were keys).
#[test]
fn the_model_section_is_cancernets_config() {
    let cfg: TrainConfig = yaml_serde::from_str("model:\n  dense: 64\n  channels: 3\n").unwrap();
    assert_eq!(cfg.model, CancerNetConfig::default().with_dense(64));
    let yaml = cfg.to_yaml().unwrap();
    assert!(yaml.contains("dense: 64") && !yaml.contains("channels") && !yaml.contains("classes"));
    assert_eq!(yaml_serde::from_str::<TrainConfig>(&yaml).unwrap(), cfg);
    for bad in ["model:\n  channels: 1\n", "model:\n  classes: 3\n"] {
        let cfg: TrainConfig = yaml_serde::from_str(bad).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("two classes"), "{bad:?}: {err}");
        assert!(cfg.to_yaml().unwrap().contains("channels"), "{bad:?}");
    }
}

#[test]
fn out_of_range_values_name_the_key() {
    let cases = [
        ("train:\n  epochs: 0\n", "train.epochs"),
        ("train:\n  learning_rate: -1\n", "train.learning_rate"),
        ("augment:\n  zoom: 3\n", "augment.zoom"),
        ("model:\n  input_size: 4\n", "input_size"),
        ("train:\n  class_weights: [1, -2]\n", "train.class_weights"),
        ("train:\n  class_weights: [0, 1]\n", "train.class_weights"),
        (
            "train:\n  class_weights: [1, .inf]\n",
            "train.class_weights",
        ),
        ("model:\n  widths: [32, 4097, 128]\n", "at most 4096"),
        ("eval:\n  threshold: 1.5\n", "eval.threshold"),
        ("eval:\n  context: 0\n", "eval.context"),
        ("eval:\n  context: 4.5\n", "eval.context"),
        ("eval:\n  context: .nan\n", "eval.context"),
    ];
    for (yaml, key) in cases {
        let cfg: TrainConfig = yaml_serde::from_str(yaml).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{yaml:?}: {err}");
    }
    // The edges of those ranges are accepted.
    for yaml in [
        "train:\n  class_weights: [0.5, 2]\n",
        "model:\n  depths: [1, 4096, 3]\n",
        "eval:\n  threshold: 1\n",
        "eval:\n  context: 4\n",
    ] {
        let cfg: TrainConfig = yaml_serde::from_str(yaml).unwrap();
        cfg.validate().unwrap_or_else(|e| panic!("{yaml:?}: {e}"));
    }
    let cfg: TrainConfig = yaml_serde::from_str("train:\n  class_weights: none\n").unwrap();
    assert_eq!(
        cfg.train.class_weights,
        ClassWeights::Auto(AutoWeights::None)
    );
}

#[test]
fn keras_legacy_decay() {
    let cfg = TrainConfig::default();
    assert_eq!(cfg.learning_rate_at(0, 4000), 1e-2);
    let t = 1000;
    let want = 1e-2 / (1.0 + 1e-2 / 40.0 * t as f64);
    // The total does not enter the legacy decay.
    for total in [1, 4000, usize::MAX] {
        assert!((cfg.learning_rate_at(t, total) - want).abs() < 1e-15);
    }
}

#[test]
fn cosine_falls_from_lr_to_zero_over_the_run() {
    let cfg: TrainConfig =
        yaml_serde::from_str("train:\n  learning_rate: 0.002\n  schedule: cosine\n").unwrap();
    cfg.validate().unwrap();
    let lr = |t| cfg.learning_rate_at(t, 1000);
    assert_eq!(lr(0), 0.002);
    assert!((lr(500) - 0.001).abs() < 1e-15);
    assert!((lr(250) - 0.001 * (1.0 + 0.5f64.sqrt())).abs() < 1e-15);
    assert!(lr(1000).abs() < 1e-15 && lr(5000).abs() < 1e-15);
    assert!((1..1000).all(|t| lr(t) < lr(t - 1)));
    let both: TrainConfig =
        yaml_serde::from_str("train:\n  schedule: cosine\n  decay: 0.01\n").unwrap();
    let err = both.validate().unwrap_err().to_string();
    assert!(
        err.contains("train.decay") && err.contains("cosine"),
        "{err}"
    );
}

use proptest::prelude::*;

/// YAML near the config's shape: known and unknown keys, values of every kind (NaN, inf,
/// huge, negative, strings, lists, nulls), nested at random.
fn yamlish() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("data"),
        Just("model"),
        Just("train"),
        Just("augment"),
        Just("device"),
        Just("output"),
        Just("root"),
        Just("cache"),
        Just("workers"),
        Just("input_size"),
        Just("widths"),
        Just("depths"),
        Just("dense"),
        Just("epochs"),
        Just("batch_size"),
        Just("learning_rate"),
        Just("decay"),
        Just("schedule"),
        Just("class_weights"),
        Just("threads"),
        Just("zoom"),
        Just("rotation"),
        Just("fill_mode"),
        Just("bn_momentum"),
        Just("nope"),
    ];
    let value = prop_oneof![
        Just(".nan".to_string()),
        Just(".inf".to_string()),
        Just("-.inf".to_string()),
        Just("null".to_string()),
        Just("auto".to_string()),
        Just("cuda".to_string()),
        Just("cosine".to_string()),
        Just("[1, -2]".to_string()),
        Just("[]".to_string()),
        Just("[0, 0, 0]".to_string()),
        Just("1e308".to_string()),
        Just("18446744073709551616".to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| v.to_string()),
        "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
    ];
    let line = (0usize..3, key, value)
        .prop_map(|(indent, k, v)| format!("{}{k}: {v}", "  ".repeat(indent)));
    proptest::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Any text is a config or an error; any config that parses validates or names its
    /// problem: never a panic.
    #[test]
    fn arbitrary_yaml_never_panics(text in yamlish()) {
        if let Ok(cfg) = yaml_serde::from_str::<TrainConfig>(&text)
            && cfg.validate().is_ok()
        {
            let _ = cfg.model.flat_features();
            let _ = cfg.learning_rate_at(usize::MAX, 0);
            let _ = cfg.learning_rate_at(usize::MAX, usize::MAX);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = yaml_serde::from_str::<TrainConfig>(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn loading_from_a_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, b"train: [unclosed").unwrap();
    let err = format!("{:#}", TrainConfig::load(&path).unwrap_err());
    assert!(err.contains("bad.yaml"), "{err}");
    std::fs::write(&path, b"\xff\xfe").unwrap();
    let err = format!("{:#}", TrainConfig::load(&path).unwrap_err());
    assert!(err.contains("bad.yaml"), "{err}");
}

#[test]
fn device_names_are_serdes() {
    for &(device, name, _) in Device::CHOICES {
        let yaml: TrainConfig = yaml_serde::from_str(&format!("device: {name}\n")).unwrap();
        assert_eq!(yaml.device, device);
    }
}
