//! The inference pipeline: list the images under a folder, decode + resize them on a worker pool
//! in fixed-size batches that flow through a bounded queue into the session, so decoding overlaps
//! inference and memory stays flat however many images there are. A file that cannot be used is
//! recorded with the reason and skipped; it never stops the run.

use crate::session::Model;
use anyhow::Result;
use datasets::preprocess::Preprocess;
use datasets::scan::{SortedWalk, folder_label, has_image_extension};
use datasets::{PatchName, Problem};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

/// One image to classify, with what its path says about it.
#[derive(Debug, Clone)]
pub struct Item {
    pub path: PathBuf,
    /// From the `0/`/`1/` folder, else the file name's `class<C>`.
    pub label: Option<u8>,
    pub name: Option<PatchName>,
}

/// The files under `dir` in sorted path order, lazily (one folder listing at a time): an image
/// becomes an `Item`, anything else a `Problem`.
pub fn items(dir: &Path) -> Result<impl Iterator<Item = Result<Item, Problem>> + Send + use<>> {
    let walk = SortedWalk::new(dir)?;
    Ok(walk.map(|path| {
        let path = path.map_err(|e| Problem {
            path: PathBuf::new(),
            reason: format!("{e:#}"),
        })?;
        if !has_image_extension(&path) {
            return Err(Problem {
                path,
                reason: "not an image file (expected .png/.jpg)".into(),
            });
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| PatchName::parse(n).ok());
        let label = folder_label(&path).or(name.as_ref().map(|n| n.class));
        Ok(Item { path, label, name })
    }))
}

/// How many images `items` will yield (for the progress bar); an error when there are none.
pub fn count(dir: &Path) -> Result<usize> {
    let (mut images, mut others) = (0, 0);
    for path in SortedWalk::new(dir)? {
        if has_image_extension(&path?) {
            images += 1;
        } else {
            others += 1;
        }
    }
    if images == 0 {
        return Err(no_images(dir, others));
    }
    Ok(images)
}

/// Every image under `dir`, and the files that are not images (in memory: for the commands that
/// need them all at once, such as `heatmap` and `bench`).
pub fn list(dir: &Path) -> Result<(Vec<Item>, Vec<Problem>)> {
    let (mut images, mut problems) = (Vec::new(), Vec::new());
    for item in items(dir)? {
        match item {
            Ok(item) => images.push(item),
            Err(problem) => problems.push(problem),
        }
    }
    if images.is_empty() {
        return Err(no_images(dir, problems.len()));
    }
    Ok((images, problems))
}

fn no_images(dir: &Path, others: usize) -> anyhow::Error {
    anyhow::anyhow!(
        "no images under {} ({others} other files): point to a folder of .png/.jpg patches",
        dir.display()
    )
}

#[derive(Debug, Clone, Copy)]
pub struct Pipeline {
    pub batch_size: usize,
    /// Decode threads (0 = one per core).
    pub decode_threads: usize,
}

/// IDC probabilities per item (`None` where the file could not be used), the problems, and timing.
pub struct Outcome {
    pub probs: Vec<Option<f32>>,
    pub problems: Vec<Problem>,
    pub seconds: f64,
}

impl Pipeline {
    /// The decode workers (`decode_threads`, or one per core).
    pub fn decode_pool(&self) -> Result<rayon::ThreadPool> {
        Ok(rayon::ThreadPoolBuilder::new()
            .num_threads(datasets::cli::threads_or_cores(self.decode_threads))
            .thread_name(|i| format!("decode-{i}"))
            .build()?)
    }

    /// Classifies `items` in order; `on_result(index, item, probability)` is called per image as
    /// its batch comes back, `index` counting the items taken from the iterator. Nothing is kept
    /// per image here: memory stays flat however many there are. Returns the problems (files that
    /// are not images, or could not be decoded) and the seconds taken.
    pub fn stream<I, F>(
        &self,
        model: &mut Model,
        items: I,
        progress: &indicatif::ProgressBar,
        mut on_result: F,
    ) -> Result<(Vec<Problem>, f64)>
    where
        I: Iterator<Item = Result<Item, Problem>> + Send,
        F: FnMut(usize, &Item, f32) -> Result<()>,
    {
        let start = Instant::now();
        let pre = model.preprocess;
        let pool = self.decode_pool()?;
        let bs = self.batch_size.max(1);
        let (tx, rx) = sync_channel::<Decoded>(2);
        let mut problems = Vec::new();
        std::thread::scope(|scope| -> Result<()> {
            scope.spawn(move || {
                let (mut chunk, mut not_images, mut taken) =
                    (Vec::with_capacity(bs), Vec::new(), 0);
                let mut items = items.peekable();
                while let Some(item) = items.next() {
                    match item {
                        Ok(item) => chunk.push(item),
                        Err(problem) => not_images.push(problem),
                    }
                    if chunk.len() == bs || items.peek().is_none() {
                        let mut decoded =
                            pool.install(|| decode(std::mem::take(&mut chunk), taken, &pre));
                        taken += decoded.items.len() + decoded.failed.len();
                        decoded.skipped += not_images.len();
                        decoded.failed.append(&mut not_images);
                        if tx.send(decoded).is_err() {
                            return;
                        }
                    }
                }
            });
            let mut full_batch_seen = false;
            for mut batch in rx {
                problems.extend(batch.failed);
                let n = batch.items.len();
                if n > 0 {
                    // A short batch after full ones (the last, or one with skipped files) is
                    // padded to the full size: ONNX Runtime then keeps one memory plan, where a
                    // second shape would add tens of MB to the peak.
                    let rows = if n < bs && full_batch_seen { bs } else { n };
                    full_batch_seen |= n == bs;
                    batch.images.resize(rows * pre.len(), 0.0);
                    let p = model.predict(&batch.images, rows)?;
                    for ((&i, item), p) in batch.indices.iter().zip(&batch.items).zip(p) {
                        on_result(i, item, p)?;
                    }
                }
                progress.inc((n + batch.skipped) as u64);
            }
            Ok(())
        })?;
        progress.finish_and_clear();
        Ok((problems, start.elapsed().as_secs_f64()))
    }

    /// `stream` over a list, collecting the probabilities by position.
    pub fn run(
        &self,
        model: &mut Model,
        items: &[Item],
        progress: &indicatif::ProgressBar,
    ) -> Result<Outcome> {
        let mut probs = vec![None; items.len()];
        let (problems, seconds) =
            self.stream(model, items.iter().cloned().map(Ok), progress, |i, _, p| {
                probs[i] = Some(p);
                Ok(())
            })?;
        Ok(Outcome {
            probs,
            problems,
            seconds,
        })
    }
}

struct Decoded {
    /// The decoded items, their positions in the stream, and their pixels.
    items: Vec<Item>,
    indices: Vec<usize>,
    images: Vec<f32>,
    failed: Vec<Problem>,
    skipped: usize,
}

/// Decodes a chunk in parallel straight into one batch buffer, then closes the gaps left by
/// files that failed; keeps the order of the chunk. `offset` is the chunk's first position.
fn decode(chunk: Vec<Item>, offset: usize, pre: &Preprocess) -> Decoded {
    let per = pre.len();
    let mut images = vec![0f32; chunk.len() * per];
    let errors: Vec<Option<String>> = images
        .par_chunks_mut(per)
        .zip(chunk.par_iter())
        .map(|(out, item)| pre.load_into(&item.path, out).err().map(|e| e.to_string()))
        .collect();
    let mut d = Decoded {
        items: Vec::with_capacity(chunk.len()),
        indices: Vec::with_capacity(chunk.len()),
        images: Vec::new(),
        failed: Vec::new(),
        skipped: 0,
    };
    for (k, (item, error)) in chunk.into_iter().zip(errors).enumerate() {
        match error {
            None => {
                let w = d.items.len();
                if w != k {
                    images.copy_within(k * per..(k + 1) * per, w * per);
                }
                d.items.push(item);
                d.indices.push(offset + k);
            }
            Some(reason) => {
                d.failed.push(Problem {
                    path: item.path,
                    reason,
                });
                d.skipped += 1;
            }
        }
    }
    images.truncate(d.indices.len() * per);
    d.images = images;
    d
}
