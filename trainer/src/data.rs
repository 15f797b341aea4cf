//! Feeding patches to the model: a producer thread decodes and augments batches on its own
//! worker pool while the model trains on the previous ones (bounded queue, so memory stays flat),
//! or serves them from an in-memory cache of decoded patches. Batches are identical whichever
//! thread made them: each image's augmentation draws from its own seeded stream.

use anyhow::{Result, bail};
use common::Shown;
use datasets::augment::Augment;
use datasets::preprocess::Preprocess;
use datasets::rng::Rng;
use datasets::{Patch, Problem, Scan};
use image::RgbImage;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

/// One split's patches: on disk, or decoded in memory.
pub struct Split {
    pub name: String,
    pub paths: Vec<PathBuf>,
    pub labels: Vec<u8>,
    /// Each patch's patient id.
    pub patients: Vec<String>,
    /// Decoded, resized patches when cached (the reason where decoding failed).
    cache: Option<Vec<Result<RgbImage, String>>>,
    /// Files the scan could not use.
    pub problems: Vec<Problem>,
}

impl Split {
    /// Scans `root/<name>`; fails on a missing or empty split, or one with a single class.
    pub fn open(root: &Path, name: &str, require_both_classes: bool) -> Result<Split> {
        let dir = root.join(name);
        if !dir.is_dir() {
            bail!(
                "split folder {} is missing: run `datasets build` first (or set data.root)",
                dir.shown()
            );
        }
        let scan = Scan::dir(&dir)?;
        if scan.patches.is_empty() {
            bail!(
                "split folder {} holds no patches ({} files skipped)",
                dir.shown(),
                scan.problems.len()
            );
        }
        let counts = scan.class_counts();
        if require_both_classes && counts.contains(&0) {
            bail!(
                "split {} has one class only ({} no-IDC, {} IDC patches): a classifier needs both; rebuild the split with more patients",
                dir.shown(),
                counts[0],
                counts[1]
            );
        }
        let mut problems = scan.problems;
        problems.extend(scan.collisions.iter().map(|c| {
            Problem::new(
                &c.other,
                format!("same patch as {}; only that one is used", c.kept.shown()),
            )
        }));
        if scan.duplicates > 0 {
            eprintln!(
                "warning: {}: {}",
                dir.shown(),
                datasets::scan::kaggle_duplicates_text(scan.duplicates)
            );
        }
        Ok(Split::from_patches(name, scan.patches, problems))
    }

    /// A split of the given patches (sorted by path), e.g. one fold of a cross-validation.
    pub fn from_patches(name: &str, mut patches: Vec<Patch>, problems: Vec<Problem>) -> Split {
        patches.sort_by(|a, b| a.path.cmp(&b.path));
        Split {
            name: name.to_string(),
            paths: patches.iter().map(|p| p.path.clone()).collect(),
            labels: patches.iter().map(|p| p.label).collect(),
            patients: patches.iter().map(|p| p.name.patient.clone()).collect(),
            cache: None,
            problems,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn class_counts(&self) -> [usize; 2] {
        let ones = self.labels.iter().filter(|&&l| l == 1).count();
        [self.len() - ones, ones]
    }

    /// Decodes every patch once, in parallel, and keeps them in memory.
    pub fn fill_cache(&mut self, pre: &Preprocess, pool: &rayon::ThreadPool) {
        let images: Vec<Result<RgbImage, String>> = pool.install(|| {
            self.paths
                .par_iter()
                .map(|p| pre.load_resized(p).map_err(|e| e.to_string()))
                .collect()
        });
        self.cache = Some(images);
    }
}

/// A batch ready for the model: CHW floats, labels, the split indices of its images, and the
/// files that failed to decode.
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    pub indices: Vec<usize>,
    pub failed: Vec<Problem>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

pub struct Loader {
    pub pre: Preprocess,
    pub batch_size: usize,
    pub pool: Arc<rayon::ThreadPool>,
}

impl Loader {
    pub fn new(pre: Preprocess, batch_size: usize, workers: usize) -> Result<Loader> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("loader-{i}"))
            .build()?;
        Ok(Loader {
            pre,
            batch_size,
            pool: Arc::new(pool),
        })
    }

    /// The batches of one pass over `split`, in `order`, each image augmented with its own
    /// stream of `seed` (none when `augment` is `None`). At most `max_batches`.
    pub fn batches(
        &self,
        split: &Arc<Split>,
        order: Vec<usize>,
        augment: Option<Augment>,
        seed: u64,
        max_batches: Option<usize>,
    ) -> Receiver<Batch> {
        let bs = self.batch_size;
        let n_batches = order
            .len()
            .div_ceil(bs)
            .min(max_batches.unwrap_or(usize::MAX));
        // Two chunks in flight at most: one being consumed, one being made.
        let chunk = self.pool.current_num_threads().max(1) * 2;
        let (tx, rx) = sync_channel::<Batch>(chunk);
        let (split, pool, pre) = (Arc::clone(split), Arc::clone(&self.pool), self.pre);
        std::thread::spawn(move || {
            for first in (0..n_batches).step_by(chunk) {
                let last = (first + chunk).min(n_batches);
                let made: Vec<Batch> = pool.install(|| {
                    (first..last)
                        .into_par_iter()
                        .map(|b| {
                            let idx = &order[b * bs..((b + 1) * bs).min(order.len())];
                            make_batch(&split, &pre, idx, b * bs, augment.as_ref(), seed)
                        })
                        .collect()
                });
                for batch in made {
                    if tx.send(batch).is_err() {
                        return; // the consumer stopped early
                    }
                }
            }
        });
        rx
    }
}

fn make_batch(
    split: &Split,
    pre: &Preprocess,
    idx: &[usize],
    offset: usize,
    augment: Option<&Augment>,
    seed: u64,
) -> Batch {
    let per = pre.len();
    let mut batch = Batch {
        images: Vec::with_capacity(idx.len() * per),
        labels: Vec::with_capacity(idx.len()),
        indices: Vec::with_capacity(idx.len()),
        failed: Vec::new(),
    };
    for (k, &i) in idx.iter().enumerate() {
        let img = match &split.cache {
            Some(cache) => cache[i].clone(),
            None => pre.load_resized(&split.paths[i]).map_err(|e| e.to_string()),
        };
        let img = match img {
            Ok(img) => img,
            Err(reason) => {
                batch.failed.push(Problem::new(&split.paths[i], reason));
                continue;
            }
        };
        let img = match augment {
            Some(a) => a.apply(&img, &mut Rng::derive(seed, (offset + k) as u64)),
            None => img,
        };
        let start = batch.images.len();
        batch.images.resize(start + per, 0.0);
        pre.to_chw(&img, &mut batch.images[start..]);
        batch.labels.push(split.labels[i]);
        batch.indices.push(i);
    }
    batch
}
