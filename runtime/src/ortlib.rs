//! Finding and loading the ONNX Runtime shared library (ort's `load-dynamic`): the library comes
//! from the `onnxruntime` (CPU) or `onnxruntime-gpu` (CUDA) wheel on PyPI. Loading a library runs
//! its code, so only places the user chose are searched, never the working directory (a dataset
//! folder from someone else could plant a library there). In order:
//! 1. `--ort-lib` (the user named it);
//! 2. `$ORT_DYLIB_PATH` (the user's environment, as ort itself reads it);
//! 3. the `.venv` of the project the executable belongs to (`make venv`), found by walking up
//!    from the executable's own path to a folder holding `Cargo.toml` and `.venv`;
//! 4. the `onnxruntime` package of `python3` run isolated (`-I`: no working directory, no
//!    `PYTHON*` variables, no user site-packages on `sys.path`) from `/`.
//!
//! Every report names the library loaded. Loaded once per process.

use anyhow::{Context, Result, anyhow, bail};
use common::Shown;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What to tell a user who has no library.
pub const INSTALL_HINT: &str = "install it with `make venv` (the project's .venv gets the `onnxruntime` wheel), \
     or `pip install onnxruntime` (CPU) / `pip install onnxruntime-gpu` (CUDA), or point --ort-lib / \
     ORT_DYLIB_PATH at libonnxruntime.so.<version>";

/// The loaded library: its path, version and the ort environment built on it.
pub struct OrtLib {
    pub path: PathBuf,
    pub version: String,
    pub env: ort::environment::Environment,
}

static LOADED: OnceLock<OrtLib> = OnceLock::new();

/// Loads the library once (later calls return the first one, whatever `explicit` says).
pub fn load(explicit: Option<&Path>) -> Result<&'static OrtLib> {
    if let Some(lib) = LOADED.get() {
        return Ok(lib);
    }
    let path = find(explicit)?;
    let version = version_of(&path)?;
    let env = ort::init_from(&path)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| {
            format!(
                "cannot use ONNX Runtime library {}; {INSTALL_HINT}",
                path.shown()
            )
        })?
        .with_name("idc-onnx")
        .with_telemetry(false)
        .build()
        .map_err(|e| anyhow!("cannot create the ONNX Runtime environment: {e}"))?;
    Ok(LOADED.get_or_init(|| OrtLib { path, version, env }))
}

/// The library path, by the search order above.
pub fn find(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return existing(p, "--ort-lib", INSTALL_HINT);
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return existing(Path::new(&p), "ORT_DYLIB_PATH", INSTALL_HINT);
    }
    for venv in venv_candidates() {
        if let Some(p) = lib_in_site_packages(&venv.join("lib")) {
            return Ok(p);
        }
    }
    if let Some(p) = from_python() {
        return Ok(p);
    }
    bail!("no ONNX Runtime library found; {INSTALL_HINT}")
}

/// `p` when it is a file, else an error naming the flag or variable it came from and `hint`.
pub(crate) fn existing(p: &Path, source: &str, hint: &str) -> Result<PathBuf> {
    if p.is_file() {
        Ok(p.to_path_buf())
    } else {
        bail!(
            "{source} points to {}, which does not exist; {hint}",
            p.shown()
        )
    }
}

/// The `.venv` of the project the executable was built in: the first folder above the
/// executable (`target/<profile>/`, or `target/<profile>/deps/` for tests) that holds both
/// `Cargo.toml` and `.venv`. Never the working directory.
pub(crate) fn venv_candidates() -> Vec<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| project_venv(&exe))
        .into_iter()
        .collect()
}

/// The `.venv` of the first of the four folders above `exe` that holds `Cargo.toml` and `.venv`.
fn project_venv(exe: &Path) -> Option<PathBuf> {
    exe.ancestors()
        .skip(1)
        .take(4)
        .find(|dir| dir.join("Cargo.toml").is_file() && dir.join(".venv").is_dir())
        .map(|dir| dir.join(".venv"))
}

/// `<lib>/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.*` (newest version first).
fn lib_in_site_packages(lib: &Path) -> Option<PathBuf> {
    let pythons = std::fs::read_dir(lib).ok()?;
    let mut found: Vec<PathBuf> = pythons
        .filter_map(|e| e.ok())
        .filter_map(|e| capi_lib(&e.path().join("site-packages/onnxruntime/capi")))
        .collect();
    found.sort_by_key(|p| version_key(p));
    found.pop()
}

/// The numbers in a path, in order, for sorting versions as numbers (`python3.11` after
/// `python3.9`, `libonnxruntime.so.1.17.0` after `.so.1.9.0`).
pub(crate) fn version_key(p: &Path) -> Vec<u64> {
    p.to_string_lossy()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|d| d.parse().ok())
        .collect()
}

fn capi_lib(capi: &Path) -> Option<PathBuf> {
    let mut libs: Vec<PathBuf> = std::fs::read_dir(capi)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("libonnxruntime.so")
                || name == "libonnxruntime.dylib"
                || name == "onnxruntime.dll"
        })
        .collect();
    libs.sort_by_key(|p| version_key(p));
    libs.pop()
}

/// Where an isolated `python3` finds its `onnxruntime` package. `-I` keeps the working directory
/// (and `PYTHONPATH`, user site-packages) off `sys.path`, so a planted `onnxruntime.py` cannot
/// run; it starts in `/` all the same.
fn from_python() -> Option<PathBuf> {
    capi_lib(&python_package_dir("onnxruntime")?.join("capi"))
}

/// The folder of Python package `package` as `python3 -I`, started in `/`, imports it (isolated:
/// neither the working directory nor `PYTHONPATH` nor user site-packages is on `sys.path`).
pub(crate) fn python_package_dir(package: &str) -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-I",
            "-c",
            &format!("import {package}, os; print(os.path.dirname({package}.__file__))"),
        ])
        .current_dir("/")
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim())).filter(|d| d.is_dir())
}

/// Refuses a library older than the ONNX Runtime API this build of ort uses, naming both versions.
pub fn check_version(version: &str, path: &Path) -> Result<()> {
    let minor: u32 = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if minor < ort::MINOR_VERSION {
        bail!(
            "ONNX Runtime {version} at {} is too old: this build (ort 2.0.0-rc.15) needs ONNX Runtime 1.{} or newer; {INSTALL_HINT}",
            path.shown(),
            ort::MINOR_VERSION
        );
    }
    Ok(())
}

/// The library's own version string (`OrtGetApiBase()->GetVersionString()`); ort exposes none.
pub fn version_of(path: &Path) -> Result<String> {
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: loading the library runs its initialisers, as ort's own loading does; the symbol
    // has the C signature above in every ONNX Runtime release, and the returned string is static.
    unsafe {
        let lib = libloading::Library::new(path).with_context(|| {
            format!(
                "cannot load {} as a shared library; {INSTALL_HINT}",
                path.shown()
            )
        })?;
        let get: libloading::Symbol<GetApiBase> = lib.get(b"OrtGetApiBase").with_context(|| {
            format!(
                "{} is not an ONNX Runtime library (no OrtGetApiBase); {INSTALL_HINT}",
                path.shown()
            )
        })?;
        let base = get();
        if base.is_null() {
            bail!("{} returned no API base", path.shown());
        }
        let version = std::ffi::CStr::from_ptr(((*base).GetVersionString)())
            .to_string_lossy()
            .into_owned();
        check_version(&version, path)?;
        std::mem::forget(lib); // keep it loaded: ort loads the same library next
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Empty files at `names` under `dir`, with their folders.
    fn touch(dir: &Path, names: &[&str]) {
        for name in names {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
    }

    #[test]
    fn the_venv_is_the_projects_above_the_executable() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // A crate folder (Cargo.toml, no .venv) between the binary and the project.
        touch(
            root,
            &[
                "Cargo.toml",
                "crate/Cargo.toml",
                "crate/target/release/runtime",
            ],
        );
        let exe = root.join("crate/target/release/runtime");
        assert_eq!(project_venv(&exe), None, "no .venv anywhere yet");
        std::fs::create_dir_all(root.join(".venv")).unwrap();
        assert_eq!(project_venv(&exe), Some(root.join(".venv")));
        // A .venv without Cargo.toml (a dataset's folder, say) is not a project's.
        std::fs::create_dir_all(root.join("crate/target/.venv")).unwrap();
        assert_eq!(project_venv(&exe), Some(root.join(".venv")));
    }

    #[test]
    fn the_library_is_the_newest_libonnxruntime_of_the_newest_python() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join("lib");
        let capi = |py: &str, f: &str| format!("{py}/site-packages/onnxruntime/capi/{f}");
        // What the wheel puts beside the library: other shared objects, some with more digits.
        touch(
            &lib,
            &[
                &capi("python3.9", "libonnxruntime.so.1.20.0"),
                &capi("python3.11", "libonnxruntime.so.1.9.0"),
                &capi("python3.11", "libonnxruntime.so.1.17.0"),
                &capi("python3.11", "libonnxruntime_providers_shared.so"),
                &capi(
                    "python3.11",
                    "onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so",
                ),
                &capi("python3.11", "libother.so.99.0"),
            ],
        );
        let want = lib.join(capi("python3.11", "libonnxruntime.so.1.17.0"));
        assert_eq!(lib_in_site_packages(&lib), Some(want));
        assert_eq!(lib_in_site_packages(&tmp.path().join("none")), None);
        // The names on macOS and Windows.
        for name in ["libonnxruntime.dylib", "onnxruntime.dll"] {
            let dir = tmp.path().join(name);
            touch(&dir, &[name, "libother.so.99.0", "other.dll"]);
            assert_eq!(capi_lib(&dir), Some(dir.join(name)));
        }
    }

    #[test]
    fn python_packages_are_found_where_python_imports_them() {
        // `json` is in every Python's standard library.
        let dir = python_package_dir("json").expect("python3 imports json");
        assert!(
            dir.ends_with("json") && dir.join("__init__.py").is_file(),
            "{dir:?}"
        );
        assert_eq!(python_package_dir("no_such_package_idc"), None);
    }

    #[test]
    fn newest_version_sorts_last() {
        let mut v = [
            PathBuf::from("lib/python3.11/x/libonnxruntime.so.1.17.0"),
            PathBuf::from("lib/python3.9/x/libonnxruntime.so.1.32.0"),
            PathBuf::from("lib/python3.11/x/libonnxruntime.so.1.9.0"),
        ];
        v.sort_by_key(|p| version_key(p));
        assert_eq!(
            v[2],
            PathBuf::from("lib/python3.11/x/libonnxruntime.so.1.17.0")
        );
        assert_eq!(
            v[0],
            PathBuf::from("lib/python3.9/x/libonnxruntime.so.1.32.0")
        );
    }

    #[test]
    fn old_libraries_are_refused_naming_both_versions() {
        let path = Path::new("/x/libonnxruntime.so.1.16.3");
        let err = check_version("1.16.3", path).unwrap_err().to_string();
        assert!(
            err.contains("1.16.3") && err.contains(&format!("1.{}", ort::MINOR_VERSION)),
            "{err}"
        );
        assert!(check_version("1.32.0", path).is_ok());
        let oldest = format!("1.{}.0", ort::MINOR_VERSION);
        assert!(
            check_version(&oldest, path).is_ok(),
            "{oldest} is new enough"
        );
        assert!(check_version("garbage", path).is_err());
    }
}
