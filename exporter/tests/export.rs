//! The exporter on models it makes: deterministic bytes, graph shape and names, verification,
//! the reference checker and Python onnxruntime, a non-default config, and bad input.

use burn::backend::Flex;
use burn::prelude::*;
use exporter::export::{Checkpoint, Options, export, load, to_onnx, write_verified};
use exporter::onnx_proto::ModelProto;
use models::CancerNetConfig;
use prost::Message;
use std::path::{Path, PathBuf};
use std::process::Command;
use trainer::checkpoint;

fn small() -> CancerNetConfig {
    CancerNetConfig::default()
        .with_input_size(32)
        .with_widths(vec![8, 16])
        .with_depths(vec![2, 1])
        .with_dense(24)
}

#[test]
fn same_checkpoint_gives_identical_bytes_and_a_named_standard_graph() {
    let tmp = tempfile::tempdir().unwrap();
    checkpoint::write_random_run(tmp.path(), &CancerNetConfig::default(), 1).unwrap();
    let loaded = load(tmp.path(), Some(Checkpoint::Best)).unwrap();
    let a = to_onnx(&loaded, true, false).unwrap();
    let b = to_onnx(
        &load(tmp.path(), Some(Checkpoint::Best)).unwrap(),
        true,
        false,
    )
    .unwrap();
    assert_eq!(a, b, "export is not deterministic");
    let model = ModelProto::decode(a.as_slice()).unwrap();
    assert_eq!(model.opset_import[0].version, Some(17));
    let graph = model.graph.unwrap();
    let ops: std::collections::BTreeSet<_> = graph
        .node
        .iter()
        .map(|n| n.op_type.clone().unwrap())
        .collect();
    let want = [
        "BatchNormalization",
        "Conv",
        "Flatten",
        "Gemm",
        "MaxPool",
        "Relu",
        "Softmax",
    ];
    assert_eq!(ops, want.iter().map(|s| s.to_string()).collect());
    let names: Vec<_> = graph
        .initializer
        .iter()
        .map(|t| t.name.clone().unwrap())
        .collect();
    assert!(
        names.contains(&"block2.sepconv1.depthwise.weight".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"block3.bn3.running_var".to_string()));
    let params: usize = graph
        .initializer
        .iter()
        .map(|t| t.dims.iter().product::<i64>() as usize)
        .sum();
    // Folding removes dense_bn's 4 x 256 values and adds nothing (the head keeps its shape).
    assert_eq!(params, 1_235_133 - 4 * 256);
    let meta: std::collections::HashMap<_, _> = model
        .metadata_props
        .iter()
        .map(|e| (e.key.clone().unwrap(), e.value.clone().unwrap()))
        .collect();
    for key in [
        "classes",
        "positive_class",
        "preprocess.input_size",
        "preprocess.resize_filter",
        "preprocess.layout",
        "preprocess.colour_order",
        "preprocess.scaling",
        "train.config_sha256",
        "train.val_accuracy",
        "toolchain",
    ] {
        assert!(meta.contains_key(key), "metadata lacks {key}");
    }
    assert_eq!(meta["classes"], "0: no IDC, 1: IDC");
    assert_eq!(meta["train.checkpoint"], "best (epoch 0)");
    let dims = &graph.input[0];
    assert_eq!(dims.name.as_deref(), Some("image"));
}

#[test]
fn verified_export_of_a_non_default_config_and_three_opinions_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = small();
    checkpoint::write_random_run(tmp.path(), &cfg, 2).unwrap();
    for fold in [true, false] {
        let out = tmp.path().join(format!("small-{fold}.onnx"));
        let report = export(&Options {
            fold_bn: fold,
            ..Options::new(tmp.path(), &out)
        })
        .unwrap();
        let v = report.verification.unwrap();
        assert!(v.max_abs_diff <= 1e-4, "{}", v.max_abs_diff);
        assert!(v.source.contains("synthetic"), "{}", v.source);
        assert!(out.is_file());
    }
    // The reference checker and Python onnxruntime, on the same random batch burn sees.
    let loaded = load(tmp.path(), Some(Checkpoint::Best)).unwrap();
    python_agrees(&loaded, &tmp.path().join("small-true.onnx"), false);
}

/// `exporter/tests/check_model.py` in the project's venv: the ONNX checker passes, softmax(logits)
/// equals probabilities, and Python onnxruntime's IDC probabilities equal burn's (with TTA when
/// `tta`) on a batch of five images.
fn python_agrees(loaded: &exporter::export::Loaded, onnx: &Path, tta: bool) {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if !python.exists() {
        panic!(
            "{} is missing: run `make venv` (the README's `make test` does)",
            python.display()
        );
    }
    let (n, side) = (5, loaded.config.input_size);
    let x: Vec<f32> = (0..n * 3 * side * side)
        .map(|i| ((i * 37) % 101) as f32 / 100.0)
        .collect();
    let dir = onnx.parent().unwrap();
    let raw = dir.join("x.f32");
    std::fs::write(
        &raw,
        x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let o = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_model.py"))
        .args([onnx.as_os_str(), raw.as_os_str()])
        .args([n.to_string(), side.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let py: Vec<f32> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let t =
        Tensor::<Flex, 4>::from_data(TensorData::new(x, [n, 3, side, side]), &Default::default());
    let burn: Vec<f32> = loaded.model.predict(t, tta).into_data().to_vec().unwrap();
    for i in 0..n {
        assert!(
            (burn[i * 2 + 1] - py[i]).abs() <= 1e-4,
            "image {i}: burn {} python onnxruntime {}",
            burn[i * 2 + 1],
            py[i]
        );
    }
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.onnx");
    let err = |o: Options| format!("{:#}", export(&o).err().expect("should fail"));
    let e = err(Options::new(&tmp.path().join("nowhere"), &out));
    assert!(e.contains("does not exist") && e.contains("nowhere"), "{e}");
    let run = tmp.path().join("run");
    checkpoint::write_random_run(&run, &small(), 3).unwrap();
    let e = err(Options {
        checkpoint: Some(Checkpoint::Epoch(7)),
        ..Options::new(&run, &out)
    });
    assert!(
        e.contains("epoch-007") && e.contains("does not exist (available: none)"),
        "{e}"
    );
    // The precise-BN model is written with the final report: without it, the error says so.
    let e = err(Options {
        checkpoint: Some(Checkpoint::PreciseBn),
        ..Options::new(&run, &out)
    });
    assert!(e.contains("has not written its final report yet"), "{e}");
    // A checkpoint of another model config.
    CancerNetConfig::default()
        .save(run.join(checkpoint::MODEL_CONFIG_FILE))
        .unwrap();
    let e = err(Options::new(&run, &out));
    assert!(e.contains("another model config"), "{e}");
    // A model config burn's layers would panic on is refused, naming the file and the key.
    let mut bad = small();
    bad.conv_dropout = 1.5;
    bad.save(run.join(checkpoint::MODEL_CONFIG_FILE)).unwrap();
    let e = err(Options::new(&run, &out));
    assert!(
        e.contains("model.json") && e.contains("model.conv_dropout = 1.5 must be in [0, 1)"),
        "{e}"
    );
    small()
        .save(run.join(checkpoint::MODEL_CONFIG_FILE))
        .unwrap();
    // An --out that is a folder is refused up front; past that check, the staged file goes too.
    let folder = tmp.path().join("folder.onnx");
    std::fs::create_dir(&folder).unwrap();
    let e = err(Options::new(&run, &folder));
    assert!(e.contains("is a folder: name the ONNX file"), "{e}");
    let loaded = load(&run, None).unwrap();
    let unverified = Options {
        verify: false,
        ..Options::new(&run, &folder)
    };
    let bytes = to_onnx(&loaded, true, false).unwrap();
    assert!(write_verified(&loaded, &bytes, &unverified).is_err());
    // An unwritable output path.
    let e = err(Options::new(&run, Path::new("/proc/no/such/dir/m.onnx")));
    assert!(e.contains("/proc/no/such/dir"), "{e}");
    assert!(!out.exists());
    // A failed verification (a broken ONNX Runtime library path) leaves the old file untouched.
    std::fs::write(&out, b"old").unwrap();
    let bad_lib = Options {
        ort_lib: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
        ..Options::new(&run, &out)
    };
    let e = err(bad_lib);
    assert!(e.contains("/nonexistent/libonnxruntime.so"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    // A config.yaml edited after training to another patch side: the model's side is used (it
    // fed burn's dense layer patches of the wrong size, which panicked). Last: ONNX Runtime is
    // loaded once a process, and the broken library above must be the first.
    let yaml = run.join(checkpoint::CONFIG_FILE);
    std::fs::write(&yaml, "model:\n  input_size: 64\n").unwrap();
    let edited = export(&Options::new(&run, &tmp.path().join("edited.onnx"))).unwrap();
    assert!(edited.verification.is_some());
}

/// The mismatch branch of verification, reached for real: the ONNX file of one model checked
/// against another model in burn. The export fails with the numbers, and an existing `--out`
/// stays as it was.
#[test]
fn a_file_that_disagrees_with_burn_is_refused_with_the_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let (run_a, run_b) = (tmp.path().join("a"), tmp.path().join("b"));
    checkpoint::write_random_run(&run_a, &small(), 4).unwrap();
    checkpoint::write_random_run(&run_b, &small(), 5).unwrap();
    let (a, b) = (
        load(&run_a, Some(Checkpoint::Best)).unwrap(),
        load(&run_b, Some(Checkpoint::Best)).unwrap(),
    );
    let out = tmp.path().join("m.onnx");
    std::fs::write(&out, b"old").unwrap();
    let bytes_of_b = to_onnx(&b, true, false).unwrap();
    let e = format!(
        "{:#}",
        write_verified(&a, &bytes_of_b, &Options::new(&run_a, &out))
            .err()
            .expect("a mismatch must fail")
    );
    assert!(
        e.contains("verification failed")
            && e.contains("max |burn - onnxruntime| = ")
            && e.contains("argmax disagree")
            && e.contains("not written"),
        "{e}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let leftovers = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(leftovers, 0, "the staged file was left behind");
    // The file of the same model passes.
    write_verified(
        &a,
        &to_onnx(&a, true, false).unwrap(),
        &Options::new(&run_a, &out),
    )
    .unwrap();
}

/// Test-time augmentation built into the graph: ONNX Runtime's averaged probabilities equal
/// burn's (verification), the graph holds the views, the metadata says so, and the average is
/// not the plain prediction (but is for an image that every flip and turn leaves unchanged).
#[test]
fn test_time_augmentation_in_the_graph_matches_burn() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = small();
    checkpoint::write_random_run(tmp.path(), &cfg, 6).unwrap();
    let out = tmp.path().join("tta.onnx");
    let report = export(&Options {
        tta: Some(true),
        ..Options::new(tmp.path(), &out)
    })
    .unwrap();
    assert!(report.verification.unwrap().max_abs_diff <= 1e-4);
    let model = ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    let ops: Vec<String> = model
        .graph
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.clone().unwrap())
        .collect();
    for op in [
        "Transpose",
        "Slice",
        "Concat",
        "Reshape",
        "ReduceMean",
        "Log",
    ] {
        assert!(ops.iter().any(|o| o == op), "{op} missing from {ops:?}");
    }
    assert_eq!(ops.iter().filter(|o| *o == "Slice").count(), 6);
    assert!(
        model
            .metadata_props
            .iter()
            .any(|e| e.key.as_deref() == Some("tta"))
    );
    let loaded = load(tmp.path(), Some(Checkpoint::Best)).unwrap();
    let dev = Default::default();
    let x = Tensor::<Flex, 4>::random([4, 3, 32, 32], burn::tensor::Distribution::Default, &dev);
    let diff: f32 = (loaded.model.probabilities(x.clone()) - loaded.model.probabilities_tta(x))
        .abs()
        .max()
        .into_scalar();
    assert!(diff > 1e-4, "TTA changed nothing ({diff})");
    let flat = Tensor::<Flex, 4>::full([2, 3, 32, 32], 0.3, &dev);
    let diff: f32 = (loaded.model.probabilities(flat.clone())
        - loaded.model.probabilities_tta(flat))
    .abs()
    .max()
    .into_scalar();
    assert!(diff < 1e-5, "a flat image's views differ ({diff})");
    // The reference checker and Python onnxruntime agree with burn's TTA on the TTA graph.
    python_agrees(&loaded, &out, true);
}

/// Verification runs on the given folder's patches (an undecodable one passed over), every one
/// of them when there are fewer than the batch; a given folder with none that decodes, or none
/// at all, is an error naming it and why; without one (and a run without a testing split), synthetic.
#[test]
fn verification_uses_the_real_patches_it_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    checkpoint::write_random_run(&run, &small(), 7).unwrap();
    let data = tmp.path().join("data");
    datasets::testdata::small_synth(&data, 2, 6.0);
    let count = datasets::scan::Scan::dir(&data).unwrap().patches.len();
    assert!((2..64).contains(&count), "{count} patches");
    std::fs::write(data.join("p0_idx5_x9_y9_class0.png"), b"not a png").unwrap();
    let verify = |dir: &Path, out: &str| {
        let o = Options {
            verify_data: Some(dir.into()),
            ..Options::new(&run, &tmp.path().join(out))
        };
        export(&o).unwrap().verification.unwrap()
    };
    let v = verify(&data, "a.onnx");
    assert_eq!(v.images, count);
    assert!(
        v.source.starts_with(&format!("{count} patches from ")),
        "{}",
        v.source
    );
    let junk = tmp.path().join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("p0_idx5_x1_y1_class0.png"), b"not a png").unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (dir, why) in [
        (junk, "p0_idx5_x1_y1_class0.png: not a decodable PNG/JPEG"),
        (empty, "holds no patch files"),
        (tmp.path().join("absent"), "is not a folder"),
    ] {
        let o = Options {
            verify_data: Some(dir.clone()),
            ..Options::new(&run, &tmp.path().join("b.onnx"))
        };
        let err = match export(&o) {
            Ok(_) => panic!("{} was accepted", dir.display()),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(&format!("--verify-data {}", dir.display()))
                && err.contains("cannot be verified with")
                && err.contains(why),
            "{err}"
        );
        assert!(!tmp.path().join("b.onnx").exists());
    }
    let o = Options::new(&run, &tmp.path().join("c.onnx"));
    let v = export(&o).unwrap().verification.unwrap();
    assert_eq!(v.source, "64 synthetic patches");
}
