//! The inference pipeline: list the images under a folder, decode + resize them on a worker pool
//! in fixed-size batches that flow through a bounded queue into the session, so decoding overlaps
//! inference and memory stays flat however many images there are. A file that cannot be used is
//! recorded with the reason and skipped; it never stops the run.

use crate::session::Model;
use anyhow::{Result, bail};
use datasets::preprocess::Preprocess;
use datasets::scan::{folder_label, has_image_extension, walk_files};
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

/// Every file under `dir`, sorted; files without an image extension are problems right away.
pub fn list(dir: &Path) -> Result<(Vec<Item>, Vec<Problem>)> {
    let mut files = walk_files(dir)?;
    files.sort();
    let (mut items, mut problems) = (Vec::new(), Vec::new());
    for path in files {
        if !has_image_extension(&path) {
            problems.push(Problem {
                path,
                reason: "not an image file (expected .png/.jpg)".into(),
            });
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| PatchName::parse(n).ok());
        let label = folder_label(&path).or(name.as_ref().map(|n| n.class));
        items.push(Item { path, label, name });
    }
    if items.is_empty() {
        bail!(
            "no images under {} ({} other files): point to a folder of .png/.jpg patches",
            dir.display(),
            problems.len()
        );
    }
    Ok((items, problems))
}

/// Decoding settings.
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

    pub fn run(
        &self,
        model: &mut Model,
        items: &[Item],
        progress: &indicatif::ProgressBar,
    ) -> Result<Outcome> {
        let start = Instant::now();
        let pre = model.preprocess;
        let pool = self.decode_pool()?;
        let bs = self.batch_size.max(1);
        let (tx, rx) = sync_channel::<Decoded>(2);
        let mut probs = vec![None; items.len()];
        let mut problems = Vec::new();
        std::thread::scope(|scope| -> Result<()> {
            scope.spawn(|| {
                for (b, chunk) in items.chunks(bs).enumerate() {
                    let decoded = pool.install(|| decode(chunk, b * bs, &pre));
                    if tx.send(decoded).is_err() {
                        return;
                    }
                }
                drop(tx);
            });
            for batch in rx {
                problems.extend(batch.failed);
                if !batch.indices.is_empty() {
                    let p = model.predict(&batch.images, batch.indices.len())?;
                    for (&i, p) in batch.indices.iter().zip(p) {
                        probs[i] = Some(p);
                    }
                }
                progress.inc((batch.indices.len() + batch.skipped) as u64);
            }
            Ok(())
        })?;
        progress.finish_and_clear();
        Ok(Outcome {
            probs,
            problems,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

struct Decoded {
    indices: Vec<usize>,
    images: Vec<f32>,
    failed: Vec<Problem>,
    skipped: usize,
}

/// Decodes a chunk in parallel straight into one batch buffer, then closes the gaps left by
/// files that failed; keeps the order of the chunk.
fn decode(chunk: &[Item], offset: usize, pre: &Preprocess) -> Decoded {
    let per = pre.len();
    let mut images = vec![0f32; chunk.len() * per];
    let errors: Vec<Option<String>> = images
        .par_chunks_mut(per)
        .zip(chunk.par_iter())
        .map(|(out, item)| pre.load_into(&item.path, out).err().map(|e| e.to_string()))
        .collect();
    let mut d = Decoded {
        indices: Vec::with_capacity(chunk.len()),
        images: Vec::new(),
        failed: Vec::new(),
        skipped: 0,
    };
    for (k, error) in errors.into_iter().enumerate() {
        match error {
            None => {
                let w = d.indices.len();
                if w != k {
                    images.copy_within(k * per..(k + 1) * per, w * per);
                }
                d.indices.push(offset + k);
            }
            Some(reason) => {
                d.failed.push(Problem {
                    path: chunk[k].path.clone(),
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
