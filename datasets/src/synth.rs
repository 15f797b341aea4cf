//! `datasets synth`: an IDC-like dataset made offline, in the Kaggle layout and naming
//! (`<out>/<patient>/<class>/<patient>_idx5_x<X>_y<Y>_class<C>.png`).
//!
//! Each patient is a slide: a tissue mask on a 50-pixel grid with one to three IDC regions.
//! Patches are rendered as H&E by Beer-Lambert stain mixing (pink eosin stroma, purple
//! hematoxylin nuclei) with per-patient stain variation. IDC patches have more, larger, darker,
//! irregular, clustered nuclei and less fat; the look blends across region borders and a few
//! patches are look-alikes of the other class (lymphocyte-rich stroma, low-grade IDC), so a CNN
//! learns the signal well but not perfectly. Tiles cut by the slide edge are smaller than 50x50.

use crate::patch::PatchName;
use crate::rng::Rng;
use anyhow::{Context, Result, bail};
use common::fsutil::{
    first_foreign, remove_stale_siblings, replace_folder, temp_sibling, write_atomic,
};
use common::text::Shown;
use image::RgbImage;
use rayon::prelude::*;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Marker written into a synthetic tree: what made it (so a rerun can reuse it).
pub const MARKER: &str = ".synth.json";
/// The most patients, and the largest mean of patches per patient, a set may have.
pub const MAX_PATIENTS: usize = 100_000;
pub const MAX_MEAN_PATCHES: f64 = 100_000.0;
pub const PATCH: u32 = 50;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SynthOptions {
    pub patients: usize,
    pub seed: u64,
    /// Mean patches per patient (the Kaggle set has 277,524 / 279 = 995).
    pub mean_patches: f64,
    #[serde(skip)]
    pub out: PathBuf,
    #[serde(skip)]
    pub force: bool,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            patients: 20,
            seed: 42,
            mean_patches: 995.0,
            out: PathBuf::from("datasets/orig"),
            force: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Made,
    UpToDate,
}

#[derive(Debug, Clone)]
pub struct SynthReport {
    pub outcome: Outcome,
    pub patients: usize,
    pub patches: usize,
    pub idc: usize,
    pub edge_crops: usize,
}

/// One tile of a slide.
#[derive(Debug, Clone)]
pub struct Tile {
    pub name: PatchName,
    pub width: u32,
    pub height: u32,
    /// How IDC-like the tissue looks, 0..1 (blends across region borders).
    pub look: f64,
}

impl Tile {
    /// The value between a healthy tile's and an IDC tile's that the tile's look gives.
    fn mix(&self, healthy: f64, idc: f64) -> f64 {
        healthy + (idc - healthy) * self.look
    }
}

/// A patient's slide: stain and tiles, fully determined by (seed, patient index).
#[derive(Debug, Clone)]
pub struct Slide {
    pub patient: String,
    pub stain: Stain,
    pub tiles: Vec<Tile>,
}

/// Optical densities per unit stain (RGB) and strengths, jittered per patient.
#[derive(Debug, Clone, Copy)]
pub struct Stain {
    pub hematoxylin: [f32; 3],
    pub eosin: [f32; 3],
    pub h_strength: f32,
    pub e_strength: f32,
}

impl Stain {
    /// The reference H&E vectors and strengths, jittered.
    fn draw(rng: &mut Rng) -> Stain {
        let jitter = |rng: &mut Rng, v: [f32; 3]| v.map(|c| c * rng.range(0.85, 1.15) as f32);
        Stain {
            hematoxylin: jitter(rng, [0.65, 0.70, 0.29]),
            eosin: jitter(rng, [0.07, 0.99, 0.11]),
            h_strength: rng.range(0.75, 1.25) as f32,
            e_strength: rng.range(0.7, 1.3) as f32,
        }
    }
}

/// Where a slide's tissue and IDC regions lie on its tile grid.
struct Layout {
    cols: i64,
    rows: i64,
    /// IDC regions: centre (column, row) and radius, in tiles.
    centres: Vec<(f64, f64, f64)>,
    /// The tissue outline's wobble: phase and amplitude.
    wobble: (f64, f64),
    /// Pixels cut off the last column and row.
    cut: (u32, u32),
}

impl Layout {
    fn draw(rng: &mut Rng, mean_patches: f64) -> Layout {
        let n = (mean_patches * (1.0 + 0.35 * rng.normal()))
            .clamp(mean_patches * 0.15, mean_patches * 2.5);
        let aspect = rng.range(0.7, 1.4);
        let cols = ((n / 0.85 * aspect).sqrt().round() as i64).max(3);
        let rows = ((n / 0.85 / cols as f64).round() as i64).max(3);
        // IDC share varies by patient around the dataset's ~28%; some patients have almost none.
        let share = if rng.bool(0.1) {
            rng.range(0.0, 0.05)
        } else {
            (0.33 + 0.15 * rng.normal()).clamp(0.03, 0.75)
        };
        let blobs = 1 + rng.below(3) as usize;
        let area = share * n / blobs as f64;
        let radius = (area / std::f64::consts::PI).sqrt();
        let centres: Vec<(f64, f64, f64)> = (0..blobs)
            .map(|_| {
                (
                    rng.range(0.2, 0.8) * cols as f64,
                    rng.range(0.2, 0.8) * rows as f64,
                    radius * rng.range(0.8, 1.2),
                )
            })
            .collect();
        let wobble = (rng.range(0.0, std::f64::consts::TAU), rng.range(0.05, 0.15));
        // Most slides end on a tile boundary; some cut their last column or row short.
        let mut cut = || {
            if rng.bool(0.3) {
                1 + rng.below(49) as u32
            } else {
                0
            }
        };
        let cut = (cut(), cut());
        Layout {
            cols,
            rows,
            centres,
            wobble,
            cut,
        }
    }

    /// The tile at (`r`, `c`), when it holds tissue: a wobbly ellipse that touches the slide's
    /// right and bottom edges.
    fn tile(&self, rng: &mut Rng, patient: &str, r: i64, c: i64) -> Option<Tile> {
        let (cols, rows) = (self.cols, self.rows);
        let (dx, dy) = (
            (c as f64 + 0.5) / cols as f64 * 2.0 - 1.0,
            (r as f64 + 0.5) / rows as f64 * 2.0 - 1.0,
        );
        let angle = dy.atan2(dx);
        let (phase, amplitude) = self.wobble;
        if (dx * dx + dy * dy).sqrt() > 1.08 + amplitude * (3.0 * angle + phase).sin() {
            return None;
        }
        // Distance inside the nearest IDC region, in radii (> 0 inside).
        let depth = self
            .centres
            .iter()
            .map(|&(bx, by, br)| {
                1.0 - ((c as f64 - bx).powi(2) + (r as f64 - by).powi(2)).sqrt() / br
            })
            .fold(f64::NEG_INFINITY, f64::max);
        let class = u8::from(depth > 0.0);
        let mut look = 1.0 / (1.0 + (-depth * 5.0).exp()) + 0.12 * rng.normal();
        // Look-alikes of the other class: lymphocyte-rich stroma, low-grade IDC.
        if rng.bool(0.06) {
            look = if class == 1 {
                rng.range(0.15, 0.4)
            } else {
                rng.range(0.6, 0.85)
            };
        }
        let name = PatchName {
            patient: patient.to_string(),
            x: c as u32 * PATCH + 1,
            y: r as u32 * PATCH + 1,
            class,
        };
        Some(Tile {
            name,
            width: if c == cols - 1 {
                PATCH - self.cut.0
            } else {
                PATCH
            },
            height: if r == rows - 1 {
                PATCH - self.cut.1
            } else {
                PATCH
            },
            look: look.clamp(0.0, 1.0),
        })
    }
}

impl Slide {
    pub fn plan(seed: u64, index: usize, mean_patches: f64) -> Slide {
        let mut rng = Rng::derive(seed, index as u64);
        let patient = (8900 + 28 * index).to_string();
        let stain = Stain::draw(&mut rng);
        let layout = Layout::draw(&mut rng, mean_patches);
        let mut tiles = Vec::new();
        for r in 0..layout.rows {
            for c in 0..layout.cols {
                tiles.extend(layout.tile(&mut rng, &patient, r, c));
            }
        }
        Slide {
            patient,
            stain,
            tiles,
        }
    }
}

/// Renders one tile as an H&E-like RGB image.
pub fn render(tile: &Tile, stain: &Stain, rng: &mut Rng) -> RgbImage {
    let (w, h) = (tile.width as usize, tile.height as usize);
    let (mut hema, mut eos) = stroma(tile, stain, rng);
    // Fat: white holes, mostly in healthy tissue.
    let holes = (tile.mix(4.0, 0.2) * rng.range(0.0, 2.0)) as usize;
    for _ in 0..holes {
        let (cx, cy, r) = (
            rng.range(0.0, w as f64),
            rng.range(0.0, h as f64),
            rng.range(4.0, 12.0),
        );
        stamp(
            &mut [&mut hema, &mut eos],
            w,
            h,
            (cx, cy, r, r, 0.0),
            |_| 0.0,
            true,
        );
    }
    nuclei(&mut hema, tile, stain, rng);
    let mut img = RgbImage::new(tile.width, tile.height);
    for (i, px) in img.pixels_mut().enumerate() {
        let noise = 0.04 * rng.normal() as f32;
        for ch in 0..3 {
            let od = hema[i] * stain.hematoxylin[ch] + (eos[i] + noise).max(0.0) * stain.eosin[ch];
            px[ch] = (245.0 * (-od * 1.6).exp()).round() as u8;
        }
    }
    img
}

/// The haematoxylin and eosin density planes of the tile's stroma: eosin with fibres along a
/// random direction, and cytoplasm (tumour tissue has a purple cast).
fn stroma(tile: &Tile, stain: &Stain, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let (w, h) = (tile.width as usize, tile.height as usize);
    let (dir, freq, phase) = (
        rng.range(0.0, std::f64::consts::PI),
        rng.range(0.15, 0.45),
        rng.range(0.0, std::f64::consts::TAU),
    );
    let (kx, ky) = ((dir.cos() * freq) as f32, (dir.sin() * freq) as f32);
    let e0 = tile.mix(0.32, 0.22) as f32 * stain.e_strength;
    let hema = vec![tile.mix(0.03, 0.22) as f32 * stain.h_strength; w * h];
    let mut eos = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let fibre = 0.5 + 0.5 * (kx * x as f32 + ky * y as f32 + phase as f32).sin();
            eos[y * w + x] = e0 * (0.35 + 0.65 * fibre * fibre);
        }
    }
    (hema, eos)
}

/// Nuclei into the haematoxylin plane: IDC has more, larger, darker, irregular and clustered
/// ones.
fn nuclei(hema: &mut Vec<f32>, tile: &Tile, stain: &Stain, rng: &mut Rng) {
    let (w, h) = (tile.width as usize, tile.height as usize);
    let count = (tile.mix(7.0, 42.0) * rng.range(0.75, 1.25)) as usize;
    let clusters: Vec<(f64, f64)> = (0..3)
        .map(|_| (rng.range(0.0, w as f64), rng.range(0.0, h as f64)))
        .collect();
    for _ in 0..count {
        let (cx, cy) = if rng.bool(tile.look * 0.7) {
            let (px, py) = clusters[rng.below(3) as usize];
            (px + 6.0 * rng.normal(), py + 6.0 * rng.normal())
        } else {
            (
                rng.range(-2.0, w as f64 + 2.0),
                rng.range(-2.0, h as f64 + 2.0),
            )
        };
        let size = tile.mix(1.8, 3.6) * rng.range(0.7, 1.3);
        let elong = 1.0 + tile.mix(0.1, 0.6) * rng.f64();
        let dark = (tile.mix(0.55, 0.85) * rng.range(0.85, 1.15)) as f32 * stain.h_strength;
        let shape = (
            cx,
            cy,
            size * elong,
            size / elong,
            rng.range(0.0, std::f64::consts::PI),
        );
        stamp(
            &mut [hema],
            w,
            h,
            shape,
            |d2| dark * (1.0 - 0.35 * d2 as f32),
            false,
        );
    }
}

/// Draws an ellipse (cx, cy, rx, ry, angle) into the density planes: `value(d2)` at normalised
/// squared distance d2 < 1, added (or, with `clear`, zeroing the planes).
fn stamp(
    planes: &mut [&mut Vec<f32>],
    w: usize,
    h: usize,
    (cx, cy, rx, ry, angle): (f64, f64, f64, f64, f64),
    value: impl Fn(f64) -> f32,
    clear: bool,
) {
    let (c, s) = (angle.cos(), angle.sin());
    let reach = rx.max(ry).ceil() as i64 + 1;
    let (x0, x1) = (
        (cx as i64 - reach).max(0),
        (cx as i64 + reach).min(w as i64 - 1),
    );
    let (y0, y1) = (
        (cy as i64 - reach).max(0),
        (cy as i64 + reach).min(h as i64 - 1),
    );
    for y in y0..=y1 {
        for x in x0..=x1 {
            let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
            let (u, v) = ((dx * c + dy * s) / rx, (-dx * s + dy * c) / ry);
            let d2 = u * u + v * v;
            if d2 < 1.0 {
                let i = y as usize * w + x as usize;
                for p in planes.iter_mut() {
                    p[i] = if clear { 0.0 } else { p[i] + value(d2) };
                }
            }
        }
    }
}

/// Makes the tree at `opts.out`, or reuses it when it was made with the same settings.
pub fn synth(opts: &SynthOptions, progress: &indicatif::ProgressBar) -> Result<SynthReport> {
    if opts.patients == 0 {
        bail!("--patients must be at least 1");
    }
    let planned = opts.patients as f64 * opts.mean_patches;
    if planned > MAX_PATCHES {
        bail!(
            "--patients {} x --mean-patches {} is {planned:.0} patches, over the {MAX_PATCHES:e} \
             synth makes: lower one of them",
            opts.patients,
            opts.mean_patches
        );
    }
    let marker = serde_json_string(opts);
    let slides: Vec<Slide> = (0..opts.patients)
        .into_par_iter()
        .map(|i| Slide::plan(opts.seed, i, opts.mean_patches))
        .collect();
    let count = |f: &dyn Fn(&Tile) -> bool| {
        slides
            .iter()
            .flat_map(|s| &s.tiles)
            .filter(|t| f(t))
            .count()
    };
    let report = |outcome| SynthReport {
        outcome,
        patients: slides.len(),
        patches: count(&|_| true),
        idc: count(&|t| t.name.class == 1),
        edge_crops: count(&|t| t.width < PATCH || t.height < PATCH),
    };
    if opts.out.exists() {
        match std::fs::read_to_string(opts.out.join(MARKER)) {
            Ok(old) if old == marker => return Ok(report(Outcome::UpToDate)),
            Ok(old) if opts.force => refuse_foreign(&opts.out, &old)?,
            Ok(_) => bail!(
                "{} holds a synthetic set made with other settings; pass --force to replace it",
                opts.out.shown()
            ),
            Err(_) => bail!(
                "{} exists and was not made by `datasets synth` (no {MARKER}); it is left untouched: choose another --out",
                opts.out.shown()
            ),
        }
    }
    remove_stale_siblings(&opts.out, "synth")?;
    let tmp = temp_sibling(&opts.out, "synth");
    progress.set_length(report(Outcome::Made).patches as u64);
    let result = slides
        .par_iter()
        .enumerate()
        .try_for_each(|(i, slide)| write_slide(&tmp, opts.seed, i, slide, progress));
    let result = result
        .and_then(|()| write_atomic(&tmp.join(MARKER), marker.as_bytes()))
        .and_then(|()| replace_folder(&tmp, &opts.out, "synthetic set"));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    progress.finish_and_clear();
    Ok(report(Outcome::Made))
}

fn write_slide(
    root: &Path,
    seed: u64,
    index: usize,
    slide: &Slide,
    progress: &indicatif::ProgressBar,
) -> Result<()> {
    for class in 0..2 {
        let dir = root.join(&slide.patient).join(class.to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.shown()))?;
    }
    // One stream per patient for pixels, separate from the plan's, so plans stay cheap.
    let mut rng = Rng::derive(seed ^ 0x5EED_F00D, index as u64);
    for tile in &slide.tiles {
        let img = render(tile, &slide.stain, &mut rng);
        let path = root
            .join(&slide.patient)
            .join(tile.name.class.to_string())
            .join(tile.name.to_string());
        std::fs::write(&path, common::png::encode(&img)?)
            .with_context(|| format!("cannot write {}", path.shown()))?;
        progress.inc(1);
    }
    Ok(())
}

/// Refuses to replace `out`, whose marker is `marker`, when it holds anything that set did not:
/// a Kaggle download unpacked into it, say. Its files are planned again from the marker's
/// settings (cheap: no pixels), so each of its paths is checked.
fn refuse_foreign(out: &Path, marker: &str) -> Result<()> {
    let Some(made) = made_by(marker) else {
        bail!(
            "{} was made by another version of `datasets synth` ({MARKER}), so what it holds \
             cannot be checked; it is left untouched: remove it yourself, or choose another --out",
            out.shown()
        );
    };
    let ours = |rel: &Path, is_dir: bool| match is_dir {
        true => made.folders.contains(rel),
        false => made.files.contains(rel),
    };
    if let Some(foreign) = first_foreign(out, &ours)? {
        bail!(
            "{} holds {}, which `datasets synth` did not make; it is left untouched: choose \
             another --out, or move that away",
            out.shown(),
            foreign.shown()
        );
    }
    Ok(())
}

/// The paths (relative) of a synthetic set: its folders and its files.
struct Made {
    folders: HashSet<PathBuf>,
    files: HashSet<PathBuf>,
}

/// Most patches a set may have (--patients x --mean-patches; a set this large is ~10 GB, its plan
/// alone gigabytes of memory): more is refused, and a marker that says more is one that cannot
/// be checked, not planned again for hours.
pub const MAX_PATCHES: f64 = 1e8;

/// Every path of the set `marker` records, or None when the marker is not this version's, or
/// its settings are ones `synth` refuses or too large to plan again.
fn made_by(marker: &str) -> Option<Made> {
    let v: serde_json::Value = serde_json::from_str(marker).ok()?;
    let patients = v["patients"]
        .as_u64()
        .filter(|&p| (1..=MAX_PATIENTS as u64).contains(&p))?;
    let mean = v["mean_patches"]
        .as_f64()
        .filter(|&m| m > 0.0 && m <= MAX_MEAN_PATCHES && patients as f64 * m <= MAX_PATCHES)?;
    let seed = v["seed"].as_u64()?;
    if v["generator"] != GENERATOR {
        return None;
    }
    let mut made = Made {
        folders: HashSet::new(),
        files: HashSet::from([PathBuf::from(MARKER)]),
    };
    for i in 0..patients as usize {
        let slide = Slide::plan(seed, i, mean);
        let patient = PathBuf::from(&slide.patient);
        for class in 0..2 {
            made.folders.insert(patient.join(class.to_string()));
        }
        for tile in &slide.tiles {
            let class = tile.name.class.to_string();
            made.files
                .insert(patient.join(class).join(tile.name.to_string()));
        }
        made.folders.insert(patient);
    }
    Some(made)
}

/// What `.synth.json` names as its maker.
const GENERATOR: &str = "idc-onnx datasets synth v2";

fn serde_json_string(opts: &SynthOptions) -> String {
    format!(
        "{{\"generator\":\"{GENERATOR}\",\"patients\":{},\"seed\":{},\"mean_patches\":{}}}\n",
        opts.patients, opts.seed, opts.mean_patches
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_deterministic_and_idc_like() {
        let a = Slide::plan(42, 3, 995.0);
        let b = Slide::plan(42, 3, 995.0);
        let names = |s: &Slide| s.tiles.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&b));
        assert_ne!(names(&a), names(&Slide::plan(43, 3, 995.0)), "seed ignored");
        // The same tiles render to the same pixels from the same stream.
        let render = |s: &Slide| {
            let mut rng = Rng::new(5);
            s.tiles
                .iter()
                .take(20)
                .map(|t| render(t, &s.stain, &mut rng).into_raw())
                .collect::<Vec<_>>()
        };
        assert_eq!(render(&a), render(&b));
        let shares: Vec<f64> = (0..40)
            .map(|i| {
                let s = Slide::plan(42, i, 995.0);
                s.tiles.iter().filter(|t| t.name.class == 1).count() as f64 / s.tiles.len() as f64
            })
            .collect();
        let total: usize = (0..40).map(|i| Slide::plan(42, i, 995.0).tiles.len()).sum();
        let mean_share = shares.iter().sum::<f64>() / shares.len() as f64;
        assert!(
            (0.18..0.4).contains(&mean_share),
            "mean IDC share {mean_share}"
        );
        assert!(
            shares.iter().cloned().fold(0.0, f64::max) - shares.iter().cloned().fold(1.0, f64::min)
                > 0.2
        );
        assert!(
            (700..1300).contains(&(total / 40)),
            "mean patches per patient {}",
            total / 40
        );
    }

    #[test]
    fn edge_tiles_are_cropped() {
        let s = Slide::plan(1, 0, 995.0);
        let edges: Vec<&Tile> = s
            .tiles
            .iter()
            .filter(|t| t.width < PATCH || t.height < PATCH)
            .collect();
        assert!(!edges.is_empty());
        let img = render(edges[0], &s.stain, &mut Rng::new(0));
        assert_eq!(img.dimensions(), (edges[0].width, edges[0].height));
    }

    #[test]
    fn idc_tiles_are_darker_on_average() {
        let s = Slide::plan(7, 2, 995.0);
        let mut rng = Rng::new(1);
        let mut mean = [(0.0, 0usize); 2];
        for t in s.tiles.iter().take(400) {
            let img = render(t, &s.stain, &mut rng);
            let m = img
                .pixels()
                .map(|p| p[0] as f64 + p[1] as f64 + p[2] as f64)
                .sum::<f64>()
                / img.len() as f64;
            mean[t.name.class as usize].0 += m;
            mean[t.name.class as usize].1 += 1;
        }
        let avg = |k: usize| mean[k].0 / mean[k].1.max(1) as f64;
        assert!(
            mean[1].1 > 0 && avg(1) < avg(0),
            "IDC {} vs healthy {}",
            avg(1),
            avg(0)
        );
    }
}
