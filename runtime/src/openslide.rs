//! Whole-slide images through OpenSlide (the C library, 4.x), loaded at run time as ONNX Runtime
//! is: from the `openslide-bin` wheel on PyPI, which bundles the library and everything it needs
//! (a system OpenSlide such as Debian's `libopenslide0` is found too; untested). Nothing is
//! linked at build time, so the workspace builds without it, and only `runtime slide` needs it.
//! Searched, never the working directory:
//! 1. `--openslide-lib`; 2. `$OPENSLIDE_LIB`; 3. the project's `.venv` (`make venv`);
//! 4. the `openslide_bin` package of an isolated `python3`; 5. the system's `libopenslide.so.1`
//!    or `.so.0` by the dynamic loader's own search.

use anyhow::{Context, Result, bail};
use common::Shown;
use image::{Rgb, RgbImage};
use std::ffi::{CStr, CString, c_char, c_double, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What to tell a user who has no library.
pub const INSTALL_HINT: &str = "install it with `make venv` (the project's .venv gets the `openslide-bin` wheel), \
     or `pip install openslide-bin`, or `apt install libopenslide0`, or point --openslide-lib / OPENSLIDE_LIB at \
     libopenslide.so.1";

type Handle = *mut c_void;

/// The entry points used, from `openslide.h` (stable since OpenSlide 3.4).
struct Api {
    open: unsafe extern "C" fn(*const c_char) -> Handle,
    close: unsafe extern "C" fn(Handle),
    get_error: unsafe extern "C" fn(Handle) -> *const c_char,
    detect_vendor: unsafe extern "C" fn(*const c_char) -> *const c_char,
    level_count: unsafe extern "C" fn(Handle) -> i32,
    level_dimensions: unsafe extern "C" fn(Handle, i32, *mut i64, *mut i64),
    level_downsample: unsafe extern "C" fn(Handle, i32) -> c_double,
    property: unsafe extern "C" fn(Handle, *const c_char) -> *const c_char,
    read_region: unsafe extern "C" fn(Handle, *mut u32, i64, i64, i32, i64, i64),
    version: unsafe extern "C" fn() -> *const c_char,
}

/// The loaded library.
pub struct Lib {
    pub path: PathBuf,
    pub version: String,
    api: Api,
    _lib: libloading::Library,
}

static LOADED: OnceLock<Lib> = OnceLock::new();

/// Loads the library once (later calls return the first one).
pub fn load(explicit: Option<&Path>) -> Result<&'static Lib> {
    if let Some(lib) = LOADED.get() {
        return Ok(lib);
    }
    let path = find(explicit)?;
    // SAFETY: loading runs the library's initialisers, as any dynamic link does; each symbol is
    // looked up by its documented name and given its C signature from openslide.h.
    let lib = unsafe {
        let lib = libloading::Library::new(&path).with_context(|| {
            format!(
                "cannot load OpenSlide from {}; {INSTALL_HINT}",
                path.shown()
            )
        })?;
        macro_rules! sym {
            ($name:literal) => {
                *lib.get(concat!($name, "\0").as_bytes()).with_context(|| {
                    format!(
                        "{} is not OpenSlide 3.4 or newer (no {}); {INSTALL_HINT}",
                        path.shown(),
                        $name
                    )
                })?
            };
        }
        let api = Api {
            open: sym!("openslide_open"),
            close: sym!("openslide_close"),
            get_error: sym!("openslide_get_error"),
            detect_vendor: sym!("openslide_detect_vendor"),
            level_count: sym!("openslide_get_level_count"),
            level_dimensions: sym!("openslide_get_level_dimensions"),
            level_downsample: sym!("openslide_get_level_downsample"),
            property: sym!("openslide_get_property_value"),
            read_region: sym!("openslide_read_region"),
            version: sym!("openslide_get_version"),
        };
        let version = text((api.version)()).unwrap_or_default();
        Lib {
            path: path.clone(),
            version,
            api,
            _lib: lib,
        }
    };
    Ok(LOADED.get_or_init(|| lib))
}

/// A C string the library owns, as Rust text (`None` for NULL).
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that lives as long as this call.
unsafe fn text(p: *const c_char) -> Option<String> {
    // SAFETY: as the caller promises.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// The library path, by the search order above.
pub fn find(explicit: Option<&Path>) -> Result<PathBuf> {
    let named = |p: &Path, source: &str| crate::ortlib::existing(p, source, INSTALL_HINT);
    if let Some(p) = explicit {
        return named(p, "--openslide-lib");
    }
    if let Some(p) = std::env::var_os("OPENSLIDE_LIB").filter(|p| !p.is_empty()) {
        return named(Path::new(&p), "OPENSLIDE_LIB");
    }
    let venvs = crate::ortlib::venv_candidates();
    if let Some(p) = venvs.iter().find_map(|v| in_site_packages(&v.join("lib"))) {
        return Ok(p);
    }
    if let Some(p) = from_python() {
        return Ok(p);
    }
    for name in ["libopenslide.so.1", "libopenslide.so.0"] {
        // SAFETY: as in `load`; a bare name is looked up by the dynamic loader (its cache and
        // system folders, never the working directory unless LD_LIBRARY_PATH says so).
        if unsafe { libloading::Library::new(name) }.is_ok() {
            return Ok(PathBuf::from(name));
        }
    }
    bail!("no OpenSlide library found; {INSTALL_HINT}")
}

/// `<lib>/python3.*/site-packages/openslide_bin/libopenslide.so.1` (newest Python first).
fn in_site_packages(lib: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| {
            e.path()
                .join("site-packages/openslide_bin/libopenslide.so.1")
        })
        .filter(|p| p.is_file())
        .collect();
    found.sort_by_key(|p| crate::ortlib::version_key(p));
    found.pop()
}

/// The `openslide_bin` package of `python3 -I` (isolated, started in `/`), as for ONNX Runtime.
fn from_python() -> Option<PathBuf> {
    Some(crate::ortlib::python_package_dir("openslide_bin")?.join("libopenslide.so.1"))
        .filter(|p| p.is_file())
}

// OpenSlide's answers as a slide can use them. It reports failures through the handle's error
// state (`Slide::check`, asked first), so these only refuse what no readable slide has.

/// A level count: at least one level.
fn level_count(n: i32) -> Option<u32> {
    u32::try_from(n).ok().filter(|&n| n > 0)
}

/// A level's width and height: both at least one pixel.
fn level_size(w: i64, h: i64) -> Option<(u64, u64)> {
    let (w, h) = (u64::try_from(w).ok()?, u64::try_from(h).ok()?);
    (w > 0 && h > 0).then_some((w, h))
}

/// A level's downsample: finite and at least 1 (level 0 is 1).
fn downsample(d: f64) -> Option<f64> {
    (d.is_finite() && d >= 1.0).then_some(d)
}

/// An open slide. OpenSlide handles may be read from several threads at once.
pub struct Slide {
    lib: &'static Lib,
    handle: Handle,
    path: PathBuf,
}

// SAFETY: OpenSlide documents its handles as thread-safe for every call made here.
unsafe impl Send for Slide {}
unsafe impl Sync for Slide {}

impl Drop for Slide {
    fn drop(&mut self) {
        // SAFETY: the handle came from openslide_open and is closed once.
        unsafe { (self.lib.api.close)(self.handle) }
    }
}

impl Slide {
    /// Opens `path`; an error says whether the format is unknown or the file is broken.
    pub fn open(lib: &'static Lib, path: &Path) -> Result<Slide> {
        use std::os::unix::ffi::OsStrExt;
        let c = CString::new(path.as_os_str().as_bytes())
            .with_context(|| format!("{}: a path with a NUL byte", path.shown()))?;
        if !path.is_file() {
            bail!("{}: no such file", path.shown());
        }
        // SAFETY: `c` is a NUL-terminated path; the library returns NULL or a handle.
        let handle = unsafe { (lib.api.open)(c.as_ptr()) };
        if handle.is_null() {
            // SAFETY: as above; the vendor string is static.
            let vendor = unsafe { text((lib.api.detect_vendor)(c.as_ptr())) };
            bail!(
                "{}: not a slide format OpenSlide {} reads{} (Aperio .svs, generic tiled TIFF, \
                 Hamamatsu .ndpi/.vms, MIRAX .mrxs, Leica .scn, Philips TIFF, DICOM, ...)",
                path.shown(),
                lib.version,
                vendor.map_or(String::new(), |v| format!(" (detected vendor {v})"))
            );
        }
        let slide = Slide {
            lib,
            handle,
            path: path.to_path_buf(),
        };
        slide.check()?;
        Ok(slide)
    }

    /// The handle's error state: once set, every later call fails the same way.
    fn check(&self) -> Result<()> {
        // SAFETY: a live handle; the error string lives as long as the handle.
        match unsafe { text((self.lib.api.get_error)(self.handle)) } {
            None => Ok(()),
            Some(e) => bail!("{}: OpenSlide cannot read it: {e}", self.path.shown()),
        }
    }

    pub fn levels(&self) -> Result<u32> {
        // SAFETY: a live handle.
        let n = unsafe { (self.lib.api.level_count)(self.handle) };
        self.check()?;
        level_count(n).with_context(|| format!("{}: no pyramid levels", self.path.shown()))
    }

    /// Width and height of `level`.
    pub fn dimensions(&self, level: u32) -> Result<(u64, u64)> {
        // Left at 0 (no size) unless the library writes them.
        let (mut w, mut h) = (0i64, 0i64);
        // SAFETY: a live handle and two valid out-pointers.
        unsafe { (self.lib.api.level_dimensions)(self.handle, level as i32, &mut w, &mut h) };
        self.check()?;
        level_size(w, h).with_context(|| {
            format!(
                "{}: level {level} has no size ({w} x {h})",
                self.path.shown()
            )
        })
    }

    /// How many level-0 pixels one pixel of `level` spans.
    pub fn downsample(&self, level: u32) -> Result<f64> {
        // SAFETY: a live handle.
        let d = unsafe { (self.lib.api.level_downsample)(self.handle, level as i32) };
        self.check()?;
        downsample(d)
            .with_context(|| format!("{}: level {level} has downsample {d}", self.path.shown()))
    }

    /// A slide property (`openslide.mpp-x`, `openslide.vendor`, ...).
    pub fn property(&self, name: &str) -> Option<String> {
        let c = CString::new(name).ok()?;
        // SAFETY: a live handle and a NUL-terminated name; the value lives as long as the handle.
        unsafe { text((self.lib.api.property)(self.handle, c.as_ptr())) }
    }

    /// The `w` x `h` pixels of `level` whose top-left corner is at (`x`, `y`) in level-0
    /// coordinates, as RGB over white (OpenSlide gives premultiplied ARGB; outside the slide
    /// and where nothing was scanned it is transparent).
    pub fn read(&self, x: i64, y: i64, level: u32, w: u32, h: u32) -> Result<RgbImage> {
        let mut argb = vec![0u32; w as usize * h as usize];
        // SAFETY: a live handle; `argb` holds exactly w * h pixels as the call requires.
        unsafe {
            (self.lib.api.read_region)(
                self.handle,
                argb.as_mut_ptr(),
                x,
                y,
                level as i32,
                i64::from(w),
                i64::from(h),
            )
        };
        self.check()?;
        let mut img = RgbImage::new(w, h);
        for (px, &v) in img.pixels_mut().zip(&argb) {
            // Premultiplied over white: c + (255 - a).
            let white = 255 - (v >> 24) as u8;
            let [r, g, b] = [16, 8, 0].map(|s| ((v >> s) & 0xff) as u8);
            *px = Rgb([r, g, b].map(|c| c.saturating_add(white)));
        }
        Ok(img)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_no_readable_slide_gives_are_refused() {
        assert_eq!(level_count(1), Some(1));
        assert_eq!(level_count(4), Some(4));
        assert_eq!(level_count(0), None);
        assert_eq!(level_count(-1), None);

        assert_eq!(level_size(3, 2), Some((3, 2)));
        assert_eq!(level_size(1, 1), Some((1, 1)));
        for (w, h) in [(0, 2), (2, 0), (-1, 5), (5, -1), (0, 0)] {
            assert_eq!(level_size(w, h), None, "{w} x {h}");
        }

        assert_eq!(downsample(1.0), Some(1.0));
        assert_eq!(downsample(4.0), Some(4.0));
        for d in [0.5, 0.0, -4.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(downsample(d), None, "{d}");
        }
    }
}
