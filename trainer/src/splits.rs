//! The three splits a run reads (training, validation, testing), the loader that feeds them,
//! and every file skipped on the way (`SkipLog`, kept for `run.json` and the final report).

use crate::config::TrainConfig;
use crate::data::{Loader, Split};
use crate::train::Options;
use anyhow::{Result, bail};
use common::Shown;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The three splits, the loader that feeds them, and every file skipped so far.
pub struct Data {
    pub loader: Loader,
    pub train: Arc<Split>,
    pub val: Arc<Split>,
    pub test: Arc<Split>,
    pub skipped: SkipLog,
    /// Which patients are in which split, when the splits were made from a list (cross-validation).
    pub provenance: serde_json::Value,
}

impl Data {
    /// Stage 2: opens the split folders under `data.root` (and caches them when asked).
    pub fn open(cfg: &TrainConfig, opts: &Options) -> Result<Data> {
        let splits = [
            Split::open(&cfg.data.root, "training", true)?,
            Split::open(&cfg.data.root, "validation", false)?,
            Split::open(&cfg.data.root, "testing", false)?,
        ];
        Data::new(cfg, opts, splits, serde_json::Value::Null)
    }

    /// The data of three splits made elsewhere; their scan problems are logged (an error under
    /// `strict`).
    pub fn new(
        cfg: &TrainConfig,
        opts: &Options,
        splits: [Split; 3],
        provenance: serde_json::Value,
    ) -> Result<Data> {
        let pre = cfg.preprocess();
        let workers = common::cli::threads_or_cores(cfg.data.workers);
        let loader = Loader::new(pre, cfg.train.batch_size, workers)?;
        let mut skipped = SkipLog::new(opts.strict);
        for s in &splits {
            skipped.add(&s.name, &s.problems)?;
        }
        let [mut train, mut val, mut test] = splits;
        if cfg.data.cache {
            let t = Instant::now();
            for s in [&mut train, &mut val, &mut test] {
                s.fill_cache(&pre, &loader.pool);
            }
            println!(
                "cached {} patches in memory in {:.1}s",
                train.len() + val.len() + test.len(),
                t.elapsed().as_secs_f64()
            );
        }
        Ok(Data {
            loader,
            train: Arc::new(train),
            val: Arc::new(val),
            test: Arc::new(test),
            skipped,
            provenance,
        })
    }
}

/// Every file skipped in a run (by its path, once): printed as it is found, and kept for
/// `run.json` and the final report. Under `strict` the first one is an error.
#[derive(Debug, Default)]
pub struct SkipLog {
    strict: bool,
    entries: BTreeMap<PathBuf, (String, String)>,
}

impl SkipLog {
    pub fn new(strict: bool) -> SkipLog {
        SkipLog {
            strict,
            entries: BTreeMap::new(),
        }
    }

    /// Records problems met in `split`; returns whether any was new.
    pub fn add(&mut self, split: &str, problems: &[datasets::Problem]) -> Result<bool> {
        let mut new = false;
        for p in problems {
            if self.strict {
                bail!("{split}: cannot use {p} (--strict)");
            }
            if !self.entries.contains_key(&p.path) {
                eprintln!("warning: {split}: skipped {p}");
                self.entries
                    .insert(p.path.clone(), (split.to_string(), p.reason.clone()));
                new = true;
            }
        }
        Ok(new)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every skipped file as JSON: split, path (losslessly escaped), reason.
    pub fn to_json(&self) -> serde_json::Value {
        self.entries
            .iter()
            .map(|(path, (split, reason))| {
                serde_json::json!({ "split": split, "path": path.shown(), "reason": reason })
            })
            .collect()
    }
}
