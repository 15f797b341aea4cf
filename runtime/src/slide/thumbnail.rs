//! The slide's picture, built from the tiles as they are read (every tile, background too,
//! shrunk to a few pixels), and the heatmap drawn over it with its colour scale.

use super::grid::Grid;
use super::stream::Tile;
use crate::heatmap::colour;
use image::{Rgb, RgbImage};

/// Longest side of the thumbnail in pixels by default (a tile gets at least 1).
pub const DEFAULT_SIDE: u32 = 2048;

/// Opacity of the probability colour over the tissue.
const ALPHA: f32 = 0.55;

pub struct Thumbnail {
    /// Pixels a tile takes.
    pub cell: u32,
    pub img: RgbImage,
}

impl Thumbnail {
    /// A white thumbnail of at most `max_side` pixels a side (more when the grid has more tiles).
    pub fn new(grid: &Grid, max_side: u32) -> Thumbnail {
        let cell = (max_side / grid.cols.max(grid.rows).max(1)).clamp(1, grid.side);
        Thumbnail {
            cell,
            img: RgbImage::from_pixel(grid.cols * cell, grid.rows * cell, Rgb([255, 255, 255])),
        }
    }

    /// A tile shrunk to the thumbnail's cell.
    pub fn cell_of(&self, tile: &RgbImage) -> RgbImage {
        image::imageops::resize(
            tile,
            self.cell,
            self.cell,
            image::imageops::FilterType::Triangle,
        )
    }

    pub fn put(&mut self, col: u32, row: u32, small: &RgbImage) {
        image::imageops::replace(
            &mut self.img,
            small,
            i64::from(col * self.cell),
            i64::from(row * self.cell),
        );
    }

    /// The thumbnail | the same with each tissue tile tinted by its IDC probability (blue 0,
    /// yellow 0.5, red 1; predicted IDC outlined in black), and the colour scale under them.
    pub fn heatmap(&self, tiles: &[Tile], threshold: f64, title: &str) -> RgbImage {
        let (w, h) = self.img.dimensions();
        let gap = 16;
        let width = (2 * w + gap).max(360);
        let legend = 5 * (width / 100).clamp(12, 40);
        let mut out = RgbImage::from_pixel(width, h + legend, Rgb([255, 255, 255]));
        image::imageops::replace(&mut out, &self.img, 0, 0);
        image::imageops::replace(&mut out, &self.img, i64::from(w + gap), 0);
        let c = self.cell;
        for t in tiles {
            let tint = colour(t.prob);
            let idc = f64::from(t.prob) >= threshold;
            for dy in 0..c {
                for dx in 0..c {
                    let (x, y) = (w + gap + t.col * c + dx, t.row * c + dy);
                    let edge = c >= 4 && (dx == 0 || dy == 0 || dx == c - 1 || dy == c - 1);
                    let px = out.get_pixel_mut(x, y);
                    if idc && edge {
                        *px = Rgb([0, 0, 0]);
                    } else {
                        for k in 0..3 {
                            let v = f32::from(px[k]) * (1.0 - ALPHA) + f32::from(tint[k]) * ALPHA;
                            px[k] = v.round() as u8;
                        }
                    }
                }
            }
        }
        // The scale: 0 to 1 left to right, with a tick at the threshold; sized to the picture.
        let text = (width / 100).clamp(12, 40);
        let (x0, y0, bar) = (10, h + 3 * text, (width / 4).max(200));
        for x in 0..bar {
            let p = x as f32 / (bar - 1) as f32;
            for y in 0..text {
                out.put_pixel(x0 + x, y0 + y, colour(p));
            }
        }
        let tick = x0 + ((threshold.clamp(0.0, 1.0) * f64::from(bar - 1)).round() as u32);
        for y in y0 - text / 4..y0 + text + text / 4 {
            for dx in 0..(text / 8).max(1) {
                out.put_pixel(tick + dx, y, Rgb([0, 0, 0]));
            }
        }
        let labels = format!("P(IDC): 0 (blue) .. 0.5 (yellow) .. 1 (red); threshold {threshold}");
        // Without a font the picture is still whole; the legend's words are in the summary.
        let _ = evaluation::plot::draw_text(
            &mut out,
            10,
            h as i32 + text as i32 / 4,
            text,
            &[title, &labels],
        );
        out
    }
}
