//! `runtime slide` on whole-slide images built from real patients (`bench/make_slide.py`: each
//! patch at its x, y on a white canvas, as a tiled pyramidal TIFF with a scale, which OpenSlide
//! reads): every patch is found as a tissue tile with the probability `runtime eval` gives its
//! PNG, the background makes no tiles, the areas and the GeoJSON regions agree with the tiles;
//! and bad slides are named while the good one is still done.

mod common;

use common::{Ran, exec, model};
use datasets::testdata::shared_data;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make venv` (the README's `make test` does)",
        python.display()
    );
    python
}

/// `bench/make_slide.py args...`.
fn make_slide(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/make_slide.py");
    let o = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "make_slide.py {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let head = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            head.iter()
                .map(String::from)
                .zip(rec.iter().map(String::from))
                .collect()
        })
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `runtime eval DIR` probabilities by the patch's 0-based top-left corner (x - 1, y - 1).
fn eval_probs(dir: &Path, onnx: &Path, tmp: &Path, extra: &[&str]) -> BTreeMap<(i64, i64), f64> {
    let csv = tmp.join("eval.csv");
    let mut args = vec![
        "eval",
        s(dir),
        "--model",
        s(onnx),
        "--ep",
        "cpu",
        "--predictions",
        s(&csv),
    ];
    args.extend(extra);
    exec("runtime", &args, tmp).ok();
    read_csv(&csv)
        .iter()
        .map(|r| {
            let at = |k: &str| r[k].parse::<i64>().unwrap() - 1;
            ((at("x"), at("y")), r["probability"].parse().unwrap())
        })
        .collect()
}

/// The tiles of a slide's tiles.csv by level-0 corner divided by `k`, and the probabilities.
fn slide_probs(dir: &Path, k: i64) -> BTreeMap<(i64, i64), f64> {
    read_csv(&dir.join("tiles.csv"))
        .iter()
        .map(|r| {
            let at = |key: &str| r[key].parse::<i64>().unwrap();
            assert_eq!(at("x") % k, 0, "tile corners fall on the patch grid");
            (
                (at("x") / k, at("y") / k),
                r["probability"].parse().unwrap(),
            )
        })
        .collect()
}

fn close(a: &BTreeMap<(i64, i64), f64>, b: &BTreeMap<(i64, i64), f64>, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: the tissue tiles are not the patches"
    );
    for (at, p) in a {
        assert!(
            (p - b[at]).abs() <= 2e-6,
            "{what} at {at:?}: {p} vs {}",
            b[at]
        );
    }
}

/// Whether the point is inside the GeoJSON regions (in an outline, in none of its holes).
fn in_regions(features: &[serde_json::Value], x: f64, y: f64) -> bool {
    let ring = |r: &serde_json::Value| -> Vec<(f64, f64)> {
        r.as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
            .collect()
    };
    features.iter().any(|f| {
        let rings = f["geometry"]["coordinates"].as_array().unwrap();
        runtime::slide::regions::contains(&ring(&rings[0]), x, y)
            && !rings[1..]
                .iter()
                .any(|h| runtime::slide::regions::contains(&ring(h), x, y))
    })
}

/// `runtime slide SLIDE --context` into `t/out`; returns that folder.
fn with_context(slide: &Path, onnx: &Path, t: &Path, out: &str) -> PathBuf {
    let out = t.join(out);
    let args = [
        "slide",
        s(slide),
        "--model",
        s(onnx),
        "--ep",
        "cpu",
        "--context",
        "--out",
        s(&out),
    ];
    exec("runtime", &args, t).ok();
    out
}

#[test]
fn a_slide_of_a_real_patient_gives_every_patch_its_eval_probability() {
    let Some(real) = shared_data("idc-real") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let onnx = model(t);
    let patient = real.join("8916");
    let eval = eval_probs(&patient, &onnx, t, &[]);
    // A threshold near the median, so that both predictions occur whatever the random model
    // says: in the middle of the widest gap between neighbouring probabilities there, so that
    // no tile lies within the CSV's rounding (or ONNX Runtime's last bits) of it.
    let mut sorted: Vec<f64> = eval.values().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let (n, mid) = (sorted.len(), sorted.len() / 2);
    let (lo, hi) = (mid - n / 4..mid + n / 4)
        .map(|i| (sorted[i - 1], sorted[i]))
        .max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
        .unwrap();
    assert!(hi - lo > 1e-5, "no gap between {lo} and {hi}");
    let threshold = (lo + hi) / 2.0;
    // At the patches' own scale (4 µm/px), and 4x finer (1 µm/px: read from level 1, whose
    // pixels are the means of 4 x 4 blocks, so the same pixels again).
    let native = t.join("native.tif");
    let fine = t.join("fine.tif");
    make_slide(&["patches", s(&patient), s(&native)]);
    make_slide(&["patches", s(&patient), s(&fine), "--upscale", "4"]);
    let out = t.join("slides");
    let th = threshold.to_string();
    let ran = exec(
        "runtime",
        &[
            "slide",
            s(&native),
            s(&fine),
            "--model",
            s(&onnx),
            "--ep",
            "cpu",
            "--threshold",
            &th,
            "--out",
            s(&out),
        ],
        t,
    );
    ran.ok();
    for (name, k, level) in [("native", 1, 0), ("fine", 4, 1)] {
        let dir = out.join(name);
        close(&slide_probs(&dir, k), &eval, name);
        let sum = json(&dir.join("summary.json"));
        let n = eval.len() as u64;
        let idc = eval.values().filter(|&&p| p >= threshold).count() as u64;
        assert_eq!(sum["tissue_tiles"], n, "{name}");
        assert_eq!(sum["idc_tiles"], idc, "{name}");
        assert_eq!(sum["grid"]["level"], level, "{name}");
        let tiles = sum["tiles"].as_u64().unwrap();
        assert_eq!(
            sum["background_tiles"].as_u64().unwrap(),
            tiles - n,
            "{name}"
        );
        // A tile is a patch: 50 px at 4 µm, 0.04 mm².
        let number = |k: &str| sum[k].as_f64().unwrap();
        let per_second = tiles as f64 / number("seconds");
        assert!(
            (number("tiles_per_second") / per_second - 1.0).abs() < 1e-9,
            "{sum}"
        );
        assert!(
            (number("idc_area_mm2") - idc as f64 * 0.04).abs() < 1e-9,
            "{sum}"
        );
        assert!(
            (number("tissue_area_mm2") - n as f64 * 0.04).abs() < 1e-9,
            "{sum}"
        );
        // The regions cover the centre of every positive tile and of no other tile.
        let geo = json(&dir.join("idc.geojson"));
        let features = geo["features"].as_array().unwrap();
        assert!(!features.is_empty());
        assert_eq!(features[0]["properties"]["classification"]["name"], "IDC");
        let (cols, rows) = (
            sum["grid"]["cols"].as_u64().unwrap(),
            sum["grid"]["rows"].as_u64().unwrap(),
        );
        let side = 50.0 * k as f64;
        for c in 0..cols {
            for r in 0..rows {
                let at = ((c * 50) as i64, (r * 50) as i64);
                let positive = eval.get(&at).is_some_and(|&p| p >= threshold);
                let (x, y) = ((c as f64 + 0.5) * side, (r as f64 + 0.5) * side);
                assert_eq!(
                    in_regions(features, x, y),
                    positive,
                    "{name}: tile {c}, {r}"
                );
            }
        }
        // At the default thumbnail side (2048 px) a tile takes 2048 / the longer count of tiles
        // pixels, up to its own 50: the picture and its tinted copy side by side.
        let cell = (2048 / cols.max(rows)).min(50) as u32;
        let heatmap = image::open(dir.join("heatmap.png")).unwrap();
        assert!(
            heatmap.width() >= 2 * cols as u32 * cell && heatmap.height() > rows as u32 * cell,
            "{name}: {}x{} for {cols}x{rows} tiles",
            heatmap.width(),
            heatmap.height()
        );
        assert_eq!(
            sum["patch"]["source"], "from the model's metadata",
            "{name}"
        );
    }
    // Neighbour context on the tile grid is the same as on the patches' coordinates.
    let eval = eval_probs(&patient, &onnx, t, &["--context"]);
    let ctx = with_context(&native, &onnx, t, "context");
    close(&slide_probs(&ctx.join("native"), 1), &eval, "context");
    // The same run twice gives the same files (the summary's timing aside).
    let again = with_context(&native, &onnx, t, "again");
    for f in ["tiles.csv", "idc.geojson", "heatmap.png"] {
        assert_eq!(
            std::fs::read(ctx.join("native").join(f)).unwrap(),
            std::fs::read(again.join("native").join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn bad_slides_are_named_and_the_good_one_is_still_done() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let onnx = model(t);
    let synth = t.join("synth");
    datasets::testdata::small_synth(&synth, 1, 40.0);
    let patient = std::fs::read_dir(&synth)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let good = t.join("good.tif");
    make_slide(&["patches", s(&patient), s(&good)]);
    let truncated = t.join("truncated.tif");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let text = t.join("notes.svs");
    std::fs::write(&text, "not a slide\n").unwrap();
    let unscaled = t.join("unscaled.tif");
    make_slide(&["patches", s(&patient), s(&unscaled), "--no-scale"]);
    let absurd = t.join("absurd.tif");
    make_slide(&["patches", s(&patient), s(&absurd), "--mpp", "1e-4"]);
    // 0.25 x 0.26 µm: 4% apart, over the 1% allowed (and under 0.01 / 0.26, 3.8%).
    let nonsquare = t.join("nonsquare.tif");
    make_slide(&[
        "patches",
        s(&patient),
        s(&nonsquare),
        "--mpp",
        "0.25",
        "--mpp-y",
        "0.26",
    ]);
    let blank = t.join("blank.tif");
    make_slide(&["blank", s(&blank), "--width", "400", "--height", "300"]);
    // Aperio's MPP field, which OpenSlide passes on whatever it says: 0 and inf are no scale.
    let [zero, infinite] = ["0", "inf"].map(|mpp| {
        let path = t.join(format!("aperio-{mpp}.svs"));
        make_slide(&[
            "blank",
            s(&path),
            "--width",
            "400",
            "--height",
            "300",
            "--aperio-mpp",
            mpp,
        ]);
        path
    });
    let missing = t.join("missing.svs");
    let out = t.join("slides");
    let slides = [
        &truncated, &text, &good, &unscaled, &absurd, &nonsquare, &blank, &zero, &infinite,
        &missing,
    ];
    // `runtime slide` on the CPU into `out`: the slides, and any flags after them.
    let slide = |given: &[&str]| {
        let mut args = vec!["slide"];
        args.extend(given);
        args.extend(["--model", s(&onnx), "--ep", "cpu", "--out", s(&out)]);
        exec("runtime", &args, t)
    };
    let ran: Ran = slide(&slides.map(|p| s(p)));
    let err = ran.fails_with("9 of 10 slides could not be done");
    for (slide, why) in [
        (&truncated, "OpenSlide cannot read it"),
        (&text, "not a slide format"),
        (&unscaled, "pass --mpp"),
        (&absurd, "its scale is wrong"),
        (&nonsquare, "pixels are not square (0.25 x 0.26 µm)"),
        (&blank, "no tissue"),
        (&zero, "does not say its scale"),
        (&infinite, "does not say its scale"),
        (&missing, "no such file"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(s(slide)))
            .unwrap_or_else(|| panic!("{} not named in:\n{err}", slide.display()));
        assert!(line.contains(why), "{why:?} not in {line:?}");
    }
    assert!(ran.stdout.contains(s(&good)), "{}", ran.stdout);
    // Only the good slide's folder, whole; nothing else, no temp files.
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["good"]);
    let mut files: Vec<String> = std::fs::read_dir(out.join("good"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["heatmap.png", "idc.geojson", "summary.json", "tiles.csv"]
    );
    // A folder of someone's own where the slide's would go is refused before any work, and
    // left as it is; an earlier result's folder is replaced.
    std::fs::write(out.join("good/notes.txt"), "mine").unwrap();
    let ran = slide(&[s(&good)]);
    let err = ran.fails_with("1 of 1 slides could not be done");
    assert!(
        err.contains("holds notes.txt, which `runtime slide` does not write"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("good/notes.txt")).unwrap(), b"mine");
    assert!(out.join("good/tiles.csv").is_file());
    std::fs::remove_file(out.join("good/notes.txt")).unwrap();
    slide(&[s(&good)]).ok();
    // The unscaled slide with --mpp is done, as the error said.
    slide(&[s(&unscaled), "--mpp", "4"]).ok();
    assert_eq!(
        std::fs::read(out.join("good/tiles.csv")).unwrap(),
        std::fs::read(out.join("unscaled/tiles.csv")).unwrap()
    );
    // Without OpenSlide: the error says how to get it.
    let ran = exec(
        "runtime",
        &[
            "slide",
            s(&good),
            "--openslide-lib",
            "/nonexistent/libopenslide.so.1",
            "--model",
            s(&onnx),
        ],
        t,
    );
    ran.fails_with("pip install openslide-bin");
}

/// A copy of the binary far from the project finds OpenSlide through `OPENSLIDE_LIB` (an empty
/// one is no setting) or through the `openslide_bin` package of the `python3` on PATH.
#[test]
fn a_far_copy_finds_openslide_by_its_variable_or_python() {
    let tmp = tempfile::tempdir().unwrap();
    let far = tmp.path().join("runtime");
    std::fs::copy(common::bin("runtime"), &far).unwrap();
    let venv = python()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap();
    let lib = std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .flatten()
        .map(|py| {
            py.path()
                .join("site-packages/openslide_bin/libopenslide.so.1")
        })
        .find(|p| p.is_file())
        .expect("make venv installs openslide-bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![venv.join("bin")];
    dirs.extend(std::env::split_paths(&path));
    let with_venv_python = std::env::join_paths(dirs).unwrap();
    // Past OpenSlide, the missing model is the error: that OpenSlide was found.
    let slide = |openslide_lib: &std::ffi::OsStr, path: &std::ffi::OsStr| {
        let o = Command::new(&far)
            .args(["slide", "x.svs", "--model", "missing.onnx"])
            .current_dir(tmp.path())
            .env("OPENSLIDE_LIB", openslide_lib)
            .env("PATH", path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let found =
        |err: &str| !err.contains("no OpenSlide library found") && err.contains("missing.onnx");
    let err = slide(lib.as_os_str(), &path);
    assert!(found(&err), "OPENSLIDE_LIB={}: {err}", lib.display());
    let err = slide("".as_ref(), &with_venv_python);
    assert!(found(&err), "python3 with openslide-bin on PATH: {err}");
    assert!(!err.contains("OPENSLIDE_LIB points to"), "{err}");
}

/// A tile's pixels: blocks of a whole-number ratio are averaged and rounded to the nearest
/// value; other sides (smaller, but not a whole ratio) go through the triangle filter.
#[test]
fn tiles_are_resampled_by_rounded_block_means_or_the_triangle_filter() {
    use image::{Rgb, RgbImage, imageops};
    use runtime::slide::grid::resample;
    // 2 x 2 blocks of 10, 11, 11, 11: a mean of 10.75, which rounds to 11.
    let big = RgbImage::from_fn(4, 4, |x, y| {
        let v = if x % 2 == 0 && y % 2 == 0 { 10 } else { 11 };
        Rgb([v, v + 100, v + 200])
    });
    assert_eq!(
        resample(big, 2),
        RgbImage::from_pixel(2, 2, Rgb([11, 111, 211]))
    );
    let ramp = RgbImage::from_fn(20, 20, |x, y| Rgb([(x * 12) as u8, (y * 12) as u8, 9]));
    let filtered = imageops::resize(&ramp, 15, 15, imageops::FilterType::Triangle);
    assert_eq!(resample(ramp, 15), filtered);
}

/// Background is bright grey glass: a pixel is tissue when its channels' mean is under 220 (even
/// grey) or they spread 25 or more (even bright).
#[test]
fn tissue_is_dark_or_coloured_pixels() {
    use image::{Rgb, RgbImage};
    use runtime::slide::grid::tissue_fraction;
    for (pixel, tissue) in [
        ([100, 100, 100], true),  // dark grey
        ([219, 219, 220], true),  // mean 219
        ([220, 220, 220], false), // mean 220, grey
        ([250, 222, 240], true),  // bright, spread 28
        ([250, 226, 240], false), // bright, spread 24
    ] {
        let img = RgbImage::from_pixel(2, 2, Rgb(pixel));
        let want = if tissue { 1.0 } else { 0.0 };
        assert_eq!(tissue_fraction(&img), want, "{pixel:?}");
    }
}
