//! Walking a dataset tree: every patch found, every problem reported with its path. The walk,
//! the label rule and the same-patch rule here are the only ones: `datasets`, `trainer` and
//! `runtime` all see a tree the same way.

use crate::patch::{Label, PatchName, is_image_extension};
use anyhow::{Context, Result, bail};
use common::text::Shown;
use rayon::prelude::*;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The Kaggle archive unpacks a second copy of every patient under this folder.
pub const KAGGLE_DUPLICATE_DIR: &str = "IDC_regular_ps50_idx5";

/// A labelled patch on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub path: PathBuf,
    pub name: PatchName,
    pub label: Label,
}

/// A file or folder that was found but cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub reason: String,
}

impl Problem {
    pub fn new(path: &Path, reason: impl Into<String>) -> Problem {
        Problem {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The path and the reason as JSON (the path losslessly escaped: it may not be UTF-8).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "path": self.path.shown(), "reason": self.reason })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.shown(), self.reason)
    }
}

/// Two files that name the same patch (patient, x, y): `x1` and `x01`, `X.png` and `X.PNG`,
/// `X.png` and `X.jpg`. Only the first (in path order) is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub kept: PathBuf,
    pub other: PathBuf,
}

impl fmt::Display for Collision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} and {} are the same patch (patient, x, y)",
            self.kept.shown(),
            self.other.shown()
        )
    }
}

/// The result of scanning a dataset root.
#[derive(Debug, Default)]
pub struct Scan {
    pub patches: Vec<Patch>,
    /// Files and folders that cannot be used, with the reason (collisions not included).
    pub problems: Vec<Problem>,
    /// Later files naming a patch already found, outside Kaggle's duplicate copy.
    pub collisions: Vec<Collision>,
    /// Patches skipped because Kaggle's second copy under `IDC_regular_ps50_idx5/` holds them twice.
    pub duplicates: usize,
}

impl Scan {
    /// Scans `root` recursively. Fails only when the root itself cannot be read; every bad file or
    /// folder below it is recorded in `problems` instead.
    pub fn dir(root: &Path) -> Result<Scan> {
        let (mut files, problems) = walk_files(root)?;
        // Originals before Kaggle's duplicate copy, then by path: the kept copy is deterministic.
        files.sort_by_cached_key(|p| (under_duplicate_dir(root, p), p.clone()));
        let classified: Vec<Result<Patch, Problem>> =
            files.par_iter().map(|p| classify(p)).collect();
        let mut scan = Scan {
            problems,
            ..Scan::default()
        };
        let mut seen = SamePatch::new(root);
        for item in classified {
            match item {
                Ok(patch) => match seen.check(&patch.name, &patch.path, patch.path.clone()) {
                    Repeat::New => scan.patches.push(patch),
                    Repeat::KaggleCopy(_) => scan.duplicates += 1,
                    Repeat::Collision(kept) => scan.collisions.push(Collision {
                        kept: kept.clone(),
                        other: patch.path,
                    }),
                },
                Err(problem) => scan.problems.push(problem),
            }
        }
        scan.problems.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(scan)
    }

    /// Number of patches per class.
    pub fn class_counts(&self) -> [usize; 2] {
        let mut counts = [0; 2];
        for p in &self.patches {
            counts[p.label as usize] += 1;
        }
        counts
    }

    /// Files that were found and not used: problems, collisions, Kaggle duplicates.
    pub fn skipped(&self) -> usize {
        self.problems.len() + self.collisions.len() + self.duplicates
    }

    /// An error naming what was skipped, for `--strict`; `Ok` when nothing was.
    pub fn strict(&self, what: &Path) -> Result<()> {
        if self.skipped() > 0 {
            bail!(
                "{}: {} files skipped (--strict makes that an error):\n{}",
                what.shown(),
                self.skipped(),
                self.warnings(usize::MAX).trim_end()
            );
        }
        Ok(())
    }

    /// A summary of problems, collisions and duplicates, for the user (empty when clean); lists
    /// at most `max_listed` of each.
    pub fn warnings(&self, max_listed: usize) -> String {
        let mut out = String::new();
        if self.duplicates > 0 {
            out += &format!("warning: {}\n", kaggle_duplicates_text(self.duplicates));
        }
        if !self.collisions.is_empty() {
            out += &format!(
                "warning: {} files name a patch that an earlier file already names; the earlier one is used:\n",
                self.collisions.len()
            );
            out += &listed(&self.collisions, max_listed);
        }
        if !self.problems.is_empty() {
            out += &format!("warning: {} files skipped:\n", self.problems.len());
            out += &listed(&self.problems, max_listed);
        }
        out
    }
}

/// What the Kaggle duplicate warning says, in every command.
pub fn kaggle_duplicates_text(n: usize) -> String {
    format!(
        "skipped {n} duplicate patches (the Kaggle zip unpacks a second copy of every patient under \
         {KAGGLE_DUPLICATE_DIR}/; the first copy is used -- delete that folder to silence this)"
    )
}

/// Up to `max` items, one per indented line, then how many more.
pub fn listed<T: fmt::Display>(items: &[T], max: usize) -> String {
    let mut out = String::new();
    for p in items.iter().take(max) {
        out += &format!("  {p}\n");
    }
    if items.len() > max {
        out += &format!("  ... and {} more\n", items.len() - max);
    }
    out
}

/// Whether `path` is under a `IDC_regular_ps50_idx5/` folder below `root` (the root itself may
/// be such a folder: then its files are the only copy, not a duplicate).
fn under_duplicate_dir(root: &Path, path: &Path) -> bool {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .any(|c| c.as_os_str() == KAGGLE_DUPLICATE_DIR)
}

/// The same-patch rule, for trees walked in path order: a patch is (patient, x, y); a second
/// file for it is Kaggle's duplicate copy when either file is under `IDC_regular_ps50_idx5/`, a
/// collision otherwise. `V` is what is kept of the first file (its path, or nothing when memory
/// must stay small: 8 bytes a patch plus the map's overhead).
#[derive(Debug)]
pub struct SamePatch<V> {
    root: PathBuf,
    seen: HashMap<String, HashMap<(u32, u32), First<V>>>,
}

/// What is kept of a patch's first file: `V`, and whether it was in Kaggle's duplicate copy.
type First<V> = (V, bool);

impl<V> SamePatch<V> {
    /// For the tree walked from `root`.
    pub fn new(root: &Path) -> Self {
        SamePatch {
            root: root.to_path_buf(),
            seen: HashMap::new(),
        }
    }
}

/// What `SamePatch::check` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Repeat<'a, V> {
    New,
    /// Kaggle's second copy of the patch whose first file left this.
    KaggleCopy(&'a V),
    /// Another file for the patch whose first file left this.
    Collision(&'a V),
}

impl<V> SamePatch<V> {
    pub fn check(&mut self, name: &PatchName, path: &Path, keep: V) -> Repeat<'_, V> {
        let copy = under_duplicate_dir(&self.root, path);
        if !self.seen.contains_key(name.patient.as_str()) {
            self.seen.insert(name.patient.clone(), HashMap::new());
        }
        let by_xy = self.seen.get_mut(name.patient.as_str()).expect("inserted");
        match by_xy.entry((name.x, name.y)) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((keep, copy));
                Repeat::New
            }
            std::collections::hash_map::Entry::Occupied(e) => {
                let (first, first_copy) = e.into_mut();
                if copy || *first_copy {
                    Repeat::KaggleCopy(first)
                } else {
                    Repeat::Collision(first)
                }
            }
        }
    }
}

/// Every file below `root`, recursively, in sorted path order, and the entries that could not be
/// used as files (unreadable folders, dangling symlinks, symlink loops, symlinks to folders).
/// Hidden entries (names starting with `.`: marker files, interrupted builds, macOS metadata) are
/// never patches and are not listed.
pub fn walk_files(root: &Path) -> Result<(Vec<PathBuf>, Vec<Problem>)> {
    let (mut files, mut problems) = (Vec::new(), Vec::new());
    for entry in SortedWalk::new(root)? {
        match entry {
            Ok(path) => files.push(path),
            Err(problem) => problems.push(problem),
        }
    }
    Ok((files, problems))
}

/// `walk_files` one folder listing at a time: the files come in sorted path order (each folder's
/// entries sorted, subfolders entered where they sort), and memory follows the largest folder,
/// not the whole tree. Entries that cannot be walked come as `Err(Problem)`, in their place.
pub struct SortedWalk {
    /// Per open folder, its remaining entries.
    stack: Vec<std::vec::IntoIter<Entry>>,
}

enum Entry {
    File(PathBuf),
    Dir(PathBuf),
    Bad(Problem),
}

impl SortedWalk {
    /// Fails when `root` is not a folder or cannot be listed.
    pub fn new(root: &Path) -> Result<SortedWalk> {
        if !root.is_dir() {
            bail!(
                "{} is not a folder: point to a dataset root (e.g. datasets/orig from the Kaggle zip, \
                 or make one with `datasets synth`)",
                root.shown()
            );
        }
        let entries =
            listing(root).with_context(|| format!("cannot read folder {}", root.shown()))?;
        Ok(SortedWalk {
            stack: vec![entries.into_iter()],
        })
    }
}

/// A folder's visible entries, sorted by name. Symlinks to files count as files; every other
/// symlink is a problem, named (folders are not followed: a link to an ancestor would never end).
fn listing(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                entries.push(Entry::Bad(Problem::new(
                    dir,
                    format!("cannot list folder: {e}"),
                )));
                continue;
            }
        };
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let kind = match entry.file_type() {
            Ok(t) => t,
            Err(e) => {
                entries.push(Entry::Bad(Problem::new(&path, format!("cannot read: {e}"))));
                continue;
            }
        };
        entries.push(if kind.is_dir() {
            Entry::Dir(path)
        } else if kind.is_file() {
            Entry::File(path)
        } else if kind.is_symlink() {
            symlink_entry(path)
        } else {
            Entry::Bad(Problem::new(
                &path,
                "not a regular file (a device, socket or pipe)",
            ))
        });
    }
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(entries)
}

fn symlink_entry(path: PathBuf) -> Entry {
    let target = std::fs::read_link(&path)
        .map(|t| t.shown())
        .unwrap_or_else(|_| "?".into());
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Entry::File(path),
        Ok(m) if m.is_dir() => Entry::Bad(Problem::new(
            &path,
            format!(
                "symlink to a folder ({target}), not followed: link the files, or copy the folder (cp -al)"
            ),
        )),
        Ok(_) => Entry::Bad(Problem::new(
            &path,
            format!("symlink to something that is not a file ({target})"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Entry::Bad(Problem::new(
            &path,
            format!("dangling symlink: {target} does not exist"),
        )),
        Err(e) if e.raw_os_error() == Some(libc_eloop()) => Entry::Bad(Problem::new(
            &path,
            format!("symlink loop ({target} leads back to itself)"),
        )),
        Err(e) => Entry::Bad(Problem::new(
            &path,
            format!("cannot follow symlink to {target}: {e}"),
        )),
    }
}

/// ELOOP ("too many levels of symbolic links") on Linux and the BSDs/macOS.
fn libc_eloop() -> i32 {
    if cfg!(target_os = "linux") { 40 } else { 62 }
}

impl Entry {
    fn path(&self) -> &Path {
        match self {
            Entry::File(p) | Entry::Dir(p) => p,
            Entry::Bad(problem) => &problem.path,
        }
    }
}

impl Iterator for SortedWalk {
    type Item = Result<PathBuf, Problem>;

    fn next(&mut self) -> Option<Result<PathBuf, Problem>> {
        loop {
            let entry = match self.stack.last_mut()?.next() {
                Some(entry) => entry,
                None => {
                    self.stack.pop();
                    continue;
                }
            };
            match entry {
                Entry::File(path) => return Some(Ok(path)),
                Entry::Bad(problem) => return Some(Err(problem)),
                Entry::Dir(path) => match listing(&path) {
                    Ok(entries) => self.stack.push(entries.into_iter()),
                    // One unreadable folder (permissions, I/O) is reported; the rest is walked.
                    Err(e) => {
                        return Some(Err(Problem::new(&path, format!("cannot read folder: {e}"))));
                    }
                },
            }
        }
    }
}

/// Whether a path has an image extension (png, jpg, jpeg).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(is_image_extension)
}

/// The label a file's parent folder gives (`0/` or `1/`), if any.
pub fn folder_label(path: &Path) -> Option<Label> {
    match path.parent()?.file_name()?.to_str()? {
        "0" => Some(0),
        "1" => Some(1),
        _ => None,
    }
}

/// The one label rule: the `0/` or `1/` folder, else the file name's `class<C>`; when both are
/// there they must agree (a `0/` folder holding a `class1` file is an error, never a guess).
pub fn label_of(path: &Path, name: Option<&PatchName>) -> Result<Option<Label>, String> {
    match (folder_label(path), name.map(|n| n.class)) {
        (Some(folder), Some(class)) if folder != class => Err(format!(
            "label disagreement: folder {folder}/ but file name says class{class}"
        )),
        (folder, class) => Ok(folder.or(class)),
    }
}

/// The file name parsed as a Kaggle patch name (`None` with the reason when it is not one).
pub fn patch_name(path: &Path) -> Result<PatchName, String> {
    let file_name = path.file_name().unwrap_or_default();
    let Some(file_name) = file_name.to_str() else {
        return Err(
            "file name is not valid UTF-8, so it is not <patient>_idx5_x<X>_y<Y>_class<C>.png"
                .into(),
        );
    };
    PatchName::parse(file_name).map_err(|e| e.to_string())
}

fn classify(path: &Path) -> Result<Patch, Problem> {
    let problem = |reason: String| Problem::new(path, reason);
    if !has_image_extension(path) {
        return Err(problem("not an image file (expected .png/.jpg)".into()));
    }
    let name = patch_name(path).map_err(problem)?;
    let label = label_of(path, Some(&name)).map_err(problem)?;
    match std::fs::metadata(path) {
        Err(e) => return Err(problem(format!("unreadable: {e}"))),
        Ok(m) if m.len() == 0 => return Err(problem("empty file (0 bytes)".into())),
        Ok(_) => {}
    }
    Ok(Patch {
        path: path.to_path_buf(),
        label: label.unwrap_or(name.class),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_walk_lists_in_path_order_and_skips_hidden() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "b/2.png",
            "b/10.png",
            "a.png",
            "b.png",
            "c/x/y.png",
            ".hidden/z.png",
            "c/.dot",
        ] {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "").unwrap();
        }
        let walked: Vec<PathBuf> = SortedWalk::new(dir.path())
            .unwrap()
            .map(|p| p.unwrap())
            .collect();
        let mut sorted = walked.clone();
        sorted.sort();
        assert_eq!(walked, sorted);
        let names: Vec<String> = walked
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["a.png", "b/10.png", "b/2.png", "b.png", "c/x/y.png"]
        );
        assert!(SortedWalk::new(&dir.path().join("a.png")).is_err());
    }

    #[test]
    fn labels_come_from_the_folder_or_the_name_and_must_agree() {
        let named = PatchName::parse("p_idx5_x1_y1_class1.png").unwrap();
        let path = |s: &str| PathBuf::from(s);
        assert_eq!(label_of(&path("d/1/a.png"), None), Ok(Some(1)));
        assert_eq!(label_of(&path("d/0/a.png"), None), Ok(Some(0)));
        assert_eq!(label_of(&path("d/x/a.png"), None), Ok(None));
        assert_eq!(label_of(&path("d/x/a.png"), Some(&named)), Ok(Some(1)));
        assert_eq!(label_of(&path("d/1/a.png"), Some(&named)), Ok(Some(1)));
        let e = label_of(&path("d/0/a.png"), Some(&named)).unwrap_err();
        assert!(e.contains("label disagreement"), "{e}");
    }

    /// Each kind of unusable file is recorded with its reason, counted once, listed and made an
    /// error by `--strict`; a clean tree passes `--strict`.
    #[test]
    fn every_skip_is_recorded_counted_and_listed() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let put = |rel: &str, bytes: &[u8]| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        };
        put("p1/0/p1_idx5_x1_y1_class0.png", b"x");
        put("p1/1/p1_idx5_x2_y2_class1.png", b"x");
        let clean = Scan::dir(root).unwrap();
        assert_eq!((clean.patches.len(), clean.skipped()), (2, 0));
        assert!(clean.strict(root).is_ok() && clean.warnings(9).is_empty());

        put("p1/0/p1_idx5_x01_y1_class0.png", b"x"); // the same patch as x1
        put("p1/0/notes.txt", b"x");
        put("p1/0/p1_idx5_x3_y3_class0.png", b"");
        put(
            &format!("{KAGGLE_DUPLICATE_DIR}/p1/0/p1_idx5_x1_y1_class0.png"),
            b"x",
        );
        let d = root.join("p1/0");
        symlink("missing.png", d.join("p1_idx5_x4_y4_class0.png")).unwrap();
        symlink(
            "p1_idx5_x5_y5_class0.png",
            d.join("p1_idx5_x5_y5_class0.png"),
        )
        .unwrap();
        symlink(&d, root.join("p1/linked")).unwrap();
        symlink("/dev/null", d.join("p1_idx5_x6_y6_class0.png")).unwrap();
        // Through a file as if it were a folder: neither missing nor a loop (ENOTDIR).
        symlink(
            "p1_idx5_x1_y1_class0.png/x",
            d.join("p1_idx5_x7_y7_class0.png"),
        )
        .unwrap();
        let scan = Scan::dir(root).unwrap();
        assert_eq!(scan.patches.len(), 2);
        assert_eq!((scan.collisions.len(), scan.duplicates), (1, 1));
        let mut reasons: Vec<&str> = scan.problems.iter().map(|p| p.reason.as_str()).collect();
        reasons.sort();
        assert_eq!(reasons.len(), 7, "{reasons:?}");
        for (reason, want) in reasons.iter().zip([
            "cannot follow symlink",
            "dangling symlink",
            "empty file",
            "not an image",
            "symlink loop",
            "symlink to a folder",
            "symlink to something that is not a file",
        ]) {
            assert!(reason.starts_with(want), "{reason:?} is not {want:?}");
        }
        assert_eq!(scan.skipped(), 9);
        let json = scan.problems[0].to_json();
        assert_eq!(json["path"], scan.problems[0].path.shown());
        assert_eq!(json["reason"], scan.problems[0].reason);
        let e = scan.strict(root).unwrap_err().to_string();
        assert!(
            e.contains("9 files skipped") && e.contains("notes.txt"),
            "{e}"
        );
        let w = scan.warnings(1);
        assert!(w.contains("skipped 1 duplicate patches"), "{w}");
        assert!(
            w.contains("1 files name a patch") && w.contains("same patch"),
            "{w}"
        );
        assert!(
            w.contains("7 files skipped") && w.contains("... and 6 more"),
            "{w}"
        );
        assert!(!w.contains("and 0 more"), "{w}");
    }
}
