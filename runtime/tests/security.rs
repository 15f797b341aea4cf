//! Untrusted folders run no code and drive no terminal: a shared library and a Python module
//! planted in the working directory are never loaded or imported, and text that came from
//! outside (paths, names, YAML keys, metadata) reaches the terminal escaped.

mod common;

use common::{bin, control_bytes, exec, model};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

/// A folder an attacker prepared: an "ONNX Runtime" whose constructor leaves `lib-ran`, where
/// the old search looked (`./.venv/...`), and an `onnxruntime.py` that leaves `py-ran` when
/// imported. Returns the planted library, or `None` (skipped) without a C compiler.
fn plant(dir: &Path) -> Option<std::path::PathBuf> {
    let capi = dir.join(".venv/lib/python3.11/site-packages/onnxruntime/capi");
    std::fs::create_dir_all(&capi).unwrap();
    let lib = capi.join("libonnxruntime.so.1.99.0");
    let src = dir.join("planted.c");
    std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void planted(void) {{ \
             FILE *f = fopen(\"{}\", \"w\"); if (f) fclose(f); }}\n",
            dir.join("lib-ran").display()
        ),
    )
    .unwrap();
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .output();
    if !cc.is_ok_and(|o| o.status.success()) {
        datasets::testdata::skip("no C compiler (cc) to build the planted library");
        return None;
    }
    std::fs::write(
        dir.join("onnxruntime.py"),
        format!(
            "open({:?}, 'w').close()\n",
            dir.join("py-ran").display().to_string()
        ),
    )
    .unwrap();
    Some(lib)
}

#[test]
fn a_planted_library_or_python_module_never_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let planted = tmp.path().join("dataset");
    std::fs::create_dir_all(&planted).unwrap();
    let Some(lib) = plant(&planted) else {
        return;
    };
    let onnx = model(tmp.path());
    let data = tmp.path().join("orig");
    datasets::testdata::small_synth(&data, 2, 20.0);
    let ran = |what: &str| planted.join(what).exists();

    // The detectors work: naming the library loads it; Python run plainly in that folder imports
    // the module.
    let o = exec(
        "runtime",
        &[
            "eval",
            data.to_str().unwrap(),
            "--model",
            onnx.to_str().unwrap(),
            "--ep",
            "cpu",
            "--ort-lib",
            lib.to_str().unwrap(),
        ],
        &planted,
    );
    assert!(
        ran("lib-ran"),
        "the planted library did not run when named: {}",
        o.all()
    );
    assert!(
        o.stderr.contains("not an ONNX Runtime library"),
        "{}",
        o.stderr
    );
    std::fs::remove_file(planted.join("lib-ran")).unwrap();
    let py = Command::new("python3")
        .args(["-c", "import onnxruntime"])
        .current_dir(&planted)
        .output();
    if py.is_ok() {
        assert!(
            ran("py-ran"),
            "python3 did not import the planted module (the detector is broken)"
        );
        std::fs::remove_file(planted.join("py-ran")).unwrap();
    }

    // The project's own binary, run in that folder: it uses the project's .venv and names it.
    let o = exec(
        "runtime",
        &[
            "eval",
            data.to_str().unwrap(),
            "--model",
            onnx.to_str().unwrap(),
            "--ep",
            "cpu",
        ],
        &planted,
    );
    o.ok();
    assert!(
        !ran("lib-ran") && !ran("py-ran"),
        "planted code ran: {}",
        o.all()
    );
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv");
    let venv = venv.canonicalize().unwrap();
    assert!(
        o.stdout.contains(&format!("({}", venv.display())),
        "the header does not name the library:\n{}",
        o.stdout
    );

    // A copy of the binary far from any project: only the isolated Python search is left, and
    // it must not import the planted module either.
    let far = tmp.path().join("bin");
    std::fs::create_dir_all(&far).unwrap();
    std::fs::copy(bin("runtime"), far.join("runtime")).unwrap();
    // `runtime eval` by the far copy in the planted folder, with the planted module on
    // PYTHONPATH and `env` (variable, value; no value: unset): its exit code, stdout, and all.
    let far_eval = |env: &[(&str, Option<&std::ffi::OsStr>)]| {
        let mut cmd = Command::new(far.join("runtime"));
        cmd.args([
            "eval",
            data.to_str().unwrap(),
            "--model",
            onnx.to_str().unwrap(),
        ])
        .args(["--ep", "cpu"])
        .current_dir(&planted)
        .env("PYTHONPATH", &planted);
        for (key, value) in env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        let o = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let all = format!("{stdout}{}", String::from_utf8_lossy(&o.stderr));
        (o.status.code(), stdout, all)
    };
    let (code, _, all) = far_eval(&[("ORT_DYLIB_PATH", None)]);
    assert!(matches!(code, Some(0) | Some(2)), "{all}");
    assert!(!ran("lib-ran") && !ran("py-ran"), "planted code ran: {all}");

    // The same copy with the project's Python first on PATH: the isolated search finds that
    // Python's onnxruntime (and still not the planted module).
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![venv.join("bin")];
    dirs.extend(std::env::split_paths(&path));
    let with_venv_python = std::env::join_paths(dirs).unwrap();
    let (code, stdout, all) = far_eval(&[
        ("ORT_DYLIB_PATH", None),
        ("PATH", Some(with_venv_python.as_os_str())),
    ]);
    assert_eq!(code, Some(0), "{all}");
    assert!(!ran("lib-ran") && !ran("py-ran"), "planted code ran: {all}");
    let capi = venv.join("lib");
    assert!(
        stdout.contains(&format!("({}", capi.display())) && stdout.contains("onnxruntime/capi/"),
        "the header does not name the Python package's library:\n{stdout}"
    );

    // ORT_DYLIB_PATH names the library for the far copy too.
    let named = venv_library(&venv);
    let (code, stdout, all) = far_eval(&[("ORT_DYLIB_PATH", Some(named.as_os_str()))]);
    assert_eq!(code, Some(0), "{all}");
    assert!(
        stdout.contains(&format!("({})", named.display())),
        "the header does not name ORT_DYLIB_PATH's library:\n{stdout}"
    );
    // An empty one is no setting: the search goes on past it (to the isolated Python, which may
    // have none).
    let (code, _, all) = far_eval(&[("ORT_DYLIB_PATH", Some("".as_ref()))]);
    assert!(
        matches!(code, Some(0) | Some(2)) && !all.contains("ORT_DYLIB_PATH points to"),
        "an empty ORT_DYLIB_PATH: {all}"
    );
}

/// The ONNX Runtime library of the project's .venv.
fn venv_library(venv: &Path) -> std::path::PathBuf {
    let lib = venv.join("lib");
    std::fs::read_dir(&lib)
        .unwrap()
        .flatten()
        .flat_map(|py| std::fs::read_dir(py.path().join("site-packages/onnxruntime/capi")))
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so."))
        })
        .expect("make venv installs onnxruntime")
}

#[test]
fn every_command_escapes_what_it_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let evil = OsStr::from_bytes(b"\x1b]0;owned\x07\x1b[2J\xff");
    let evil_dir = dir.join(evil);
    let e = evil_dir.to_str().map(str::to_string);
    assert!(e.is_none(), "the name must not be UTF-8");
    let config = dir.join("c.yaml");
    std::fs::write(&config, b"train:\n  \"\\e[2Jkey\": 1\n").unwrap();
    let idc = dir.join("idc");
    let data_config = dir.join("data.yaml");
    std::fs::write(&data_config, format!("data:\n  root: {}\n", idc.display())).unwrap();
    for split in ["training/0", "validation/1", "testing/0"] {
        std::fs::create_dir_all(idc.join(split)).unwrap();
    }
    std::fs::write(
        idc.join("training/0")
            .join(OsStr::from_bytes(b"\x1b[31m_idx5_x1_y1_class0.png")),
        b"x",
    )
    .unwrap();
    let runs: Vec<(&str, Vec<&OsStr>)> = vec![
        ("runtime", vec!["eval".as_ref(), evil_dir.as_os_str()]),
        (
            "runtime",
            vec![
                "eval".as_ref(),
                dir.as_os_str(),
                "--model".as_ref(),
                evil_dir.as_os_str(),
            ],
        ),
        ("exporter", vec!["--model".as_ref(), evil_dir.as_os_str()]),
        ("datasets", vec!["scan".as_ref(), evil_dir.as_os_str()]),
        ("datasets", vec!["scan".as_ref(), idc.as_os_str()]),
        ("trainer", vec!["--config".as_ref(), config.as_os_str()]),
        ("trainer", vec!["--config".as_ref(), evil_dir.as_os_str()]),
        (
            "trainer",
            vec!["--config".as_ref(), data_config.as_os_str()],
        ),
    ];
    for (name, args) in runs {
        let o = common::exec_with(&[], name, &args, dir);
        let bad = control_bytes(&o.raw);
        assert!(bad.is_empty(), "{name} {args:?} sent {bad:?}:\n{}", o.all());
        assert!(!o.raw.is_empty(), "{name} {args:?} said nothing");
    }
    // The scan names the file, escaped and told apart.
    let o = exec("datasets", &["scan", idc.to_str().unwrap()], dir);
    assert!(
        o.stderr.contains(r"\x1b[31m_idx5_x1_y1_class0.png"),
        "{}",
        o.stderr
    );
}
