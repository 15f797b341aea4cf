//! The real `runtime` binary with ONNX Runtime, one part a file: `eval` and `bench` (reports,
//! parity with burn through the shared preprocessing, bad files of every kind), `predict` and
//! `heatmap`, errors (models, libraries, execution providers), what travels in the model's
//! metadata, and neighbour context. Here the helpers they share.

#[path = "../common/mod.rs"]
mod common;
mod context;
mod errors;
mod eval;
mod heatmap;
mod metadata;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn runtime(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runtime"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout_ok(o: &Output) -> String {
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "stdout:\n{s}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    s
}

fn small_synth(dir: &Path) -> PathBuf {
    let out = dir.join("orig");
    datasets::testdata::small_synth(&out, 3, 40.0);
    out
}
