//! Tests on the real IDC patches in ../shared/data (skipped with a message when absent).

use datasets::build::{BuildOptions, Outcome, build};
use datasets::preprocess::{Preprocess, read_rgb8};
use datasets::split::SplitConfig;
use datasets::testdata::shared_data;
use datasets::{PatchName, Scan};
use std::collections::{HashMap, HashSet};

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
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }
    assert_eq!(edges, 74);
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
    let report = build(&opts).unwrap();
    assert_eq!(report.outcome, Outcome::Built);
    assert_eq!(report.counts.iter().flatten().sum::<usize>(), 4526);
    assert_eq!(report.linked + report.copied, 4526);
    let rows = datasets::manifest::read(&out.join("manifest.csv")).unwrap();
    assert_eq!(rows.len(), 4526);
    assert!(rows.iter().all(|r| out.join(&r.path).is_file()));
    // Originals are all still there.
    assert_eq!(Scan::dir(&root).unwrap().patches.len(), 4526);
    assert_eq!(build(&opts).unwrap().outcome, Outcome::UpToDate);
}
