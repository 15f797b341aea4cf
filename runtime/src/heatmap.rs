//! `runtime heatmap`: every patch back on its slide from the x, y in its file name. One PNG per
//! patient: the tissue (patches tiled), the predicted IDC probability, and the true IDC regions
//! when labels exist, side by side.

use crate::evaluate;
use crate::pipeline::{Item, Pipeline, Streamed};
use crate::session::Model;
use crate::settings::ContextChoice;
use anyhow::{Context, Result, bail};
use common::Shown;
use common::cli::progress_bar;
use common::fsutil::write_atomic;
use datasets::Problem;
use image::{Rgb, RgbImage};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Side of a patch on the slide (the dataset's grid step).
const STEP: u32 = 50;

/// Blue (0) -> yellow (0.5) -> red (1).
pub fn colour(p: f32) -> Rgb<u8> {
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

/// Most pixels a heatmap may have (~190 MB of RGB): a real slide at the default scale is ~8M.
pub const MAX_PIXELS: u64 = 64 << 20;

/// `probs` (of `items`; None for an image that could not be used) with neighbour context as
/// `choice` says (`evaluation::context`); returns what it did.
pub fn in_context(
    items: &[Item],
    probs: &mut [Option<f32>],
    choice: ContextChoice,
) -> evaluate::Context {
    let (used, p): (Vec<usize>, Vec<f32>) = probs
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|p| (i, p)))
        .unzip();
    let names: Vec<_> = used.iter().map(|&i| items[i].name.as_ref()).collect();
    let smoothed = evaluation::context::smooth(&names, &p, choice.weight);
    for (i, p) in used.into_iter().zip(smoothed.probs) {
        probs[i] = Some(p);
    }
    evaluate::Context {
        weight: choice.weight,
        source: choice.source,
        with_neighbours: smoothed.with_neighbours,
    }
}

/// The patches a heatmap run draws: those with a patch name (only a name's x, y places an image
/// on its slide), of the patients asked; and what was set aside, with why.
pub struct Selected {
    pub items: Vec<Item>,
    pub problems: Vec<Problem>,
    pub kaggle_copies: usize,
}

/// The named patches under `dir` of the patients in `only` (all when empty), at most
/// `max_patients` of them (the first by id).
pub fn select(dir: &Path, only: &[String], max_patients: Option<usize>) -> Result<Selected> {
    let mut listed = crate::pipeline::list(dir)?;
    // Only a patch name's x, y can place an image on its slide.
    let (mut items, unnamed): (Vec<_>, Vec<_>) =
        listed.images.into_iter().partition(|i| i.name.is_some());
    listed.problems.extend(unnamed.iter().map(|i| {
        Problem::new(
            &i.path,
            "not named <patient>_idx5_x<X>_y<Y>_class<C>.png: no place on a slide",
        )
    }));
    items.retain(|i| {
        i.name
            .as_ref()
            .is_some_and(|n| only.is_empty() || only.contains(&n.patient))
    });
    if let Some(max) = max_patients {
        let mut patients: Vec<String> = items
            .iter()
            .filter_map(|i| i.name.as_ref().map(|n| n.patient.clone()))
            .collect();
        patients.sort();
        patients.dedup();
        patients.truncate(max);
        items.retain(|i| {
            i.name
                .as_ref()
                .is_some_and(|n| patients.contains(&n.patient))
        });
    }
    if items.is_empty() {
        bail!(
            "no patches named <patient>_idx5_x<X>_y<Y>_class<C>.png under {} for the patients asked",
            dir.shown()
        );
    }
    Ok(Selected {
        items,
        problems: listed.problems,
        kaggle_copies: listed.kaggle_copies,
    })
}

/// Classifies the selected patches, applies neighbour context when asked, and writes one
/// heatmap per patient into `out`; prints what it wrote and what it skipped.
pub fn run(
    selected: Selected,
    model: &mut Model,
    pipeline: &Pipeline,
    context: Option<ContextChoice>,
    out: &Path,
    scale: f32,
    strict: bool,
) -> Result<()> {
    let mut outcome = pipeline.run(
        model,
        &selected.items,
        &progress_bar(selected.items.len() as u64, "heatmap"),
    )?;
    if let Some(choice) = context {
        let context = in_context(&selected.items, &mut outcome.probs, choice);
        println!("{}", context.line(outcome.probs.iter().flatten().count()));
    }
    let (files, refused) = write(&selected.items, &outcome.probs, out, scale)?;
    for f in &files {
        println!("{}", f.shown());
    }
    let streamed = Streamed {
        problems: [
            selected.problems,
            outcome.streamed.problems,
            refused.clone(),
        ]
        .concat(),
        kaggle_copies: selected.kaggle_copies,
        seconds: outcome.streamed.seconds,
    };
    print!("{}", evaluate::skipped_text(&streamed, 20));
    println!(
        "{} heatmaps (tissue | predicted IDC probability | true IDC) in {}; {} files skipped, {} patients refused",
        files.len(),
        out.shown(),
        streamed.skipped() - refused.len(),
        refused.len()
    );
    if strict && streamed.skipped() > 0 {
        bail!(
            "{} files or patients were skipped (--strict); they are listed above",
            streamed.skipped()
        );
    }
    if files.is_empty() {
        bail!("no heatmap could be made; the reasons are listed above");
    }
    Ok(())
}

/// Writes `heatmap_<patient>.png` into `out` for every patient; returns the files written and the
/// patients refused (with the reason: coordinates that would make an image over `MAX_PIXELS`).
/// `scale` shrinks each 50-pixel patch to `50 * scale` pixels.
pub fn write(
    items: &[Item],
    probs: &[Option<f32>],
    out: &Path,
    scale: f32,
) -> Result<(Vec<PathBuf>, Vec<Problem>)> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.shown()))?;
    let mut by: BTreeMap<&str, Vec<(&Item, f32)>> = BTreeMap::new();
    for (item, p) in items.iter().zip(probs) {
        if let (Some(name), Some(p)) = (&item.name, p) {
            by.entry(name.patient.as_str())
                .or_default()
                .push((item, *p));
        }
    }
    let cell = ((STEP as f32 * scale).round() as u32).max(2);
    let (mut written, mut refused) = (Vec::new(), Vec::new());
    for (patient, patches) in by {
        let path = out.join(format!("heatmap_{patient}.png"));
        let labelled = patches.iter().all(|(i, _)| i.label.is_some());
        let layout = match Layout::new(&patches, cell, if labelled { 3 } else { 2 }) {
            Ok(layout) => layout,
            Err(why) => {
                refused.push(Problem::new(
                    &path,
                    format!("patient {}: {why}", patient.shown()),
                ));
                continue;
            }
        };
        let mut canvas = RgbImage::from_pixel(layout.width, layout.height, Rgb([255, 255, 255]));
        for (item, p) in &patches {
            let (x0, y0) = layout.origin(item);
            if let Ok(tile) = datasets::preprocess::read_rgb8(&item.path) {
                // Keep edge crops their true relative size.
                let (tw, th) = (
                    ((tile.width().min(STEP) * cell).div_ceil(STEP)).max(1),
                    ((tile.height().min(STEP) * cell).div_ceil(STEP)).max(1),
                );
                let small =
                    image::imageops::resize(&tile, tw, th, image::imageops::FilterType::Triangle);
                image::imageops::replace(&mut canvas, &small, x0 as i64, y0 as i64);
            }
            fill(&mut canvas, layout.panel + x0, y0, cell, colour(*p));
            if labelled {
                let truth = if item.label == Some(1) {
                    Rgb([200, 20, 30])
                } else {
                    Rgb([215, 215, 215])
                };
                fill(&mut canvas, 2 * layout.panel + x0, y0, cell, truth);
            }
        }
        write_atomic(&path, &common::png::encode(&canvas)?)?;
        written.push(path);
    }
    Ok((written, refused))
}

/// Where a patient's patches go: the grid cells between the smallest and largest x, y of its
/// file names, side by side in `panels` panels.
struct Layout {
    min: (u32, u32),
    cell: u32,
    /// A panel's width plus the gap after it.
    panel: u32,
    width: u32,
    height: u32,
}

impl Layout {
    fn new(patches: &[(&Item, f32)], cell: u32, panels: u64) -> Result<Layout, String> {
        let grid = |i: &Item| {
            let n = i.name.as_ref().expect("named");
            (n.x / STEP, n.y / STEP)
        };
        let (mut lo, mut hi) = ((u32::MAX, u32::MAX), (0, 0));
        for (item, _) in patches {
            let (x, y) = grid(item);
            lo = (lo.0.min(x), lo.1.min(y));
            hi = (hi.0.max(x), hi.1.max(y));
        }
        // In u64: file names may hold any u32 coordinates.
        let cell64 = u64::from(cell);
        let w = (u64::from(hi.0 - lo.0) + 1) * cell64;
        let h = (u64::from(hi.1 - lo.1) + 1) * cell64;
        let width = panels * w + (panels - 1) * cell64;
        if width.saturating_mul(h) > MAX_PIXELS || width > u64::from(u32::MAX) / 2 {
            return Err(format!(
                "its patches span x {}..{} and y {}..{} (from the file names), which would make a {width}x{h} \
                 image, over the {MAX_PIXELS}-pixel limit; lower --scale, or check those file names",
                u64::from(lo.0) * u64::from(STEP),
                u64::from(hi.0) * u64::from(STEP),
                u64::from(lo.1) * u64::from(STEP),
                u64::from(hi.1) * u64::from(STEP),
            ));
        }
        Ok(Layout {
            min: lo,
            cell,
            panel: (w + cell64) as u32,
            width: width as u32,
            height: h as u32,
        })
    }

    /// The top-left pixel of an item's cell in the first panel.
    fn origin(&self, item: &Item) -> (u32, u32) {
        let n = item.name.as_ref().expect("named");
        (
            (n.x / STEP - self.min.0) * self.cell,
            (n.y / STEP - self.min.1) * self.cell,
        )
    }
}

fn fill(img: &mut RgbImage, x0: u32, y0: u32, size: u32, c: Rgb<u8>) {
    for y in y0..(y0 + size).min(img.height()) {
        for x in x0..(x0 + size).min(img.width()) {
            img.put_pixel(x, y, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image that could not be used (None) stays None and is no one's neighbour; the others
    /// get exactly what `evaluation::context::smooth` gives them without it.
    #[test]
    fn context_skips_unusable_images() {
        let item = |x: u32| Item {
            path: PathBuf::from(format!("p_idx5_x{x}_y1_class0.png")),
            label: Some(0),
            name: Some(datasets::PatchName {
                patient: "p".into(),
                x,
                y: 1,
                class: 0,
            }),
        };
        let items = [item(1), item(51), item(101)];
        let half = || ContextChoice {
            weight: 0.5,
            source: "test".into(),
        };
        let mut probs = [Some(0.9), None, Some(0.2)];
        assert_eq!(
            in_context(&items, &mut probs, half()).with_neighbours,
            0,
            "x 1 and 101 are two steps apart"
        );
        assert_eq!(probs, [Some(0.9), None, Some(0.2)]);
        let mut probs = [Some(0.9), Some(0.1), None];
        let names = [items[0].name.as_ref(), items[1].name.as_ref()];
        let want = evaluation::context::smooth(&names, &[0.9, 0.1], 0.5).probs;
        let c = in_context(&items, &mut probs, half());
        assert_eq!((c.with_neighbours, c.weight), (2, 0.5));
        assert_eq!(probs, [Some(want[0]), Some(want[1]), None]);
        assert_ne!(probs[0], Some(0.9));
    }
}
