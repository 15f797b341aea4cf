//! Tests on the real IDC patches in ../shared/data (skipped with a message when absent).

use datasets::build::{BuildOptions, Outcome, build};
use datasets::preprocess::{Preprocess, read_rgb8};
use datasets::split::SplitConfig;
use datasets::testdata::shared_data;
use datasets::{PatchName, Scan};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn every_real_file_name_parses_and_agrees_with_its_folder() {
    let Some(root) = shared_data("idc-real") else {
        return;
    };
    let scan = Scan::dir(&root).unwrap();
    assert!(scan.problems.is_empty(), "{}", scan.warnings(10));
    assert_eq!(scan.patches.len(), 4526);
    assert_eq!(scan.class_counts(), [4526 - 1544, 1544]);
    let patients: HashSet<&str> = scan
        .patches
        .iter()
        .map(|p| p.name.patient.as_str())
        .collect();
    assert_eq!(patients.len(), 10);
    for p in &scan.patches {
        let name = p.path.file_name().unwrap().to_str().unwrap();
        assert_eq!(PatchName::parse(name).unwrap().to_string(), name);
    }
}

#[test]
fn real_patient_split_keeps_each_patient_in_one_split() {
    let Some(root) = shared_data("idc-real") else {
        return;
    };
    let scan = Scan::dir(&root).unwrap();
    let split = SplitConfig::default().assign(&scan.patches);
    let mut seen: HashMap<&str, HashSet<usize>> = HashMap::new();
    for (p, s) in scan.patches.iter().zip(&split) {
        seen.entry(&p.name.patient).or_default().insert(*s);
    }
    assert!(seen.values().all(|s| s.len() == 1), "{seen:?}");
    for s in 0..3 {
        let labels: HashSet<u8> = scan
            .patches
            .iter()
            .zip(&split)
            .filter(|(_, x)| **x == s)
            .map(|(p, _)| p.label)
            .collect();
        assert_eq!(labels.len(), 2, "split {s} lacks a class");
    }
}

#[test]
fn every_real_patch_and_edge_crop_decodes_to_the_input_size() {
    let pre = Preprocess::default();
    let mut out = vec![0f32; pre.len()];
    let mut edges = 0;
    for name in ["idc-real-edges", "idc-real"] {
        let Some(root) = shared_data(name) else {
            return;
        };
        let scan = Scan::dir(&root).unwrap();
        assert!(scan.problems.is_empty(), "{}", scan.warnings(10));
        for p in &scan.patches {
            let img = read_rgb8(&p.path).unwrap_or_else(|e| panic!("{}: {e}", p.path.display()));
            if name == "idc-real-edges" {
                assert!(
                    img.width() < 50 || img.height() < 50,
                    "{} is not an edge crop",
                    p.path.display()
                );
                edges += 1;
            }
            pre.load_into(&p.path, &mut out).unwrap();
            // The CHW floats are the resized image's bytes times 1/255 (Keras' rescale), channel by channel.
            let img = pre.resize(img);
            let plane = (pre.size * pre.size) as usize;
            for (i, px) in img.pixels().enumerate() {
                for c in 0..3 {
                    assert_eq!(out[c * plane + i], px[c] as f32 * (1.0 / 255.0));
                }
            }
        }
    }
    assert_eq!(edges, 74);
}

/// The one preprocessing path equals Pillow's, the library Keras' `load_img` (the tutorial) uses:
/// `Image.open(p).convert("RGB").resize((48, 48), Image.NEAREST)`, byte for byte, on every real
/// patch and edge crop (the edge crops are resized up, the patches down).
#[test]
fn preprocessing_equals_pillow_on_real_patches_and_edge_crops() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if !python.is_file() {
        datasets::testdata::skip(&format!(
            "{} is missing (make venv): Pillow is the reference",
            python.display()
        ));
        return;
    }
    let mut paths = Vec::new();
    for name in ["idc-real-edges", "idc-real"] {
        let Some(root) = shared_data(name) else {
            return;
        };
        paths.extend(
            Scan::dir(&root)
                .unwrap()
                .patches
                .into_iter()
                .map(|p| p.path),
        );
    }
    let script = "import sys\nfrom PIL import Image\nout = sys.stdout.buffer\n\
        for line in sys.stdin:\n    out.write(Image.open(line.rstrip('\\n')).convert('RGB').resize((48, 48), Image.NEAREST).tobytes())\n";
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let list: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(list.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    let pre = Preprocess::default();
    let per = 48 * 48 * 3;
    assert_eq!(out.stdout.len(), paths.len() * per);
    let mut differ = Vec::new();
    for (p, pil) in paths.iter().zip(out.stdout.chunks(per)) {
        let ours = pre.resize(read_rgb8(p).unwrap());
        if ours.as_raw().as_slice() != pil {
            differ.push(p.display().to_string());
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} differ from Pillow, e.g. {:?}",
        differ.len(),
        paths.len(),
        &differ[..differ.len().min(3)]
    );
}

#[test]
fn real_build_links_without_touching_originals_and_is_idempotent() {
    let Some(root) = shared_data("idc-real") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("idc");
    let opts = BuildOptions {
        source: root.clone(),
        out: out.clone(),
        split: SplitConfig::default(),
        force: false,
        ..Default::default()
    };
    let before = digest_tree(&root);
    let report = build(&opts).unwrap();
    assert_eq!(report.outcome, Outcome::Built);
    assert_eq!(report.counts.iter().flatten().sum::<usize>(), 4526);
    assert_eq!(report.linked + report.copied, 4526);
    let rows = datasets::manifest::read(&out.join("manifest.csv")).unwrap();
    assert_eq!(rows.len(), 4526);
    assert!(rows.iter().all(|r| out.join(&r.path).is_file()));
    // Originals are all still there, byte for byte.
    assert_eq!(Scan::dir(&root).unwrap().patches.len(), 4526);
    assert_eq!(digest_tree(&root), before, "an original changed");
    // The split itself is golden: these patients, this assignment, on every version.
    assert_eq!(
        datasets::manifest::sha256_file(&out.join("manifest.csv")).unwrap(),
        "c5d5372ce562a227a04467c77f6712b4caf59f043efd03d4658bee498d5a8824"
    );
    assert_eq!(build(&opts).unwrap().outcome, Outcome::UpToDate);
}

/// SHA-256 of every file under `root`, by path.
fn digest_tree(root: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out: Vec<_> = datasets::scan::walk_files(root)
        .unwrap()
        .0
        .into_iter()
        .map(|p| {
            let d = datasets::manifest::sha256_file(&p).unwrap();
            (p, d)
        })
        .collect();
    out.sort();
    out
}
