//! Reading a slide tile by tile and classifying its tissue tiles: tiles are read in row-major
//! order on the decode workers, a batch at a time, background is set aside, and full batches of
//! tissue flow through a bounded queue into the session, so memory holds a few batches (and one
//! small record per tissue tile), never the slide.

use super::grid::{Grid, tissue_fraction};
use super::thumbnail::Thumbnail;
use crate::openslide::Slide;
use crate::pipeline::{Padded, Pipeline};
use crate::session::Model;
use anyhow::Result;
use rayon::prelude::*;
use std::sync::mpsc::sync_channel;

/// One tissue tile and what the model said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tile {
    pub col: u32,
    pub row: u32,
    pub tissue: f32,
    pub prob: f32,
}

/// What a pass over a slide gives.
pub struct Scanned {
    /// The tissue tiles in row-major order.
    pub tiles: Vec<Tile>,
    pub background: u64,
    pub thumbnail: Thumbnail,
}

/// Tissue tiles waiting for the model: their places, fractions and pixels.
struct Batch {
    at: Vec<(u32, u32, f32)>,
    images: Vec<f32>,
}

/// Classifies every tile of `grid` with at least `min_tissue` tissue.
pub fn classify(
    slide: &Slide,
    grid: &Grid,
    model: &mut Model,
    pipeline: &Pipeline,
    min_tissue: f64,
    thumbnail_side: u32,
    progress: &indicatif::ProgressBar,
) -> Result<Scanned> {
    let pre = model.preprocess;
    pipeline.check_memory(&pre)?;
    let pool = pipeline.decode_pool()?;
    let bs = pipeline.batch_size.max(1);
    let per = pre.len();
    let (tx, rx) = sync_channel::<Result<Batch>>(2);
    let mut tiles = Vec::new();
    let mut thumbnail = Thumbnail::new(grid, thumbnail_side);
    let mut background = 0u64;
    std::thread::scope(|scope| -> Result<()> {
        let producer = scope.spawn(move || {
            let mut thumb = Thumbnail::new(grid, thumbnail_side);
            let mut background = 0u64;
            let mut pending = Batch {
                at: Vec::with_capacity(bs),
                images: Vec::with_capacity(bs * per),
            };
            let total = u64::from(grid.cols) * u64::from(grid.rows);
            let mut next = 0u64;
            while next < total {
                let end = (next + bs as u64).min(total);
                let places: Vec<(u32, u32)> = (next..end)
                    .map(|i| {
                        (
                            (i % u64::from(grid.cols)) as u32,
                            (i / u64::from(grid.cols)) as u32,
                        )
                    })
                    .collect();
                next = end;
                let read: Result<Vec<_>> = pool.install(|| {
                    places
                        .par_iter()
                        .map(|&(col, row)| {
                            let img = grid.read(slide, col, row)?;
                            let tissue = tissue_fraction(&img);
                            let small = thumb.cell_of(&img);
                            let input = (f64::from(tissue) >= min_tissue).then(|| {
                                let mut out = vec![0f32; per];
                                pre.to_chw(&pre.resize(img), &mut out);
                                out
                            });
                            Ok((col, row, tissue, small, input))
                        })
                        .collect()
                });
                let read = match read {
                    Ok(read) => read,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return (thumb, background);
                    }
                };
                for (col, row, tissue, small, input) in read {
                    thumb.put(col, row, &small);
                    match input {
                        Some(input) => {
                            pending.at.push((col, row, tissue));
                            pending.images.extend_from_slice(&input);
                        }
                        None => background += 1,
                    }
                    if pending.at.len() == bs {
                        let full = std::mem::replace(
                            &mut pending,
                            Batch {
                                at: Vec::with_capacity(bs),
                                images: Vec::with_capacity(bs * per),
                            },
                        );
                        if tx.send(Ok(full)).is_err() {
                            return (thumb, background);
                        }
                    }
                }
                progress.inc(places.len() as u64);
            }
            if !pending.at.is_empty() {
                let _ = tx.send(Ok(pending));
            }
            (thumb, background)
        });
        let mut padded = Padded::new(bs);
        let mut failed = None;
        for batch in rx.iter() {
            let result = batch.and_then(|mut b| {
                let n = b.at.len();
                let probs = padded.predict(model, &mut b.images, n)?;
                tiles.extend(
                    b.at.iter()
                        .zip(probs)
                        .map(|(&(col, row, tissue), prob)| Tile {
                            col,
                            row,
                            tissue,
                            prob,
                        }),
                );
                Ok(())
            });
            if let Err(e) = result {
                failed = Some(e);
                break;
            }
        }
        drop(rx); // a producer still sending sees the end and stops
        (thumbnail, background) = producer.join().expect("the tile reader does not panic");
        failed.map_or(Ok(()), Err)
    })?;
    progress.finish_and_clear();
    Ok(Scanned {
        tiles,
        background,
        thumbnail,
    })
}
