//! The inference pipeline: list the images under a folder, decode + resize them on a worker pool
//! in fixed-size batches that flow through a bounded queue into the session, so decoding overlaps
//! inference and memory stays flat however many images there are. A file that cannot be used is
//! recorded with the reason and skipped; it never stops the run.

use crate::session::Model;
use anyhow::Result;
use common::Shown;
use datasets::preprocess::Preprocess;
use datasets::scan::{Repeat, SamePatch, SortedWalk, has_image_extension, label_of, patch_name};
use datasets::{PatchName, Problem};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

/// One image to classify, with what its path says about it.
#[derive(Debug, Clone)]
pub struct Item {
    pub path: PathBuf,
    /// From the `0/`/`1/` folder, else the file name's `class<C>` (they must agree).
    pub label: Option<u8>,
    pub name: Option<PatchName>,
}

/// What the walk finds: an image, a file that cannot be used, or Kaggle's duplicate copy of a
/// patch already seen (counted, like `datasets` does).
#[derive(Debug)]
pub enum Found {
    Image(Item),
    Problem(Problem),
    KaggleCopy,
}

/// The files under `dir` in sorted path order, lazily (one folder listing at a time), by the
/// rules `datasets` uses: the same walk, the same label rule (folder and file name must agree),
/// the same-patch rule (a second file for a patient's x, y is skipped and reported). Only the
/// (x, y) of each named patch is remembered: 8 bytes an image.
pub fn items(dir: &Path) -> Result<impl Iterator<Item = Found> + Send + use<>> {
    let mut seen = SamePatch::<()>::new(dir);
    Ok(SortedWalk::new(dir)?.map(move |path| {
        let path = match path {
            Ok(path) => path,
            Err(problem) => return Found::Problem(problem),
        };
        if !has_image_extension(&path) {
            return Found::Problem(Problem::new(
                &path,
                "not an image file (expected .png/.jpg)",
            ));
        }
        let name = patch_name(&path).ok();
        let label = match label_of(&path, name.as_ref()) {
            Ok(label) => label,
            Err(reason) => return Found::Problem(Problem::new(&path, reason)),
        };
        if let Some(n) = &name {
            match seen.check(n, &path, ()) {
                Repeat::New => {}
                Repeat::KaggleCopy(()) => return Found::KaggleCopy,
                Repeat::Collision(()) => {
                    return Found::Problem(Problem::new(
                        &path,
                        format!(
                            "same patch as an earlier file (patient {}, x {}, y {}); only the first is used",
                            n.patient.shown(),
                            n.x,
                            n.y
                        ),
                    ));
                }
            }
        }
        Found::Image(Item { path, label, name })
    }))
}

/// How many images `items` will yield at most (for the progress bar); an error when there are none.
pub fn count(dir: &Path) -> Result<usize> {
    let (mut images, mut others) = (0, 0);
    for path in SortedWalk::new(dir)? {
        match path {
            Ok(path) if has_image_extension(&path) => images += 1,
            _ => others += 1,
        }
    }
    if images == 0 {
        return Err(no_images(dir, others));
    }
    Ok(images)
}

/// Every image under `dir`, the problems, and the number of Kaggle duplicates (in memory: for
/// the commands that need them all at once, such as `heatmap` and `bench`).
pub fn list(dir: &Path) -> Result<Listed> {
    let mut listed = Listed::default();
    for found in items(dir)? {
        match found {
            Found::Image(item) => listed.images.push(item),
            Found::Problem(problem) => listed.problems.push(problem),
            Found::KaggleCopy => listed.kaggle_copies += 1,
        }
    }
    if listed.images.is_empty() {
        return Err(no_images(dir, listed.problems.len()));
    }
    Ok(listed)
}

/// What `list` found.
#[derive(Debug, Default)]
pub struct Listed {
    pub images: Vec<Item>,
    pub problems: Vec<Problem>,
    pub kaggle_copies: usize,
}

fn no_images(dir: &Path, others: usize) -> anyhow::Error {
    anyhow::anyhow!(
        "no images under {} ({others} other files): point to a folder of .png/.jpg patches",
        dir.shown()
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
    pub streamed: Streamed,
}

/// What a stream skipped, and how long it took.
#[derive(Debug, Default)]
pub struct Streamed {
    /// Files that are not images, could not be decoded, or break the label or same-patch rule.
    pub problems: Vec<Problem>,
    /// Kaggle's duplicate copies of patches already classified.
    pub kaggle_copies: usize,
    pub seconds: f64,
}

impl Streamed {
    pub fn skipped(&self) -> usize {
        self.problems.len() + self.kaggle_copies
    }
}

/// Most bytes one batch of decoded images may take (two are in flight at a time).
pub const MAX_BATCH_BYTES: usize = 1 << 30;

impl Pipeline {
    /// An error, before anything is allocated, when a batch of this size would not fit
    /// `MAX_BATCH_BYTES` (a large `--batch-size` with a large input size).
    pub fn check_memory(&self, pre: &Preprocess) -> Result<()> {
        let bytes = self.batch_size.saturating_mul(pre.len()).saturating_mul(4);
        if bytes > MAX_BATCH_BYTES {
            anyhow::bail!(
                "--batch-size {} at {}x{} input needs {} MB a batch, over the {} MB limit: lower --batch-size",
                self.batch_size,
                pre.size,
                pre.size,
                bytes >> 20,
                MAX_BATCH_BYTES >> 20
            );
        }
        Ok(())
    }

    /// The decode workers (`decode_threads`, or one per core).
    pub fn decode_pool(&self) -> Result<rayon::ThreadPool> {
        Ok(rayon::ThreadPoolBuilder::new()
            .num_threads(common::cli::threads_or_cores(self.decode_threads))
            .thread_name(|i| format!("decode-{i}"))
            .build()?)
    }

    /// Classifies `items` in order; `on_result(index, item, probability)` is called per image as
    /// its batch comes back, `index` counting the images taken from the iterator (problems and
    /// duplicates are not counted). Nothing is kept
    /// per image here: memory stays flat however many there are. Returns what was skipped and
    /// the seconds taken.
    pub fn stream<I, F>(
        &self,
        model: &mut Model,
        items: I,
        progress: &indicatif::ProgressBar,
        mut on_result: F,
    ) -> Result<Streamed>
    where
        I: Iterator<Item = Found> + Send,
        F: FnMut(usize, &Item, f32) -> Result<()>,
    {
        let start = Instant::now();
        let pre = model.preprocess;
        self.check_memory(&pre)?;
        let pool = self.decode_pool()?;
        let bs = self.batch_size.max(1);
        let (tx, rx) = sync_channel::<Decoded>(2);
        let mut streamed = Streamed::default();
        std::thread::scope(|scope| -> Result<()> {
            scope.spawn(move || {
                let (mut chunk, mut not_images, mut copies, mut taken) =
                    (Vec::with_capacity(bs), Vec::new(), 0, 0);
                let mut items = items.peekable();
                while let Some(found) = items.next() {
                    match found {
                        Found::Image(item) => chunk.push(item),
                        Found::Problem(problem) => not_images.push(problem),
                        Found::KaggleCopy => copies += 1,
                    }
                    if chunk.len() == bs || items.peek().is_none() {
                        let mut decoded =
                            pool.install(|| decode(std::mem::take(&mut chunk), taken, &pre));
                        taken += decoded.items.len() + decoded.failed.len();
                        decoded.skipped += not_images.len() + copies;
                        decoded.kaggle_copies = std::mem::take(&mut copies);
                        decoded.failed.append(&mut not_images);
                        if tx.send(decoded).is_err() {
                            return;
                        }
                    }
                }
            });
            let mut padded = Padded::new(bs);
            for mut batch in rx {
                streamed.problems.extend(batch.failed);
                streamed.kaggle_copies += batch.kaggle_copies;
                let n = batch.items.len();
                if n > 0 {
                    let p = padded.predict(model, &mut batch.images, n)?;
                    for ((&i, item), p) in batch.indices.iter().zip(&batch.items).zip(p) {
                        on_result(i, item, p)?;
                    }
                }
                progress.inc((n + batch.skipped) as u64);
            }
            Ok(())
        })?;
        progress.finish_and_clear();
        streamed.seconds = start.elapsed().as_secs_f64();
        Ok(streamed)
    }

    /// `stream` over a list, collecting the probabilities by position.
    pub fn run(
        &self,
        model: &mut Model,
        items: &[Item],
        progress: &indicatif::ProgressBar,
    ) -> Result<Outcome> {
        let mut probs = vec![None; items.len()];
        let streamed = self.stream(
            model,
            items.iter().cloned().map(Found::Image),
            progress,
            |i, _, p| {
                probs[i] = Some(p);
                Ok(())
            },
        )?;
        Ok(Outcome { probs, streamed })
    }
}

/// Batches of at most `batch_size` images through the model, a short batch after full ones (the
/// last, or one with skipped files) padded to the full size: ONNX Runtime then keeps one memory
/// plan, where a second shape would add tens of MB to the peak.
pub struct Padded {
    batch_size: usize,
    full_batch_seen: bool,
}

impl Padded {
    pub fn new(batch_size: usize) -> Padded {
        Padded {
            batch_size,
            full_batch_seen: false,
        }
    }

    /// The probabilities of the `n` images in `images` (which may grow by the padding).
    pub fn predict(
        &mut self,
        model: &mut Model,
        images: &mut Vec<f32>,
        n: usize,
    ) -> Result<Vec<f32>> {
        let bs = self.batch_size;
        let rows = if n < bs && self.full_batch_seen {
            bs
        } else {
            n
        };
        self.full_batch_seen |= n == bs;
        images.resize(rows * model.preprocess.len(), 0.0);
        let mut p = model.predict(images, rows)?;
        p.truncate(n);
        Ok(p)
    }
}

struct Decoded {
    /// The decoded items, their positions in the stream, and their pixels.
    items: Vec<Item>,
    indices: Vec<usize>,
    images: Vec<f32>,
    failed: Vec<Problem>,
    skipped: usize,
    kaggle_copies: usize,
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
        kaggle_copies: 0,
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
