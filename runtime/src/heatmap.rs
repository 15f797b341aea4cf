//! `runtime heatmap`: every patch back on its slide from the x, y in its file name. One PNG per
//! patient: the tissue (patches tiled), the predicted IDC probability, and the true IDC regions
//! when labels exist, side by side.

use crate::pipeline::Item;
use anyhow::{Context, Result};
use datasets::fsutil::write_atomic;
use image::{Rgb, RgbImage};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Side of a patch on the slide (the dataset's grid step).
const STEP: u32 = 50;

/// Blue (0) -> yellow (0.5) -> red (1).
fn colour(p: f32) -> Rgb<u8> {
    let p = p.clamp(0.0, 1.0);
    let lerp = |a: f32, b: f32, t: f32| (a + (b - a) * t).round() as u8;
    if p < 0.5 {
        let t = p * 2.0;
        Rgb([
            lerp(49.0, 255.0, t),
            lerp(54.0, 230.0, t),
            lerp(149.0, 50.0, t),
        ])
    } else {
        let t = (p - 0.5) * 2.0;
        Rgb([
            lerp(255.0, 200.0, t),
            lerp(230.0, 20.0, t),
            lerp(50.0, 30.0, t),
        ])
    }
}

/// Writes `heatmap_<patient>.png` into `out` for every patient; returns the files written.
/// `scale` shrinks each 50-pixel patch to `50 * scale` pixels.
pub fn write(
    items: &[Item],
    probs: &[Option<f32>],
    out: &Path,
    scale: f32,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut by: BTreeMap<&str, Vec<(&Item, f32)>> = BTreeMap::new();
    for (item, p) in items.iter().zip(probs) {
        if let (Some(name), Some(p)) = (&item.name, p) {
            by.entry(name.patient.as_str())
                .or_default()
                .push((item, *p));
        }
    }
    let cell = ((STEP as f32 * scale).round() as u32).max(2);
    let mut written = Vec::new();
    for (patient, patches) in by {
        let (max_x, max_y) = patches.iter().fold((0, 0), |(mx, my), (i, _)| {
            let n = i.name.as_ref().expect("named");
            (mx.max(n.x / STEP), my.max(n.y / STEP))
        });
        let (w, h) = ((max_x + 1) * cell, (max_y + 1) * cell);
        let labelled = patches.iter().all(|(i, _)| i.label.is_some());
        let panels = if labelled { 3 } else { 2 };
        let gap = cell;
        let mut canvas =
            RgbImage::from_pixel(panels * w + (panels - 1) * gap, h, Rgb([255, 255, 255]));
        for (item, p) in &patches {
            let n = item.name.as_ref().expect("named");
            let (x0, y0) = ((n.x / STEP) * cell, (n.y / STEP) * cell);
            if let Ok(tile) = datasets::preprocess::read_rgb8(&item.path) {
                // Keep edge crops their true relative size.
                let (tw, th) = (
                    ((tile.width() * cell).div_ceil(STEP)).max(1),
                    ((tile.height() * cell).div_ceil(STEP)).max(1),
                );
                let small =
                    image::imageops::resize(&tile, tw, th, image::imageops::FilterType::Triangle);
                image::imageops::replace(&mut canvas, &small, x0 as i64, y0 as i64);
            }
            fill(&mut canvas, w + gap + x0, y0, cell, colour(*p));
            if labelled {
                let truth = if item.label == Some(1) {
                    Rgb([200, 20, 30])
                } else {
                    Rgb([215, 215, 215])
                };
                fill(&mut canvas, 2 * (w + gap) + x0, y0, cell, truth);
            }
        }
        let path = out.join(format!("heatmap_{patient}.png"));
        write_atomic(&path, &datasets::synth::encode_png(&canvas)?)?;
        written.push(path);
    }
    Ok(written)
}

fn fill(img: &mut RgbImage, x0: u32, y0: u32, size: u32, c: Rgb<u8>) {
    for y in y0..(y0 + size).min(img.height()) {
        for x in x0..(x0 + size).min(img.width()) {
            img.put_pixel(x, y, c);
        }
    }
}
