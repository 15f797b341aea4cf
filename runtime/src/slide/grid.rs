//! Where the tiles of a slide are: a grid of squares that each cover what a training patch
//! covered (`PatchScale`), read from the pyramid level that has at least the patch's detail,
//! resampled to the patch's side, and which of them hold tissue.

use crate::openslide::Slide;
use anyhow::{Result, bail};
use common::Shown;
use datasets::scale::{MPP, PatchScale};
use image::RgbImage;
use std::path::Path;

/// Most tiles a slide may have (a 100k x 100k slide at 0.25 µm/px cut for the Kaggle scale is
/// ~16k; this is far beyond any real slide).
pub const MAX_TILES: u64 = 50_000_000;

/// Level-0 sides beyond this are refused as absurd (real slides are under ~250k pixels).
pub const MAX_SIDE: u64 = 1 << 24;

/// A slide's scale may be this much coarser than the patches' and still be read at level 0.
const COARSER_TOLERANCE: f64 = 1.05;

/// The scale of a slide and where it came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlideScale {
    pub mpp: f64,
    pub source: String,
}

/// The slide's microns per pixel: `--mpp` when given, else OpenSlide's `openslide.mpp-x/-y`
/// (which must agree: non-square pixels are refused), else an error that says what to do.
pub fn slide_scale(slide: &Slide, flag: Option<f64>, path: &Path) -> Result<SlideScale> {
    if let Some(mpp) = flag {
        return Ok(SlideScale {
            mpp,
            source: "--mpp".into(),
        });
    }
    let read = |key: &str| {
        slide
            .property(key)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    match (read("openslide.mpp-x"), read("openslide.mpp-y")) {
        (Some(x), Some(y)) if (x - y).abs() <= 0.01 * x.max(y) => {
            let mpp = (x + y) / 2.0;
            if !MPP.contains(&mpp) {
                bail!(
                    "{}: the slide says {mpp} µm a pixel, outside [{}, {}]: its scale is wrong; pass --mpp",
                    path.shown(),
                    MPP.start(),
                    MPP.end()
                );
            }
            Ok(SlideScale {
                mpp,
                source: "the slide's openslide.mpp-x/-y".into(),
            })
        }
        (Some(x), Some(y)) => bail!(
            "{}: pixels are not square ({x} x {y} µm); pass --mpp to tile it anyway",
            path.shown()
        ),
        _ => bail!(
            "{}: the slide does not say its scale (no openslide.mpp-x/-y); pass --mpp <microns per pixel at level 0> \
             (about 0.25 at 40x, 0.5 at 20x)",
            path.shown()
        ),
    }
}

/// The tile grid of one slide.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Grid {
    /// Level-0 size of the slide.
    pub width: u64,
    pub height: u64,
    /// Level-0 pixels one tile spans (a patch's microns over the slide's µm per pixel).
    pub tile: f64,
    pub cols: u32,
    pub rows: u32,
    /// The level read, its downsample, and a tile's side there before resampling.
    pub level: u32,
    pub downsample: f64,
    pub read_side: u32,
    /// A tile's side once resampled: the patch's.
    pub side: u32,
    pub mpp: f64,
}

impl Grid {
    pub fn new(slide: &Slide, scale: &SlideScale, patch: PatchScale, path: &Path) -> Result<Grid> {
        let (width, height) = slide.dimensions(0)?;
        if width > MAX_SIDE || height > MAX_SIDE {
            bail!(
                "{}: {width} x {height} pixels is beyond any slide (limit {MAX_SIDE} a side)",
                path.shown()
            );
        }
        let tile = patch.microns() / scale.mpp;
        // The level-0 pixels per patch pixel; a level whose downsample is at most this still
        // has the patch's detail.
        let wanted = tile / f64::from(patch.pixels);
        if wanted * COARSER_TOLERANCE < 1.0 {
            bail!(
                "{}: the slide ({} µm/px at level 0, {}) is coarser than the model's patches ({} µm/px): \
                 it lacks the detail the model was trained on",
                path.shown(),
                scale.mpp,
                scale.source,
                patch.mpp
            );
        }
        let mut level = 0;
        let mut downsample = 1.0;
        for l in 0..slide.levels()? {
            let d = slide.downsample(l)?;
            if d <= wanted * (1.0 + 1e-6) && d >= downsample {
                (level, downsample) = (l, d);
            }
        }
        let read_side = ((tile / downsample).round() as u32).max(1);
        let cols = (width as f64 / tile).ceil() as u64;
        let rows = (height as f64 / tile).ceil() as u64;
        if cols.saturating_mul(rows) > MAX_TILES || read_side > 16 * 1024 {
            bail!(
                "{}: {cols} x {rows} tiles of {read_side} px is beyond any slide (limit {MAX_TILES} tiles); \
                 check the scale ({} µm/px from {})",
                path.shown(),
                scale.mpp,
                scale.source
            );
        }
        Ok(Grid {
            width,
            height,
            tile,
            cols: cols as u32,
            rows: rows as u32,
            level,
            downsample,
            read_side,
            side: patch.pixels,
            mpp: scale.mpp,
        })
    }

    /// Level-0 top-left corner of the tile at (`col`, `row`); tile edges are the rounded
    /// multiples of `tile`, so neighbours share their edge.
    pub fn origin(&self, col: u32, row: u32) -> (i64, i64) {
        (self.edge(col), self.edge(row))
    }

    /// Level-0 coordinate of grid line `i`.
    pub fn edge(&self, i: u32) -> i64 {
        (f64::from(i) * self.tile).round() as i64
    }

    /// Area of one tile in mm².
    pub fn tile_mm2(&self) -> f64 {
        (self.tile * self.mpp / 1000.0).powi(2)
    }

    /// The tile at (`col`, `row`), at the patch's side.
    pub fn read(&self, slide: &Slide, col: u32, row: u32) -> Result<RgbImage> {
        let (x, y) = self.origin(col, row);
        let img = slide.read(x, y, self.level, self.read_side, self.read_side)?;
        Ok(resample(img, self.side))
    }
}

/// `img` (square) at `side` x `side`: unchanged at that side, the mean of each block for a
/// whole-number ratio (so a slide scanned finer gives back exactly the averaged pixels), else
/// the triangle filter (which averages over each output pixel's footprint when shrinking).
pub fn resample(img: RgbImage, side: u32) -> RgbImage {
    let from = img.width();
    if from == side {
        return img;
    }
    if from > side && from.is_multiple_of(side) {
        let k = from / side;
        let n = k * k;
        return RgbImage::from_fn(side, side, |x, y| {
            let mut sum = [0u32; 3];
            for dy in 0..k {
                for dx in 0..k {
                    let p = img.get_pixel(x * k + dx, y * k + dy);
                    for c in 0..3 {
                        sum[c] += u32::from(p[c]);
                    }
                }
            }
            image::Rgb(sum.map(|s| ((s + n / 2) / n) as u8))
        });
    }
    image::imageops::resize(&img, side, side, image::imageops::FilterType::Triangle)
}

/// A pixel is background (glass) when it is bright and grey: mean of its channels at least
/// this, and max - min under `GREY_SPREAD`.
const BRIGHT: u32 = 220;
const GREY_SPREAD: u8 = 25;

/// The share of `img`'s pixels that are not background. Over the 15,886 whole 50x50 real
/// patches of ../shared/data it is at least 0.04 (0.83 median): the Kaggle patches were cut
/// where there is tissue, and `DEFAULT_MIN_TISSUE` keeps every one of them.
pub fn tissue_fraction(img: &RgbImage) -> f32 {
    let pixels = img.width() as usize * img.height() as usize;
    if pixels == 0 {
        return 0.0;
    }
    let tissue = img
        .pixels()
        .filter(|p| {
            let [r, g, b] = p.0;
            let mean = (u32::from(r) + u32::from(g) + u32::from(b)) / 3;
            let spread = r.max(g).max(b) - r.min(g).min(b);
            mean < BRIGHT || spread >= GREY_SPREAD
        })
        .count();
    tissue as f32 / pixels as f32
}

/// A tile with less tissue than this is background, not classified.
pub const DEFAULT_MIN_TISSUE: f64 = 0.02;

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn whole_ratio_resampling_averages_blocks_exactly() {
        let small = RgbImage::from_fn(5, 5, |x, y| Rgb([(x * 40) as u8, (y * 50) as u8, 7]));
        // Each pixel repeated 4 x 4: the blocks' mean is the pixel again.
        let big = RgbImage::from_fn(20, 20, |x, y| *small.get_pixel(x / 4, y / 4));
        assert_eq!(resample(big, 5), small);
        assert_eq!(resample(small.clone(), 5), small);
        assert_eq!(resample(small, 3).dimensions(), (3, 3));
    }

    #[test]
    fn white_and_grey_glass_is_background_and_stain_is_tissue() {
        let glass = RgbImage::from_pixel(10, 10, Rgb([236, 234, 238]));
        assert_eq!(tissue_fraction(&glass), 0.0);
        let mut img = RgbImage::from_pixel(10, 10, Rgb([255, 255, 255]));
        for x in 0..10 {
            img.put_pixel(x, 0, Rgb([230, 160, 200])); // eosin pink: bright but coloured
            img.put_pixel(x, 1, Rgb([90, 60, 140])); // haematoxylin
        }
        assert!((tissue_fraction(&img) - 0.2).abs() < 1e-6);
    }
}
