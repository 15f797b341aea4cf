//! File-system helpers: atomic writes and link-or-copy.

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
        .with_context(|| format!("cannot create folder {}", dir.display()))?;
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
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Hard-links `src` to `dst`, copying instead when a link is impossible (another file system,
/// or a file system without hard links). Returns true when it linked.
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<bool> {
    match std::fs::hard_link(src, dst) {
        Ok(()) => Ok(true),
        Err(_) => {
            std::fs::copy(src, dst)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
            Ok(false)
        }
    }
}

/// Removes leftovers of interrupted runs: siblings of `path` named `.<name>.<tag>-<pid>`.
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
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let p = entry.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .with_context(|| format!("cannot remove leftover {}", p.display()))?;
        }
    }
    Ok(())
}
