//! `runtime slide`: whole-slide images in (through OpenSlide), per slide a folder out with the
//! tissue tiles' probabilities, a heatmap, a summary with areas in mm², and the predicted IDC
//! regions as GeoJSON for QuPath. A slide that cannot be done is reported with its reason and
//! leaves nothing behind; the others are still done.

pub mod grid;
pub mod output;
pub mod regions;
pub mod stream;
pub mod thumbnail;

use crate::openslide::{self, Slide};
use crate::pipeline::Pipeline;
use crate::session::Model;
use crate::settings::{ContextChoice, Threshold};
use anyhow::{Result, bail};
use common::Shown;
use datasets::PatchName;
use datasets::scale::PatchScale;
use grid::{Grid, slide_scale};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;
use stream::Tile;

/// Everything a slide run needs, resolved once from flags, the model's metadata and defaults.
pub struct Settings {
    pub out: PathBuf,
    /// `--mpp`: the slides' level-0 microns per pixel, over what they say.
    pub mpp: Option<f64>,
    pub min_tissue: f64,
    /// Longest side of the thumbnail under the heatmap.
    pub thumbnail: u32,
    pub patch: PatchScale,
    /// Where `patch` came from.
    pub patch_source: String,
    pub threshold: Threshold,
    pub context: Option<ContextChoice>,
    pub pipeline: Pipeline,
}

/// What one slide gave (also its summary.json).
pub struct Done {
    pub dir: PathBuf,
    pub tissue: usize,
    pub idc: usize,
    pub tiles_per_second: f64,
}

/// The output folder of `slide`: its file name without the extension.
pub fn folder_name(slide: &Path) -> String {
    slide
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty() && !s.starts_with('.'))
        .unwrap_or_else(|| "slide".into())
}

/// Every slide in turn; one that fails is named with its reason, and the rest are still done.
pub fn run_all(
    slides: &[PathBuf],
    model: &mut Model,
    model_path: &Path,
    s: &Settings,
    lib: &'static openslide::Lib,
) -> Result<()> {
    println!(
        "{} on {} (ONNX Runtime {}); OpenSlide {} ({}); patches of {} px at {} µm/px ({}); threshold {} ({}){}",
        model_path.shown(),
        model.provider,
        model.ort_version,
        lib.version,
        lib.path.shown(),
        s.patch.pixels,
        s.patch.mpp,
        s.patch_source,
        s.threshold.value,
        s.threshold.source,
        s.context.as_ref().map_or(String::new(), |c| format!(
            "; neighbour context at weight {} ({})",
            c.weight, c.source
        ))
    );
    let mut names = std::collections::HashMap::new();
    let mut failed = 0;
    for path in slides {
        let name = folder_name(path);
        let result = match names.insert(name.clone(), path) {
            Some(first) => Err(anyhow::anyhow!(
                "{}: its output folder {} is also {}'s; rename one, or run them with different --out",
                path.shown(),
                s.out.join(&name).shown(),
                first.shown()
            )),
            None => run(
                lib,
                path,
                model,
                model_path,
                s,
                &common::cli::progress_bar(0, "tiles"),
            ),
        };
        match result {
            Ok(done) => println!(
                "{}: {} tissue tiles, {} predicted IDC ({:.1}%), {:.0} tiles/s -> {}",
                path.shown(),
                done.tissue,
                done.idc,
                100.0 * done.idc as f64 / done.tissue as f64,
                done.tiles_per_second,
                done.dir.shown()
            ),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e:#}");
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} slides could not be done (the reasons are above); the others were written",
            slides.len()
        );
    }
    Ok(())
}

/// Tiles, classifies and writes one slide.
pub fn run(
    lib: &'static openslide::Lib,
    path: &Path,
    model: &mut Model,
    model_path: &Path,
    s: &Settings,
    progress: &indicatif::ProgressBar,
) -> Result<Done> {
    let start = Instant::now();
    // Before the slide's minutes of work: a folder in the way would refuse them at the end.
    let dir = s.out.join(folder_name(path));
    output::check_replaceable(&dir)?;
    let slide = Slide::open(lib, path)?;
    let scale = slide_scale(&slide, s.mpp, path)?;
    let grid = Grid::new(&slide, &scale, s.patch, path)?;
    let total = u64::from(grid.cols) * u64::from(grid.rows);
    progress.set_length(total);
    let mut scanned = stream::classify(
        &slide,
        &grid,
        model,
        &s.pipeline,
        s.min_tissue,
        s.thumbnail,
        progress,
    )?;
    if scanned.tiles.is_empty() {
        bail!(
            "{}: no tissue: all {} tiles are background (under {} tissue); check the slide, or lower --min-tissue",
            path.shown(),
            scanned.background,
            s.min_tissue
        );
    }
    let with_neighbours = s
        .context
        .as_ref()
        .map(|c| in_context(&mut scanned.tiles, c.weight));
    let seconds = start.elapsed().as_secs_f64();
    let t = s.threshold.value;
    let tiles = &scanned.tiles;
    let idc = tiles.iter().filter(|x| f64::from(x.prob) >= t).count();
    let counts = Counts {
        total,
        tissue: tiles.len(),
        background: scanned.background,
        idc,
        with_neighbours,
        seconds,
    };
    let summary = summary(
        path, &slide, lib, &grid, &scale, s, &counts, model, model_path,
    );
    let title = title(path, tiles.len(), idc, grid.tile_mm2());
    let heatmap = scanned.thumbnail.heatmap(tiles, t, &title);
    let files = [
        (output::TILES_FILE, output::tiles_csv(&grid, tiles, t)?),
        (
            output::REGIONS_FILE,
            output::regions_geojson(&grid, tiles, t)?,
        ),
        (output::HEATMAP_FILE, common::png::encode(&heatmap)?),
        (output::SUMMARY_FILE, serde_json::to_vec_pretty(&summary)?),
    ];
    output::write_folder(&dir, &files)?;
    Ok(Done {
        dir,
        tissue: tiles.len(),
        idc,
        tiles_per_second: counts.tiles_per_second(),
    })
}

/// The heatmap's title: the slide's name, its tissue and IDC tiles and areas.
fn title(path: &Path, tissue: usize, idc: usize, tile_mm2: f64) -> String {
    format!(
        "{}: {tissue} tissue tiles, {idc} predicted IDC ({:.1}%, {:.2} of {:.2} mm²)",
        path.file_name().unwrap_or_default().to_string_lossy(),
        100.0 * idc as f64 / tissue as f64,
        idc as f64 * tile_mm2,
        tissue as f64 * tile_mm2
    )
}

/// How many tiles of each kind a slide had, and how long it took.
struct Counts {
    total: u64,
    tissue: usize,
    background: u64,
    idc: usize,
    /// Tiles that had neighbours, when context was applied.
    with_neighbours: Option<usize>,
    seconds: f64,
}

impl Counts {
    fn tiles_per_second(&self) -> f64 {
        self.total as f64 / self.seconds.max(1e-9)
    }
}

/// `summary.json`: the slide, its scale and grid, the counts and areas, and how it was run.
#[allow(clippy::too_many_arguments)]
fn summary(
    path: &Path,
    slide: &Slide,
    lib: &openslide::Lib,
    grid: &Grid,
    scale: &grid::SlideScale,
    s: &Settings,
    c: &Counts,
    model: &Model,
    model_path: &Path,
) -> serde_json::Value {
    let mm2 = grid.tile_mm2();
    json!({
        "slide": path.shown().to_string(),
        "vendor": slide.property("openslide.vendor"),
        "openslide": lib.version,
        "level0": { "width": grid.width, "height": grid.height },
        "mpp": scale.mpp,
        "mpp_source": scale.source,
        "patch": { "pixels": s.patch.pixels, "mpp": s.patch.mpp, "microns": s.patch.microns(), "source": s.patch_source },
        "grid": grid,
        "tiles": c.total,
        "tissue_tiles": c.tissue,
        "background_tiles": c.background,
        "min_tissue": s.min_tissue,
        "idc_tiles": c.idc,
        "tissue_area_mm2": c.tissue as f64 * mm2,
        "idc_area_mm2": c.idc as f64 * mm2,
        "idc_share": c.idc as f64 / c.tissue as f64,
        "threshold": s.threshold,
        "context": s.context.as_ref().map(|x| json!({ "weight": x.weight, "source": x.source, "with_neighbours": c.with_neighbours })),
        "model": model_path.shown().to_string(),
        "provider": model.provider,
        "onnx_runtime": model.ort_version,
        "seconds": c.seconds,
        "tiles_per_second": c.tiles_per_second(),
    })
}

/// Neighbour context on the tile grid, as `evaluation::context` does it on patch coordinates
/// (tiles one grid step apart are neighbours); returns how many tiles had neighbours.
fn in_context(tiles: &mut [Tile], weight: f64) -> usize {
    let step = evaluation::context::GRID;
    let names: Vec<PatchName> = tiles
        .iter()
        .map(|t| PatchName {
            patient: String::new(),
            x: t.col * step,
            y: t.row * step,
            class: 0,
        })
        .collect();
    let refs: Vec<_> = names.iter().map(Some).collect();
    let probs: Vec<f32> = tiles.iter().map(|t| t.prob).collect();
    let smoothed = evaluation::context::smooth(&refs, &probs, weight);
    for (t, p) in tiles.iter_mut().zip(smoothed.probs) {
        t.prob = p;
    }
    smoothed.with_neighbours
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slide's output folder is its file name without the extension, and never a hidden one.
    #[test]
    fn a_slide_gets_a_visible_folder_named_for_it() {
        for (slide, folder) in [
            ("in/CMU-1.svs", "CMU-1"),
            ("in/a.b.tiff", "a.b"),
            ("in/.svs", "slide"),
            ("in/.hidden.tiff", "slide"),
            ("/", "slide"),
        ] {
            assert_eq!(folder_name(Path::new(slide)), folder, "{slide}");
        }
    }

    /// The heatmap's title says what the slide gave (the test reads no picture's text).
    #[test]
    fn the_heatmap_title_counts_the_tiles_and_areas() {
        assert_eq!(
            title(Path::new("in/s.svs"), 8, 2, 0.25),
            "s.svs: 8 tissue tiles, 2 predicted IDC (25.0%, 0.50 of 2.00 mm²)"
        );
    }
}
