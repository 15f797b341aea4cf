//! Scanning, building and synthesizing on data the tests make themselves.

use datasets::build::{BuildOptions, Outcome, build};
use datasets::split::{SplitBy, SplitConfig};
use datasets::synth::{SynthOptions, synth};
use datasets::{Scan, manifest};
use std::path::Path;
use std::process::Command;

fn small_synth(out: &Path, patients: usize) -> datasets::synth::SynthReport {
    datasets::testdata::small_synth(out, patients, 60.0)
}

#[test]
fn synth_makes_the_kaggle_layout_and_reuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("orig");
    let report = small_synth(&out, 6);
    let scan = Scan::dir(&out).unwrap();
    assert!(scan.problems.is_empty(), "{}", scan.warnings(5));
    assert_eq!(scan.patches.len(), report.patches);
    assert_eq!(scan.class_counts()[1], report.idc);
    for p in &scan.patches {
        let rel = p.path.strip_prefix(&out).unwrap();
        let parts: Vec<_> = rel.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(parts[0], p.name.patient);
        assert_eq!(parts[1], p.label.to_string());
    }
    let again = small_synth(&out, 6);
    assert_eq!(again.outcome, datasets::synth::Outcome::UpToDate);
    // Different settings without --force: refused; a folder synth did not make: never replaced.
    let other = SynthOptions {
        patients: 7,
        mean_patches: 60.0,
        out: out.clone(),
        ..Default::default()
    };
    assert!(synth(&other, &indicatif::ProgressBar::hidden()).is_err());
    let foreign = tmp.path().join("kaggle");
    std::fs::create_dir_all(&foreign).unwrap();
    let err = synth(
        &SynthOptions {
            out: foreign.clone(),
            force: true,
            ..Default::default()
        },
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not made by `datasets synth`"),
        "{err}"
    );
    // A set with someone's files added (a download unpacked into it) is not replaced, even with
    // --force; without them it is.
    let theirs = out.join("10253/0/10253_idx5_x1_y1_class0.png");
    std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    std::fs::write(&theirs, b"an original").unwrap();
    let forced = SynthOptions {
        force: true,
        ..other
    };
    let err = format!(
        "{:#}",
        synth(&forced, &indicatif::ProgressBar::hidden()).unwrap_err()
    );
    assert!(
        err.contains("holds 10253, which `datasets synth` did not make"),
        "{err}"
    );
    assert_eq!(std::fs::read(&theirs).unwrap(), b"an original");
    std::fs::remove_dir_all(out.join("10253")).unwrap();
    // A marker whose settings synth would refuse (damaged, or edited by hand) cannot vouch for
    // the folder: refused, without planning it.
    let marker = out.join(datasets::synth::MARKER);
    let kept = std::fs::read_to_string(&marker).unwrap();
    let damaged = kept.replace("\"mean_patches\":60", "\"mean_patches\":-1");
    assert_ne!(damaged, kept);
    std::fs::write(&marker, damaged).unwrap();
    let err = format!(
        "{:#}",
        synth(&forced, &indicatif::ProgressBar::hidden()).unwrap_err()
    );
    assert!(err.contains("cannot be checked"), "{err}");
    std::fs::write(&marker, kept).unwrap();
    let made = synth(&forced, &indicatif::ProgressBar::hidden()).unwrap();
    assert_eq!(made.outcome, datasets::synth::Outcome::Made);
    assert_eq!(made.patients, 7);
}

#[test]
fn scan_reports_every_bad_file_and_skips_kaggle_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("orig");
    small_synth(&root, 2);
    let good = Scan::dir(&root).unwrap().patches;
    let first = &good[0];
    // Kaggle's second copy of a patient.
    let dup = root
        .join("IDC_regular_ps50_idx5")
        .join(&first.name.patient)
        .join(first.label.to_string());
    std::fs::create_dir_all(&dup).unwrap();
    std::fs::copy(&first.path, dup.join(first.path.file_name().unwrap())).unwrap();
    // Bad files of every kind.
    let p0 = root.join("9999").join("0");
    std::fs::create_dir_all(&p0).unwrap();
    std::fs::copy(&first.path, p0.join("9999_idx5_x1_y1_class1.png")).unwrap(); // label disagreement
    std::fs::copy(&first.path, p0.join("9999_x1_y1_class0.png")).unwrap(); // unparseable
    std::fs::write(p0.join("notes.txt"), "hello").unwrap(); // not an image
    std::fs::write(p0.join("9999_idx5_x51_y1_class0.png"), "").unwrap(); // empty
    let scan = Scan::dir(&root).unwrap();
    assert_eq!(scan.patches.len(), good.len());
    assert_eq!(scan.duplicates, 1);
    assert_eq!(scan.problems.len(), 4, "{:?}", scan.problems);
    let reasons = scan.warnings(10);
    for needle in [
        "label disagreement",
        "missing _idx5_",
        "not an image",
        "empty file",
        "IDC_regular_ps50_idx5",
    ] {
        assert!(reasons.contains(needle), "{needle} not in {reasons}");
    }
}

#[test]
fn build_refuses_a_different_split_unless_forced_and_leaves_no_temp() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("orig"), tmp.path().join("idc"));
    small_synth(&src, 8);
    let opts = BuildOptions {
        source: src.clone(),
        out: out.clone(),
        split: SplitConfig::default(),
        force: false,
        ..Default::default()
    };
    assert_eq!(build(&opts).unwrap().outcome, Outcome::Built);
    let first = std::fs::read(out.join(manifest::FILE_NAME)).unwrap();
    let image_split = BuildOptions {
        split: SplitConfig {
            by: SplitBy::Image,
            ..Default::default()
        },
        ..opts.clone()
    };
    let err = build(&image_split).unwrap_err().to_string();
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read(out.join(manifest::FILE_NAME)).unwrap(),
        first,
        "refused build changed the output"
    );
    let forced = build(&BuildOptions {
        force: true,
        ..image_split
    })
    .unwrap();
    assert_eq!(forced.outcome, Outcome::Built);
    assert_ne!(std::fs::read(out.join(manifest::FILE_NAME)).unwrap(), first);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // An interrupted earlier build's temp folder is cleaned up by the next build (Linux's
    // largest pid: never this process's).
    let stale = tmp.path().join(format!(".idc.building-{}", 1 << 22));
    std::fs::create_dir_all(&stale).unwrap();
    build(&BuildOptions {
        force: true,
        ..opts
    })
    .unwrap();
    assert!(!stale.exists());
}

#[test]
fn cli_synth_then_build() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_datasets");
    let run = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .current_dir(tmp.path())
            .output()
            .unwrap()
    };
    let o = run(&["synth", "--patients", "5", "--mean-patches", "40"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["build"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for word in [
        "training",
        "validation",
        "testing",
        "IDC share",
        "hard links",
    ] {
        assert!(stdout.contains(word), "{word} missing from\n{stdout}");
    }
    assert!(tmp.path().join("datasets/idc/manifest.csv").is_file());
    let o = run(&["build", "--source", "nowhere"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nowhere is not a folder"));
}

/// `--out` overlapping `--source` is refused before anything is read or written (replacing the
/// output would remove originals), and a non-empty folder that is not a split is never replaced,
/// even with `--force`.
#[test]
fn build_never_replaces_what_it_did_not_make() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("orig");
    small_synth(&src, 3);
    let before = Scan::dir(&src).unwrap().patches.len();
    let forced_build_error = |out: &Path| {
        build(&BuildOptions {
            source: src.clone(),
            out: out.to_path_buf(),
            force: true,
            ..Default::default()
        })
        .unwrap_err()
        .to_string()
    };
    for out in [src.clone(), src.join("idc"), tmp.path().to_path_buf()] {
        let err = forced_build_error(&out);
        assert!(err.contains("overlap"), "{}: {err}", out.display());
    }
    let mine = tmp.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("thesis.docx"), b"precious").unwrap();
    let err = forced_build_error(&mine);
    assert!(err.contains("never replaced"), "{err}");
    // A manifest.csv beside it does not make it a split; nor does one a split holds beside
    // someone's notes.
    std::fs::write(mine.join(manifest::FILE_NAME), b"mine too").unwrap();
    let err = forced_build_error(&mine);
    assert!(
        err.contains("holds thesis.docx, which `datasets build` does not make"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(mine.join("thesis.docx")).unwrap(),
        b"precious"
    );
    let split = tmp.path().join("split");
    let opts = BuildOptions {
        source: src.clone(),
        out: split.clone(),
        ..Default::default()
    };
    build(&opts).unwrap();
    std::fs::write(split.join("training/notes.txt"), b"mine").unwrap();
    let err = build(&BuildOptions {
        force: true,
        split: SplitConfig {
            seed: 7,
            ..Default::default()
        },
        ..opts.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("holds training/notes.txt"), "{err}");
    assert_eq!(
        std::fs::read(split.join("training/notes.txt")).unwrap(),
        b"mine"
    );
    // A folder whose name is not UTF-8, deep in a class folder, is someone's too.
    std::fs::remove_file(split.join("training/notes.txt")).unwrap();
    let odd = split
        .join("training/0")
        .join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"caf\xe9"));
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(odd.join("mine.png"), b"mine").unwrap();
    let err = build(&BuildOptions {
        force: true,
        split: SplitConfig {
            seed: 7,
            ..Default::default()
        },
        ..opts
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("which `datasets build` does not make"),
        "{err}"
    );
    assert!(odd.join("mine.png").is_file());
    assert_eq!(Scan::dir(&src).unwrap().patches.len(), before);
}

/// Kaggle's duplicate folder is recognized below the root only: pointed at directly, its files
/// are the only copy, and two files for one patch there are a collision, not a duplicate.
#[test]
fn a_root_named_like_the_kaggle_copy_is_not_a_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(datasets::scan::KAGGLE_DUPLICATE_DIR);
    small_synth(&root, 2);
    let p = &Scan::dir(&root).unwrap().patches[0];
    let n = &p.name;
    let twin = p.path.with_file_name(format!(
        "{}_idx5_x0{}_y{}_class{}.png",
        n.patient, n.x, n.y, n.class
    ));
    std::fs::copy(&p.path, twin).unwrap();
    let scan = Scan::dir(&root).unwrap();
    assert_eq!((scan.duplicates, scan.collisions.len()), (0, 1));
}
