//! A hostile corpus, made at test time, through the real binaries: files that collide, symlinks
//! that are relative, dangling, looping or to folders, the Kaggle zip's duplicate tree, labels
//! that disagree, names that are not UTF-8 or hold escape sequences, corrupt and truncated files,
//! absurd coordinates, an unreadable folder, out-of-range flags. Every command must end with 0
//! or 2 (never a panic or a signal), count and name what it skips, send no control byte to the
//! terminal, and leave every original byte for byte as it was.

mod common;

use common::{Ran, control_bytes, exec, exec_with, fingerprints, model};
use datasets::Scan;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// The hostile tree, and what a correct tool must find in it.
struct Corpus {
    root: PathBuf,
    /// Clean synthetic patches before anything was added.
    clean: usize,
    /// Patches of the patient copied under `IDC_regular_ps50_idx5/`.
    kaggle_copies: usize,
}

const ESC_NAME: &[u8] = b"\x1b[2J\x1b]0;pwned\x07_idx5_x1_y1_class1.png";

fn corpus(tmp: &Path) -> Corpus {
    let root = tmp.join("orig");
    datasets::testdata::small_synth(&root, 4, 40.0);
    let mut good = Scan::dir(&root).unwrap().patches;
    good.sort_by(|a, b| a.path.cmp(&b.path));
    let clean = good.len();
    let first = &good[0];
    let dir = first.path.parent().unwrap();
    let n = &first.name;
    let bytes = std::fs::read(&first.path).unwrap();
    let stem = |x: &str| format!("{}_idx5_x{x}_y{}_class{}", n.patient, n.y, n.class);
    // Three more files for the same patch: a leading zero, an upper-case extension, a JPEG.
    std::fs::write(
        dir.join(format!("{}.png", stem(&format!("0{}", n.x)))),
        &bytes,
    )
    .unwrap();
    std::fs::write(dir.join(format!("{}.PNG", stem(&n.x.to_string()))), &bytes).unwrap();
    let jpeg = |p: &Path| {
        let mut out = std::io::Cursor::new(Vec::new());
        image::open(p)
            .unwrap()
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    };
    std::fs::write(
        dir.join(format!("{}.jpg", stem(&n.x.to_string()))),
        jpeg(&first.path),
    )
    .unwrap();
    // A patch of its own as JPEG: it keeps its extension in the split.
    std::fs::write(
        dir.join(format!("{}.jpg", stem("55501"))),
        jpeg(&first.path),
    )
    .unwrap();
    // A relative symlink to another patient's patch, under a name of its own.
    let other = good
        .iter()
        .find(|p| p.name.patient != n.patient && p.label == first.label)
        .unwrap();
    let rel = Path::new("../..").join(other.path.strip_prefix(&root).unwrap());
    symlink(&rel, dir.join(format!("{}.png", stem("99901")))).unwrap();
    // Kaggle's duplicate tree: the last patient again.
    let last = &good.last().unwrap().name.patient;
    let copy = root.join("IDC_regular_ps50_idx5").join(last);
    let mut kaggle_copies = 0;
    for p in good.iter().filter(|p| &p.name.patient == last) {
        let to = copy.join(p.path.strip_prefix(root.join(last)).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&p.path, to).unwrap();
        kaggle_copies += 1;
    }
    // Symlinks that dangle, loop, or lead to a folder.
    symlink("missing.png", dir.join(format!("{}.png", stem("88801")))).unwrap();
    let looping = dir.join(format!("{}.png", stem("88851")));
    symlink(looping.file_name().unwrap(), &looping).unwrap();
    symlink("..", dir.join("back")).unwrap();
    // A class the folder contradicts.
    let other_class = 1 - n.class;
    std::fs::write(
        dir.join(format!(
            "{}_idx5_x77701_y1_class{other_class}.png",
            n.patient
        )),
        &bytes,
    )
    .unwrap();
    // Names that are not UTF-8 (valid images), and a corrupt file named with escape sequences.
    for raw in [&b"\xff.png"[..], &b"\xfe.png"[..]] {
        std::fs::write(dir.join(OsStr::from_bytes(raw)), &bytes).unwrap();
    }
    std::fs::write(
        dir.join(OsStr::from_bytes(ESC_NAME)),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    // A truncated patch with a good name.
    std::fs::write(
        dir.join(format!("{}.png", stem("66601"))),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    Corpus {
        root,
        clean,
        kaggle_copies,
    }
}

fn no_control_bytes(ran: &Ran, what: &str) {
    let bad = control_bytes(&ran.raw);
    assert!(
        bad.is_empty(),
        "{what} sent control bytes {bad:?} to the terminal:\n{}",
        ran.all()
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn datasets_reports_every_hostile_file_and_never_changes_an_original() {
    let tmp = tempfile::tempdir().unwrap();
    let c = corpus(tmp.path());
    let before = fingerprints(&c.root);
    let dir = tmp.path();

    let scan = exec(
        "datasets",
        &["scan", s(&c.root), "--max-listed", "100"],
        dir,
    );
    scan.ok();
    no_control_bytes(&scan, "datasets scan");
    // The clean patches, the symlinked one, the lone JPEG, the truncated one (scan does not decode).
    let patches = c.clean + 3;
    assert!(
        scan.stdout.contains(&format!("{patches} patches (")),
        "{}",
        scan.stdout
    );
    assert!(
        scan.stdout.contains("7 problem files, 3 collisions, ")
            && scan
                .stdout
                .contains(&format!("{} duplicates", c.kaggle_copies)),
        "{}",
        scan.stdout
    );
    for reason in [
        "dangling symlink",
        "symlink loop",
        "symlink to a folder",
        "label disagreement",
        "not valid UTF-8",
        "patient id may hold only",
        "same patch",
        r"\xff.png",
        r"\xfe.png",
        r"\x1b[2J\x1b]0;pwned\x07",
        "IDC_regular_ps50_idx5",
    ] {
        assert!(
            scan.all().contains(reason),
            "{reason:?} missing:\n{}",
            scan.all()
        );
    }
    exec("datasets", &["scan", s(&c.root), "--strict"], dir).fails_with("--strict");

    // Colliding files stop the build before anything is written, naming both of each pair.
    let out = dir.join("idc");
    let err = exec(
        "datasets",
        &["build", "--source", s(&c.root), "--out", s(&out)],
        dir,
    );
    err.fails_with("name a patch that another file already names");
    assert_eq!(
        err.stderr.matches("are the same patch").count(),
        3,
        "{}",
        err.stderr
    );
    assert!(!out.exists(), "a refused build wrote {}", out.display());
    no_control_bytes(&err, "datasets build");

    // Keeping the first of each: one manifest row per file, every file a real patch.
    let built = exec(
        "datasets",
        &[
            "build",
            "--source",
            s(&c.root),
            "--out",
            s(&out),
            "--on-collision",
            "keep-first",
        ],
        dir,
    );
    built.ok();
    no_control_bytes(&built, "datasets build --on-collision keep-first");
    let rows = datasets::manifest::read(&out.join("manifest.csv")).unwrap();
    assert_eq!(rows.len(), patches);
    let mut files = 0;
    for split in datasets::SPLITS {
        for entry in walkdir(&out.join(split)) {
            assert!(
                entry.symlink_metadata().unwrap().is_file(),
                "{} is not a plain file",
                entry.display()
            );
            files += 1;
        }
    }
    assert_eq!(files, rows.len());
    for r in &rows {
        let f = out.join(&r.path);
        assert!(
            std::fs::metadata(&f).is_ok(),
            "{} points nowhere",
            f.display()
        );
    }
    assert!(
        rows.iter()
            .any(|r| r.x == 55501 && r.path.ends_with(".jpg"))
    );
    // The relative symlink became a link to its target's bytes.
    let linked = rows
        .iter()
        .find(|r| r.x == 99901)
        .expect("the symlinked patch is in the split");
    assert!(
        std::fs::read(out.join(&linked.path))
            .unwrap()
            .starts_with(b"\x89PNG")
    );
    exec(
        "datasets",
        &[
            "build",
            "--source",
            s(&c.root),
            "--out",
            s(&dir.join("idc2")),
            "--on-collision",
            "keep-first",
            "--strict",
        ],
        dir,
    )
    .fails_with("--strict");

    assert_eq!(fingerprints(&c.root), before, "an original changed");
}

/// Every regular file or symlink below `dir`.
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.symlink_metadata().unwrap().is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn runtime_counts_each_image_once_and_names_every_skip() {
    let tmp = tempfile::tempdir().unwrap();
    let c = corpus(tmp.path());
    let before = fingerprints(&c.root);
    let dir = tmp.path();
    let onnx = model(dir);
    let (json, preds) = (dir.join("r.json"), dir.join("p.csv"));
    let args = [
        "eval",
        s(&c.root),
        "--model",
        s(&onnx),
        "--ep",
        "cpu",
        "--patients",
        "--json",
        s(&json),
        "--predictions",
        s(&preds),
    ];
    let ran = exec("runtime", &args, dir);
    ran.ok();
    no_control_bytes(&ran, "runtime eval");
    // Clean + symlinked + lone JPEG + the two non-UTF-8 names (labelled by their folder).
    let images = c.clean + 4;
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        report["run"]["images"].as_u64(),
        Some(images as u64),
        "{}",
        ran.stdout
    );
    assert_eq!(
        report["run"]["kaggle_duplicates"].as_u64(),
        Some(c.kaggle_copies as u64)
    );
    // Three collisions, dangling, loop, folder symlink, disagreement, the escape-named corrupt
    // file, the truncated one.
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 9, "{:#?}", skipped);
    assert_eq!(
        report["run"]["skipped"].as_u64(),
        Some((9 + c.kaggle_copies) as u64)
    );
    for reason in [
        "same patch as an earlier file",
        "dangling symlink",
        "symlink loop",
        "symlink to a folder",
        "label disagreement",
        "not a decodable",
    ] {
        assert!(
            ran.stdout.contains(reason),
            "{reason:?} missing:\n{}",
            ran.stdout
        );
    }
    assert!(
        ran.stdout.contains(r"\x1b[2J\x1b]0;pwned\x07"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("IDC_regular_ps50_idx5"),
        "{}",
        ran.stdout
    );
    // Patients are counted once: the duplicated patient has its own number of patches.
    let rows: Vec<csv::StringRecord> = csv::Reader::from_path(&preds)
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(rows.len(), images);
    let paths: std::collections::HashSet<&str> = rows.iter().map(|r| &r[0]).collect();
    assert_eq!(paths.len(), images, "two rows share a path");
    // The names that are not UTF-8 are two rows, told apart, and decode back to their bytes.
    for raw in [&b"\xff.png"[..], &b"\xfe.png"[..]] {
        let row = rows
            .iter()
            .find(|r| r[0].ends_with(&::common::text::escape_bytes(raw)))
            .unwrap_or_else(|| panic!("no row for {raw:?}"));
        let back = ::common::text::unescape(&row[0]).unwrap();
        assert!(std::fs::metadata(OsStr::from_bytes(&back)).is_ok());
    }
    let csv_text = std::fs::read(&preds).unwrap();
    assert!(
        control_bytes(&csv_text).iter().all(|&b| b == b'\r'),
        "control bytes in the CSV"
    );

    exec("runtime", &[&args[..], &["--strict"]].concat(), dir).fails_with("--strict");
    assert_eq!(fingerprints(&c.root), before, "an original changed");
}

#[test]
fn heatmap_refuses_absurd_coordinates_per_patient() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let onnx = model(dir);
    let root = dir.join("orig");
    datasets::testdata::small_synth(&root, 2, 30.0);
    let good = Scan::dir(&root).unwrap().patches;
    let bytes = std::fs::read(&good[0].path).unwrap();
    let far = root.join("far/0");
    std::fs::create_dir_all(&far).unwrap();
    for (x, y) in [
        (1u64, 1u64),
        (2_000_000, 2_000_000),
        (4_294_967_250, 4_294_967_250),
        (4_000_000_000_000, 1),
    ] {
        std::fs::write(far.join(format!("77_idx5_x{x}_y{y}_class0.png")), &bytes).unwrap();
    }
    let hm = dir.join("hm");
    let args = ["heatmap", s(&root), "--model", s(&onnx), "--out", s(&hm)];
    let ran = exec("runtime", &args, dir);
    ran.ok();
    no_control_bytes(&ran, "runtime heatmap");
    // The synthetic patients get their heatmaps; patient 77's span is refused with the reason;
    // the name whose x does not fit is named as unplaceable.
    assert!(ran.stdout.contains("2 heatmaps"), "{}", ran.stdout);
    assert!(ran.stdout.contains("1 patients refused"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("patient 77") && ran.stdout.contains("pixel limit"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("no place on a slide"), "{}", ran.stdout);
    assert!(!hm.join("heatmap_77.png").exists());
    exec("runtime", &[&args[..], &["--strict"]].concat(), dir).fails_with("--strict");
}

#[test]
fn an_unreadable_folder_is_reported_and_the_rest_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = dir.join("orig");
    datasets::testdata::small_synth(&root, 3, 30.0);
    let good = Scan::dir(&root).unwrap().patches;
    let locked = good[0].path.parent().unwrap().to_path_buf();
    let hidden = good
        .iter()
        .filter(|p| p.path.parent() == Some(&locked))
        .count();
    // Root reads every folder anyway: drop that power, as an ordinary user has it.
    // SAFETY: geteuid has no preconditions.
    let prefix: &[&str] = if unsafe { libc::geteuid() } == 0 {
        if !Path::new("/usr/bin/setpriv").is_file() {
            datasets::testdata::skip(
                "setpriv (util-linux) is needed to test an unreadable folder as root",
            );
            return;
        }
        &[
            "/usr/bin/setpriv",
            "--bounding-set",
            "-dac_override,-dac_read_search",
        ]
    } else {
        &[]
    };
    let onnx = model(dir);
    set_mode(&locked, 0o000);
    let run = |name: &str, args: &[&str]| {
        let args: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
        exec_with(prefix, name, &args, dir)
    };
    let scan = run("datasets", &["scan", s(&root)]);
    let build = run(
        "datasets",
        &["build", "--source", s(&root), "--out", s(&dir.join("idc"))],
    );
    let eval = run(
        "runtime",
        &["eval", s(&root), "--model", s(&onnx), "--ep", "cpu"],
    );
    let strict = run(
        "runtime",
        &[
            "eval",
            s(&root),
            "--model",
            s(&onnx),
            "--ep",
            "cpu",
            "--strict",
        ],
    );
    set_mode(&locked, 0o755);
    for ran in [&scan, &build, &eval] {
        ran.ok();
        assert!(
            ran.all().contains("cannot read folder") && ran.all().contains("ermission denied"),
            "{}",
            ran.all()
        );
        assert!(
            ran.all().contains(&::common::text::path(&locked)),
            "{}",
            ran.all()
        );
    }
    assert!(
        scan.stdout
            .contains(&format!("{} patches", good.len() - hidden)),
        "{}",
        scan.stdout
    );
    let rows = datasets::manifest::read(&dir.join("idc/manifest.csv")).unwrap();
    assert_eq!(rows.len(), good.len() - hidden);
    assert!(
        eval.stdout
            .contains(&format!("{} images", good.len() - hidden)),
        "{}",
        eval.stdout
    );
    strict.fails_with("--strict");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn numeric_flags_are_checked_for_their_real_range() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "runtime",
            &["eval", ".", "--threshold", "nan"],
            "--threshold",
        ),
        ("runtime", &["eval", ".", "--threshold", "5"], "--threshold"),
        ("runtime", &["eval", ".", "--threshold=-0.1"], "--threshold"),
        (
            "runtime",
            &["eval", ".", "--batch-size", "0"],
            "--batch-size",
        ),
        (
            "runtime",
            &["eval", ".", "--threads", "100000"],
            "--threads",
        ),
        (
            "runtime",
            &["eval", ".", "--input-size", "0"],
            "--input-size",
        ),
        ("runtime", &["heatmap", ".", "--scale", "0"], "--scale"),
        ("runtime", &["heatmap", ".", "--scale", "inf"], "--scale"),
        (
            "runtime",
            &["heatmap", ".", "--max-patients", "0"],
            "--max-patients",
        ),
        ("datasets", &["synth", "--patients", "0"], "--patients"),
        (
            "datasets",
            &["synth", "--mean-patches", "nan"],
            "--mean-patches",
        ),
        (
            "datasets",
            &["synth", "--patients", "100000", "--mean-patches", "100000"],
            "over the 1e8 synth makes",
        ),
        (
            "datasets",
            &["build", "--test-fraction", "1"],
            "--test-fraction",
        ),
        (
            "datasets",
            &["build", "--val-fraction", "nan"],
            "--val-fraction",
        ),
        ("trainer", &["--workers", "100000"], "--workers"),
        ("trainer", &["--stop-after", "0"], "--stop-after"),
        (
            "trainer",
            &["--learning-rate", "nan"],
            "train.learning_rate",
        ),
        ("trainer", &["--batch-size", "0"], "train.batch_size"),
        ("trainer", &["--batch-size", "1000000"], "train.batch_size"),
        ("trainer", &["--epochs", "0"], "train.epochs"),
    ];
    let config = dir.join("c.yaml");
    std::fs::write(&config, "train:\n  epochs: 1\n").unwrap();
    for (name, args, needle) in cases {
        let mut args = args.to_vec();
        if *name == "trainer" {
            args.extend(["--config", s(&config)]);
        }
        exec(name, &args, dir).fails_with(needle);
    }
}
