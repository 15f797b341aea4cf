//! Walking a dataset tree: every patch found, every problem reported with its path.

use crate::patch::{Label, PatchName, is_image_extension};
use anyhow::{Context, Result, bail};
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

/// A file that was found but cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// The result of scanning a dataset root.
#[derive(Debug, Default)]
pub struct Scan {
    pub patches: Vec<Patch>,
    pub problems: Vec<Problem>,
    /// Patches skipped because a file of the same name was already found (Kaggle's second copy).
    pub duplicates: usize,
}

impl Scan {
    /// Scans `root` recursively. Fails only when the root itself cannot be read; every bad file
    /// below it is recorded in `problems` instead.
    pub fn dir(root: &Path) -> Result<Scan> {
        let mut files = walk_files(root)?;
        // Originals before Kaggle's duplicate copy, then by path: the kept copy is deterministic.
        files.sort_by_cached_key(|p| (under_duplicate_dir(p), p.clone()));
        let classified: Vec<Result<Patch, Problem>> =
            files.par_iter().map(|p| classify(p)).collect();
        let mut scan = Scan::default();
        let mut seen: HashMap<String, ()> = HashMap::with_capacity(classified.len());
        for item in classified {
            match item {
                Ok(patch) => {
                    let key = patch
                        .path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    if seen.insert(key, ()).is_some() {
                        scan.duplicates += 1;
                    } else {
                        scan.patches.push(patch);
                    }
                }
                Err(problem) => scan.problems.push(problem),
            }
        }
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

    /// A one-paragraph summary of problems and duplicates, for the user (empty when clean).
    pub fn warnings(&self, max_listed: usize) -> String {
        let mut out = String::new();
        if self.duplicates > 0 {
            out += &format!(
                "warning: skipped {} duplicate patches (same file name seen twice; the Kaggle zip \
                 unpacks a second copy under {KAGGLE_DUPLICATE_DIR}/ -- delete that folder to silence this)\n",
                self.duplicates
            );
        }
        if !self.problems.is_empty() {
            out += &format!("warning: {} files skipped:\n", self.problems.len());
            for p in self.problems.iter().take(max_listed) {
                out += &format!("  {p}\n");
            }
            if self.problems.len() > max_listed {
                out += &format!("  ... and {} more\n", self.problems.len() - max_listed);
            }
        }
        out
    }
}

fn under_duplicate_dir(path: &Path) -> bool {
    path.components()
        .any(|c| c.as_os_str() == KAGGLE_DUPLICATE_DIR)
}

/// Every regular file below `root`, recursively, in sorted path order. Hidden entries (names
/// starting with `.`: marker files, interrupted builds, macOS metadata) are never patches and are
/// not listed.
pub fn walk_files(root: &Path) -> Result<Vec<PathBuf>> {
    SortedWalk::new(root)?.collect()
}

/// `walk_files` one folder listing at a time: the files come in sorted path order (each folder's
/// entries sorted, subfolders entered where they sort), and memory follows the largest folder,
/// not the whole tree.
pub struct SortedWalk {
    /// Per open folder, its remaining entries: (path, is a folder).
    stack: Vec<std::vec::IntoIter<(PathBuf, bool)>>,
}

impl SortedWalk {
    pub fn new(root: &Path) -> Result<SortedWalk> {
        if !root.is_dir() {
            bail!(
                "{} is not a folder: point to a dataset root (e.g. datasets/orig from the Kaggle zip, \
                 or make one with `datasets synth`)",
                root.display()
            );
        }
        Ok(SortedWalk {
            stack: vec![listing(root)?.into_iter()],
        })
    }
}

/// A folder's visible entries, sorted by name: (path, is a folder); file symlinks count as files.
fn listing(dir: &Path) -> Result<Vec<(PathBuf, bool)>> {
    let context = || format!("cannot read folder {}", dir.display());
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(context)? {
        let entry = entry.with_context(context)?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let file_type = entry.file_type().with_context(context)?;
        let path = entry.path();
        if file_type.is_dir() {
            entries.push((path, true));
        } else if file_type.is_file() || (file_type.is_symlink() && path.is_file()) {
            entries.push((path, false));
        }
    }
    entries.sort();
    Ok(entries)
}

impl Iterator for SortedWalk {
    type Item = Result<PathBuf>;

    fn next(&mut self) -> Option<Result<PathBuf>> {
        loop {
            let (path, is_dir) = match self.stack.last_mut()?.next() {
                Some(entry) => entry,
                None => {
                    self.stack.pop();
                    continue;
                }
            };
            if !is_dir {
                return Some(Ok(path));
            }
            match listing(&path) {
                Ok(entries) => self.stack.push(entries.into_iter()),
                Err(e) => return Some(Err(e)),
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

fn classify(path: &Path) -> Result<Patch, Problem> {
    let problem = |reason: String| Problem {
        path: path.to_path_buf(),
        reason,
    };
    if !has_image_extension(path) {
        return Err(problem("not an image file (expected .png/.jpg)".into()));
    }
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let name = PatchName::parse(&file_name).map_err(|e| problem(e.to_string()))?;
    let label = match folder_label(path) {
        Some(folder) if folder != name.class => {
            return Err(problem(format!(
                "label disagreement: folder {folder}/ but file name says class{}",
                name.class
            )));
        }
        Some(folder) => folder,
        None => name.class,
    };
    match std::fs::metadata(path) {
        Err(e) => return Err(problem(format!("unreadable: {e}"))),
        Ok(m) if m.len() == 0 => return Err(problem("empty file (0 bytes)".into())),
        Ok(_) => {}
    }
    Ok(Patch {
        path: path.to_path_buf(),
        name,
        label,
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
}
