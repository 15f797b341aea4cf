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
use datasets::preprocess::Preprocess;
use image::RgbImage;
use rayon::prelude::*;
use std::sync::mpsc::{SyncSender, sync_channel};

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

impl Batch {
    /// Adds a tile; true when that fills a batch of `size`.
    fn add(&mut self, at: (u32, u32, f32), input: &[f32], size: usize) -> bool {
        self.at.push(at);
        self.images.extend_from_slice(input);
        self.at.len() == size
    }
}

/// The tile indices `0..total` in runs of `size` (the last may be shorter): one run is read
/// at a time, which bounds the reader's memory.
fn runs(total: u64, size: u64) -> impl Iterator<Item = std::ops::Range<u64>> {
    (0..total)
        .step_by(size as usize)
        .map(move |start| start..(start + size).min(total))
}

/// How tiles are read and set aside: the slide, its grid, the model's preprocessing, the tissue
/// share below which a tile is background, and the batch size.
struct Reader<'a> {
    slide: &'a Slide,
    grid: &'a Grid,
    pre: Preprocess,
    min_tissue: f64,
    batch_size: usize,
}

/// A tile as read: its place, tissue share, thumbnail cell, and model input when it is tissue.
type Read = (u32, u32, f32, RgbImage, Option<Vec<f32>>);

impl Reader<'_> {
    /// Reads `places` on the decode workers.
    fn read(
        &self,
        pool: &rayon::ThreadPool,
        thumb: &Thumbnail,
        places: &[(u32, u32)],
    ) -> Result<Vec<Read>> {
        pool.install(|| {
            places
                .par_iter()
                .map(|&(col, row)| {
                    let img = self.grid.read(self.slide, col, row)?;
                    let tissue = tissue_fraction(&img);
                    let small = thumb.cell_of(&img);
                    let input = (f64::from(tissue) >= self.min_tissue).then(|| {
                        let mut out = vec![0f32; self.pre.len()];
                        self.pre.to_chw(&self.pre.resize(img), &mut out);
                        out
                    });
                    Ok((col, row, tissue, small, input))
                })
                .collect()
        })
    }

    fn empty(&self) -> Batch {
        Batch {
            at: Vec::with_capacity(self.batch_size),
            images: Vec::with_capacity(self.batch_size * self.pre.len()),
        }
    }

    /// Every tile in row-major order, a batch of places at a time; full batches of tissue go to
    /// `tx` (a read error too, which ends it). Returns the thumbnail and the background count.
    fn produce(
        &self,
        pool: &rayon::ThreadPool,
        mut thumb: Thumbnail,
        tx: SyncSender<Result<Batch>>,
        progress: &indicatif::ProgressBar,
    ) -> (Thumbnail, u64) {
        let cols = u64::from(self.grid.cols);
        let total = cols * u64::from(self.grid.rows);
        let mut background = 0u64;
        let mut pending = self.empty();
        for run in runs(total, self.batch_size as u64) {
            let places: Vec<(u32, u32)> = run
                .map(|i| ((i % cols) as u32, (i / cols) as u32))
                .collect();
            let read = match self.read(pool, &thumb, &places) {
                Ok(read) => read,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return (thumb, background);
                }
            };
            for (col, row, tissue, small, input) in read {
                thumb.put(col, row, &small);
                let Some(input) = input else {
                    background += 1;
                    continue;
                };
                if pending.add((col, row, tissue), &input, self.batch_size) {
                    let full = std::mem::replace(&mut pending, self.empty());
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
    }
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
    pipeline.check_memory(&model.preprocess)?;
    let pool = pipeline.decode_pool()?;
    let reader = Reader {
        slide,
        grid,
        pre: model.preprocess,
        min_tissue,
        batch_size: pipeline.batch_size.max(1),
    };
    let (tx, rx) = sync_channel::<Result<Batch>>(2);
    let mut tiles = Vec::new();
    let (thumbnail, background) = std::thread::scope(|scope| -> Result<(Thumbnail, u64)> {
        let thumb = Thumbnail::new(grid, thumbnail_side);
        let producer = scope.spawn(|| reader.produce(&pool, thumb, tx, progress));
        let mut padded = Padded::new(reader.batch_size);
        let mut failed = None;
        for batch in rx.iter() {
            let result = batch.and_then(|mut b| {
                let probs = padded.predict(model, &mut b.images, b.at.len())?;
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
        let done = producer.join().expect("the tile reader does not panic");
        failed.map_or(Ok(done), Err)
    })?;
    progress.finish_and_clear();
    Ok(Scanned {
        tiles,
        background,
        thumbnail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_read_in_runs_of_a_batch() {
        let all = |total, size| {
            runs(total, size)
                .map(|r| (r.start, r.end))
                .collect::<Vec<_>>()
        };
        assert_eq!(all(5, 2), [(0, 2), (2, 4), (4, 5)]);
        assert_eq!(all(4, 2), [(0, 2), (2, 4)]);
        assert_eq!(all(3, 8), [(0, 3)]);
        assert_eq!(all(0, 2), []);
    }

    #[test]
    fn a_batch_is_full_at_its_size() {
        let mut batch = Batch {
            at: Vec::new(),
            images: Vec::new(),
        };
        assert!(!batch.add((0, 0, 0.5), &[1.0, 2.0], 2));
        assert!(batch.add((1, 0, 0.75), &[3.0, 4.0], 2));
        assert_eq!(batch.at, [(0, 0, 0.5), (1, 0, 0.75)]);
        assert_eq!(batch.images, [1.0, 2.0, 3.0, 4.0]);
    }
}
