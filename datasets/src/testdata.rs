//! Where tests and benchmarks find the real patches (`../shared/data` beside the repository).

use std::path::{Path, PathBuf};

/// Set (to anything but empty or `0`) by `.ci/run`: a test that needs something absent fails
/// instead of skipping, so CI cannot go green without the real-data and GPU-path checks.
pub const REQUIRE_VAR: &str = "IDC_REQUIRE_ALL";

/// Whether `REQUIRE_VAR` is set.
pub fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A file to which each skip appends a line (`make test` sets it and counts them in its summary:
/// cargo hides a passing test's stderr, so a skip would otherwise read as "ok").
pub const SKIP_LOG_VAR: &str = "IDC_SKIP_LOG";

/// A test's precondition is missing: prints `SKIPPED: <why>` and returns, or panics with the
/// same words when `REQUIRE_VAR` is set (`make test` and CI, unless opted out).
pub fn skip(why: &str) {
    if required() {
        panic!("{REQUIRE_VAR} is set, and this test cannot run: {why}");
    }
    record("skipped", why);
}

/// A check that cannot exist on this machine (a CUDA test where there is no NVIDIA GPU, after it
/// checked the error that says so): skipped even under `REQUIRE_VAR`, and counted apart.
pub fn not_on_this_machine(why: &str) {
    record("no-gpu", why);
}

/// Says `SKIPPED: <why>` on stderr and appends `kind, binary, test, why` (tab-separated) to the
/// file `SKIP_LOG_VAR` names.
fn record(kind: &str, why: &str) {
    eprintln!("SKIPPED: {why}");
    let Some(log) = std::env::var_os(SKIP_LOG_VAR) else {
        return;
    };
    // The test binary's name without cargo's hash, and the test's (libtest names its thread).
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
        .map(|stem| stem.split('-').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!(
        "{kind}\t{binary}\t{test}\t{}\n",
        why.replace(['\t', '\n'], " ")
    );
    // One write of a whole line in append mode: lines from tests running at once do not mix.
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    if let Err(e) = appended {
        panic!(
            "cannot append to {SKIP_LOG_VAR} {}: {e}",
            Path::new(&log).display()
        );
    }
}

/// `../shared/data/<name>` from the workspace root, or `$IDC_SHARED_DATA/<name>`; `None` (with a
/// message on stderr saying the test is skipped) when absent, a panic under `REQUIRE_VAR`.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    let base = std::env::var_os("IDC_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let dir = base.join(name);
    if dir.is_dir() {
        Some(dir)
    } else {
        skip(&format!(
            "{} is absent (real IDC patches; set IDC_SHARED_DATA to point elsewhere)",
            dir.display()
        ));
        None
    }
}

/// A valid PNG that claims `w` x `h` pixels and holds none of them: a decompression bomb's
/// header, for tests of the pixel cap.
pub fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(image::GrayImage::new(1, 1))
        .write_to(&mut png, image::ImageFormat::Png)
        .expect("encode");
    let mut bomb = png.into_inner();
    bomb[16..20].copy_from_slice(&w.to_be_bytes());
    bomb[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&bomb[12..29]); // IHDR type + data
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    bomb
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A small synthetic Kaggle-layout tree at `out` (seed 42), for tests and benchmarks.
pub fn small_synth(out: &Path, patients: usize, mean_patches: f64) -> crate::synth::SynthReport {
    let opts = crate::synth::SynthOptions {
        patients,
        mean_patches,
        out: out.to_path_buf(),
        ..Default::default()
    };
    crate::synth::synth(&opts, &indicatif::ProgressBar::hidden()).expect("synthesize a test tree")
}
