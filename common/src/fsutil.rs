//! File-system helpers: atomic writes and link-or-copy.

use crate::text::Shown;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The folder holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A sibling temp path of `path` (same folder, so a rename onto `path` is atomic).
pub fn temp_sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, then rename.
/// A reader sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create folder {}", dir.shown()))?;
    let tmp = temp_sibling(path, "tmp");
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.shown()))
}

/// A file written in pieces and put in place atomically: it is written to a temp sibling, and
/// `commit` renames it onto `path`; dropped without `commit` (an error, a panic), the temp file is
/// removed and `path` is untouched.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let dir = parent_dir(path);
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {}", dir.shown()))?;
        let tmp = temp_sibling(path, "tmp");
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", path.shown()))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(std::io::BufWriter::new(file)),
        })
    }

    /// Flushes, syncs and renames the file onto its path.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("committed once");
        let result = (|| {
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)
        })();
        result.with_context(|| format!("cannot write {}", self.path.shown()))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Not committed, or the commit failed: leave no temp file behind.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Hard-links `src` to the new path `dst`, or copies it into a new file where a link is
/// impossible (another file system, or one without hard links). A symlinked `src` is resolved
/// first, so the link is to the file itself (a relative symlink would point nowhere from `dst`).
/// Never opens an existing file: when `dst` exists this is an error (before, a copy fallback
/// wrote through an existing hard link into an original). Returns true when it linked.
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<bool> {
    let target =
        std::fs::canonicalize(src).with_context(|| format!("cannot resolve {}", src.shown()))?;
    match std::fs::hard_link(&target, dst) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e).with_context(|| {
            format!(
                "cannot link {} to {}: the destination exists (nothing was overwritten)",
                src.shown(),
                dst.shown()
            )
        }),
        Err(_) => {
            copy_new(&target, dst)
                .with_context(|| format!("cannot copy {} to {}", src.shown(), dst.shown()))?;
            Ok(false)
        }
    }
}

/// Copies `src` into `dst`, which must not exist yet (`create_new`).
fn copy_new(src: &Path, dst: &Path) -> std::io::Result<()> {
    let mut from = std::fs::File::open(src)?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    std::io::copy(&mut from, &mut to)?;
    Ok(())
}

/// Removes leftovers of interrupted runs: siblings of `path` named `.<name>.<tag>-<pid>`, as
/// `temp_sibling` names them, the pid no larger than Linux's largest; any other name is someone
/// else's (`.<name>.<tag>-backup`, a date `-20250101`), and stays.
pub fn remove_stale_siblings(path: &Path, tag: &str) -> Result<()> {
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Ok(());
    }
    let prefix = format!(
        ".{}.{tag}-",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix(&prefix));
        if pid.is_some_and(is_pid) {
            let p = entry.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .with_context(|| format!("cannot remove leftover {}", p.shown()))?;
        }
    }
    Ok(())
}

/// Whether `s` is a process id as `temp_sibling` writes it: digits, at most Linux's `pid_max`
/// limit (2^22).
fn is_pid(s: &str) -> bool {
    let digits = !s.is_empty() && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit());
    digits && s.parse::<u32>().is_ok_and(|pid| pid <= 1 << 22)
}

/// Moves the finished folder `tmp` to `out` (`what` it holds names it in errors), replacing an
/// old `out` only once the new one is in place: moved aside first, put back if the move fails,
/// removed last (a leftover that cannot be removed is the next run's to clear).
pub fn replace_folder(tmp: &Path, out: &Path, what: &str) -> Result<()> {
    if !out.exists() {
        return std::fs::rename(tmp, out)
            .with_context(|| format!("cannot move the new {what} to {}", out.shown()));
    }
    remove_stale_siblings(out, "old")?;
    let old = temp_sibling(out, "old");
    std::fs::rename(out, &old)
        .with_context(|| format!("cannot move the old {what} {} aside", out.shown()))?;
    if let Err(e) = std::fs::rename(tmp, out) {
        // Put the old one back: never leave the user with none.
        let _ = std::fs::rename(&old, out);
        return Err(e).with_context(|| format!("cannot move the new {what} to {}", out.shown()));
    }
    if let Err(e) = std::fs::remove_dir_all(&old) {
        eprintln!("warning: cannot remove the old {what} {}: {e}", old.shown());
    }
    Ok(())
}

/// The first entry under `dir` (depth first) that `ours` does not accept, as a path relative to
/// `dir`: `ours` is asked of every file and folder (whether it is a folder), and a link is never
/// ours. So a command that replaces a folder whole can refuse one holding someone else's files.
pub fn first_foreign(dir: &Path, ours: &dyn Fn(&Path, bool) -> bool) -> Result<Option<PathBuf>> {
    fn walk(
        root: &Path,
        rel: &Path,
        ours: &dyn Fn(&Path, bool) -> bool,
    ) -> Result<Option<PathBuf>> {
        let dir = root.join(rel);
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.shown()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", dir.shown()))?;
            let kind = entry
                .file_type()
                .with_context(|| format!("cannot read {}", dir.shown()))?;
            let path = rel.join(entry.file_name());
            if kind.is_symlink() || !ours(&path, kind.is_dir()) {
                return Ok(Some(path));
            }
            if kind.is_dir()
                && let Some(found) = walk(root, &path, ours)?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
    walk(dir, Path::new(""), ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_file_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        std::fs::write(&path, "old").unwrap();
        // Dropped without commit (an error mid-way): the old file stays, no temp is left.
        {
            let mut f = AtomicFile::create(&path).unwrap();
            f.write_all(b"half").unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn only_leftovers_named_as_temp_sibling_names_them_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("set");
        let leftover = temp_sibling(&out, "old");
        std::fs::create_dir_all(leftover.join("inner")).unwrap();
        let theirs = [
            ".set.old-backup",
            ".set.old-",
            ".set.old-12a",
            ".set.old-+12",
            ".set.old-012",
            ".set.old-20250101",
            ".set.older-1",
            "set",
        ];
        for name in theirs {
            std::fs::write(tmp.path().join(name), b"mine").unwrap();
        }
        remove_stale_siblings(&out, "old").unwrap();
        assert!(!leftover.exists());
        for name in theirs {
            assert!(tmp.path().join(name).is_file(), "{name} was removed");
        }
    }

    #[test]
    fn link_or_copy_never_writes_into_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, dst) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("dst"),
        );
        std::fs::write(&a, "original a").unwrap();
        std::fs::write(&b, "original b").unwrap();
        assert!(link_or_copy(&a, &dst).unwrap());
        // A second source onto the same destination (a hard link to a): an error, nothing written.
        let err = format!("{:#}", link_or_copy(&b, &dst).unwrap_err());
        assert!(err.contains("destination exists"), "{err}");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "original a");
        assert_eq!(std::fs::read_to_string(&dst).unwrap(), "original a");
        // The copy fallback creates only new files.
        assert!(copy_new(&b, &dst).is_err());
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "original a");
        copy_new(&b, &dir.path().join("new")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("new")).unwrap(),
            "original b"
        );
    }

    #[test]
    fn a_symlinked_source_is_linked_as_its_target() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/p")).unwrap();
        std::fs::write(dir.path().join("src/target.png"), "pixels").unwrap();
        // A relative symlink: from another folder it would point nowhere.
        std::os::unix::fs::symlink("../target.png", dir.path().join("src/p/link.png")).unwrap();
        let dst = dir.path().join("out.png");
        link_or_copy(&dir.path().join("src/p/link.png"), &dst).unwrap();
        assert!(
            !std::fs::symlink_metadata(&dst)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&dst).unwrap(), "pixels");
    }
}
