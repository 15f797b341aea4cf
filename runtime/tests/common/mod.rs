//! What the integration tests share: the workspace's real binaries, a small exported model, and
//! fingerprints of a tree's files.
#![allow(dead_code)] // each test file uses its own part of this

use exporter::export::{Options, export};
use models::CancerNetConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A workspace binary beside this test's own (target/<profile>/).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.is_file(),
        "{} is not built: run the workspace's tests (`make test`)",
        path.display()
    );
    path
}

/// What a command did.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout and stderr as bytes, for checks on what reached the terminal.
    pub raw: Vec<u8>,
}

impl Ran {
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "failed:\n{}\n{}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Exit status 2 with `needle` in stderr.
    pub fn fails_with(&self, needle: &str) -> &str {
        assert_eq!(
            self.code,
            Some(2),
            "expected an error:\n{}\n{}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "{needle:?} not in:\n{}",
            self.stderr
        );
        &self.stderr
    }

    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `prefix... bin(name) args` in `dir` and checks that it ended as our commands end: exit
/// status 0 or 2, never a panic (101) or a signal.
pub fn exec_with(prefix: &[&str], name: &str, args: &[&std::ffi::OsStr], dir: &Path) -> Ran {
    let exe = bin(name);
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let o = cmd.args(args).current_dir(dir).output().unwrap();
    let ran = Ran {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        raw: [o.stdout, o.stderr].concat(),
    };
    assert!(
        matches!(ran.code, Some(0) | Some(2)),
        "{name} {args:?} ended with {:?} (a panic or a signal):\n{}\n{}",
        o.status,
        ran.stdout,
        ran.stderr
    );
    ran
}

pub fn exec(name: &str, args: &[&str], dir: &Path) -> Ran {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    exec_with(&[], name, &args, dir)
}

/// A randomly initialized CancerNet exported (and verified) to `dir/model.onnx`.
pub fn model(dir: &Path) -> PathBuf {
    let run = dir.join("run");
    trainer::checkpoint::write_random_run(&run, &CancerNetConfig::default(), 11).unwrap();
    let out = dir.join("model.onnx");
    export_run(&run, &out, false);
    out
}

/// The ONNX model at `onnx`, opened on the CPU with `threads` intra-op threads.
pub fn cpu_model(onnx: &Path, threads: usize) -> runtime::session::Model {
    use runtime::session::{Ep, MAX_MODEL_BYTES, Model, Options};
    let opts = Options {
        ep: Ep::Cpu,
        threads,
        ort_lib: None,
        preprocess: None,
        max_model_bytes: MAX_MODEL_BYTES,
    };
    Model::open(onnx, &opts).unwrap()
}

/// Every entry below `root` (not following symlinks) and its fingerprint: the SHA-256 of a
/// file's bytes, the target of a symlink, the mode of a folder.
pub fn fingerprints(root: &Path) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let print = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {:o}", meta.permissions().mode())
            } else {
                datasets::manifest::sha256_hex(&std::fs::read(&path).unwrap())
            };
            out.insert(path, print);
        }
    }
    out
}

/// Bytes that a terminal would act on: C0 controls but newline and tab, DEL, and the C1
/// controls' UTF-8 forms.
pub fn control_bytes(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    text.chars()
        .filter(|&c| c.is_control() && c != '\n' && c != '\t')
        .map(|c| c as u32 as u8)
        .collect()
}

/// Every `step`-th row of a predictions CSV: burn's probability of IDC for that file (through the
/// same preprocessing `pre`) equals the row's, within 1e-4. Returns how many rows were checked.
pub fn burn_agrees_with_csv(
    model: &models::CancerNet<burn::backend::Flex>,
    pre: datasets::preprocess::Preprocess,
    csv_path: &Path,
    step: usize,
) -> usize {
    use burn::prelude::*;
    let rows: Vec<csv::StringRecord> = csv::Reader::from_path(csv_path)
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .step_by(step)
        .collect();
    let (per, side) = (pre.len(), pre.size as usize);
    let mut x = vec![0f32; rows.len() * per];
    for (i, r) in rows.iter().enumerate() {
        pre.load_into(Path::new(&r[0]), &mut x[i * per..(i + 1) * per])
            .unwrap();
    }
    let t = Tensor::<burn::backend::Flex, 4>::from_data(
        TensorData::new(x, [rows.len(), 3, side, side]),
        &Default::default(),
    );
    let burn: Vec<f32> = model.probabilities(t).into_data().to_vec().unwrap();
    for (i, r) in rows.iter().enumerate() {
        let ort: f32 = r[5].parse().unwrap();
        assert!(
            (ort - burn[i * 2 + 1]).abs() < 1e-4,
            "{}: runtime {ort} burn {}",
            &r[0],
            burn[i * 2 + 1]
        );
    }
    rows.len()
}

/// Exports the run in `run` (its best checkpoint, verified) to `out`.
pub fn export_run(run: &Path, out: &Path, tta: bool) {
    export(&Options {
        tta: Some(tta),
        ..Options::new(run, out)
    })
    .unwrap();
}
