//! The real `trainer` binary on small synthetic data, one part a file: runs that must give the
//! same bytes (`runs`), what a run reports (`reports`), runs that stop or are refused (`errors`).
//! Here the set-up and helpers they share.

mod errors;
mod reports;
mod runs;

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
