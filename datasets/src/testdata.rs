//! Where tests and benchmarks find the real patches (`../shared/data` beside the repository).

use std::path::PathBuf;

/// `../shared/data/<name>` from the workspace root, or `$IDC_SHARED_DATA/<name>`; `None` (with a
/// message on stderr saying the test is skipped) when absent.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    let base = std::env::var_os("IDC_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let dir = base.join(name);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: {} is absent (real IDC patches; set IDC_SHARED_DATA to point elsewhere)",
            dir.display()
        );
        None
    }
}
