//! `datasets build`: the tutorial's `build_dataset.py`, done right. Hard links (or copies) the
//! scanned patches into `<out>/{training,validation,testing}/{0,1}`, writes `manifest.csv`, and
//! swaps the finished tree into place with one rename, so an interrupted build leaves nothing
//! half-made and the originals are never touched.

use crate::manifest::{self, Row};
use crate::scan::{Scan, listed};
use crate::split::SplitConfig;
use crate::{CLASS_NAMES, SPLITS};
use anyhow::{Context, Result, bail};
use common::choice::Choice;
use common::fsutil::{
    first_foreign, link_or_copy, remove_stale_siblings, replace_folder, temp_sibling,
};
use common::text::Shown;
use rayon::prelude::*;
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub source: PathBuf,
    pub out: PathBuf,
    pub split: SplitConfig,
    pub force: bool,
    /// What to do with two files that name the same patch.
    pub on_collision: OnCollision,
    /// Any skipped file (problem, collision, Kaggle duplicate) is an error.
    pub strict: bool,
}

impl Default for BuildOptions {
    /// The command's defaults: `datasets/orig` into `datasets/idc`, the tutorial's split.
    fn default() -> Self {
        BuildOptions {
            source: PathBuf::from("datasets/orig"),
            out: PathBuf::from("datasets/idc"),
            split: SplitConfig::default(),
            force: false,
            on_collision: OnCollision::Error,
            strict: false,
        }
    }
}

/// Two source files naming the same patch (patient, x, y): `x1` and `x01`, `X.png` and `X.PNG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCollision {
    #[default]
    Error,
    KeepFirst,
}

impl Choice for OnCollision {
    const CHOICES: &'static [(OnCollision, &'static str, &'static str)] = &[
        (
            OnCollision::Error,
            "error",
            "Stop before anything is written, naming both files (default)",
        ),
        (
            OnCollision::KeepFirst,
            "keep-first",
            "Use the first in path order, list the others as skipped",
        ),
    ];
}

common::display_as_choice!(OnCollision);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Built,
    /// The output already holds exactly this split: nothing was written.
    UpToDate,
}

#[derive(Debug)]
pub struct BuildReport {
    pub outcome: Outcome,
    /// [split][class] patch counts.
    pub counts: [[usize; 2]; 3],
    pub patients: [usize; 3],
    pub linked: usize,
    pub copied: usize,
    pub scan: Scan,
}

pub fn build(opts: &BuildOptions) -> Result<BuildReport> {
    opts.split.validate()?;
    check_apart(&opts.source, &opts.out)?;
    let scan = scan_source(opts)?;
    let assignment = opts.split.assign(&scan.patches);
    let rows = rows_of(&scan, &assignment)?;
    let manifest_rows: Vec<Row> = rows.iter().map(|(r, _)| r.clone()).collect();
    let csv = manifest::to_csv(&manifest_rows)?;

    let mut counts = [[0usize; 2]; 3];
    let mut patients: [BTreeSet<&str>; 3] = Default::default();
    for (r, _) in &rows {
        let s = split_rank(r);
        counts[s][r.class as usize] += 1;
        patients[s].insert(&r.patient);
    }
    let patients = patients.map(|p| p.len());
    if output_is_up_to_date(opts, &csv)? {
        return Ok(BuildReport {
            outcome: Outcome::UpToDate,
            counts,
            patients,
            linked: 0,
            copied: 0,
            scan,
        });
    }
    let linked = materialize(&rows, &csv, &opts.out)?;
    Ok(BuildReport {
        outcome: Outcome::Built,
        counts,
        patients,
        linked,
        copied: rows.len() - linked,
        scan,
    })
}

/// The source scanned, with its problems refused under `--strict` and its collisions under
/// `--on-collision error`; an error when it holds no patch.
fn scan_source(opts: &BuildOptions) -> Result<Scan> {
    let scan = Scan::dir(&opts.source)?;
    if opts.strict {
        scan.strict(&opts.source)?;
    }
    if !scan.collisions.is_empty() && opts.on_collision == OnCollision::Error {
        bail!(
            "{} files under {} name a patch that another file already names; nothing was written. \
             Remove or rename one of each pair, or pass --on-collision keep-first to use the first \
             in path order:\n{}",
            scan.collisions.len(),
            opts.source.shown(),
            listed(&scan.collisions, 20).trim_end()
        );
    }
    if scan.patches.is_empty() {
        bail!(
            "no patches found under {} ({} files skipped): expected <patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png",
            opts.source.shown(),
            scan.skipped()
        );
    }
    Ok(scan)
}

/// One manifest row per patch with the file it comes from, in manifest order; an error when two
/// would land on one destination.
fn rows_of<'a>(scan: &'a Scan, assignment: &[usize]) -> Result<Vec<(Row, &'a Path)>> {
    let mut rows: Vec<(Row, &Path)> = scan
        .patches
        .iter()
        .zip(assignment)
        .map(|(p, &s)| {
            (
                Row::new(s, &p.name, p.label, &extension(&p.path)),
                p.path.as_path(),
            )
        })
        .collect();
    // One row per file: every destination is new and unique (the same-patch rule above makes
    // them so; checked here because a duplicate would make a link fail half-way).
    let mut destinations = HashSet::with_capacity(rows.len());
    if let Some((row, src)) = rows
        .iter()
        .find(|(r, _)| !destinations.insert(r.path.as_str()))
    {
        bail!(
            "two files would land on {} (one is {}); nothing was written",
            row.path,
            src.shown()
        );
    }
    rows.sort_by(|a, b| (split_rank(&a.0), &a.0).cmp(&(split_rank(&b.0), &b.0)));
    Ok(rows)
}

/// Whether `--out` already holds this very split (the same manifest); an error when it holds
/// something else that may not be replaced.
fn output_is_up_to_date(opts: &BuildOptions, csv: &[u8]) -> Result<bool> {
    if !opts.out.exists() {
        return Ok(false);
    }
    let existing = opts.out.join(manifest::FILE_NAME);
    if std::fs::read(&existing).is_ok_and(|old| old == csv) {
        return Ok(true);
    }
    let empty = std::fs::read_dir(&opts.out).is_ok_and(|mut d| d.next().is_none());
    if !existing.exists() && !empty {
        // Not a split (none has no manifest): --force replaces only what build made.
        bail!(
            "{} is not empty and holds no manifest.csv, so it is not a split `datasets build` \
             made; it is never replaced: choose another --out",
            opts.out.shown()
        );
    }
    if let Some(foreign) = first_foreign(&opts.out, &split_entry)? {
        bail!(
            "{} holds {}, which `datasets build` does not make, so it is not a split build made \
             alone; it is never replaced: choose another --out, or move that away",
            opts.out.shown(),
            foreign.shown()
        );
    }
    if !opts.force && !empty {
        bail!(
            "{} already holds a different split (its manifest.csv differs); pass --force to \
             replace it (the originals under {} are never touched)",
            opts.out.shown(),
            opts.source.shown()
        );
    }
    Ok(false)
}

/// Whether `rel` (a path in an output folder, a folder or not) is what `datasets build` makes
/// there: manifest.csv, the split folders, their class folders, the files in those.
fn split_entry(rel: &Path, is_dir: bool) -> bool {
    // A name that is not UTF-8 is no name build gives: not ours (and dropping it would shift
    // the depth).
    let Some(parts) = rel.iter().map(|p| p.to_str()).collect::<Option<Vec<_>>>() else {
        return false;
    };
    match parts[..] {
        [name] if !is_dir => name == manifest::FILE_NAME,
        [split] => SPLITS.contains(&split),
        [_, class] => is_dir && ["0", "1"].contains(&class),
        [_, _, _] => !is_dir,
        _ => false,
    }
}

/// Links (or copies) every file into a temp sibling of `out` with the manifest, then swaps it
/// into place; nothing is left behind on an error. Returns how many files were linked.
fn materialize(rows: &[(Row, &Path)], csv: &[u8], out: &Path) -> Result<usize> {
    remove_stale_siblings(out, "building")?;
    let tmp = temp_sibling(out, "building");
    for split in SPLITS {
        for class in 0..2 {
            let dir = tmp.join(split).join(class.to_string());
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.shown()))?;
        }
    }
    let linked = AtomicUsize::new(0);
    let result = rows.par_iter().try_for_each(|(row, src)| -> Result<()> {
        if link_or_copy(src, &tmp.join(&row.path))? {
            linked.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    let finish = result.and_then(|()| {
        common::fsutil::write_atomic(&tmp.join(manifest::FILE_NAME), csv)?;
        replace_folder(&tmp, out, "split")
    });
    if let Err(e) = finish {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(linked.into_inner())
}

/// The output must not be the source, inside it, or hold it: replacing the output would then
/// remove originals.
fn check_apart(source: &Path, out: &Path) -> Result<()> {
    let Ok(source) = std::fs::canonicalize(source) else {
        return Ok(()); // the scan says what is wrong with it
    };
    // The output may not exist yet: resolve its nearest existing ancestor, keep the rest.
    let out_abs = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    let resolved = out_abs
        .ancestors()
        .find_map(|a| {
            let rest = out_abs.strip_prefix(a).ok()?;
            std::fs::canonicalize(a).ok().map(|p| p.join(rest))
        })
        .unwrap_or(out_abs.clone());
    if resolved.starts_with(&source) || source.starts_with(&resolved) {
        bail!(
            "--out {} and --source {} overlap (one is the other or inside it): the split must go \
             elsewhere, or building it could remove originals",
            out.shown(),
            source.shown()
        );
    }
    Ok(())
}

/// The source's extension, lower case (`png`, `jpg`, `jpeg`): a JPEG stays `.jpg` in the split.
fn extension(path: &Path) -> String {
    path.extension()
        .map_or("png".into(), |e| e.to_string_lossy().to_ascii_lowercase())
}

fn split_rank(row: &Row) -> usize {
    SPLITS
        .iter()
        .position(|s| *s == row.split)
        .unwrap_or(SPLITS.len())
}

impl fmt::Display for BuildReport {
    /// The per-split, per-class table (the tutorial shows `tree` output here).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<12}{:>10}{:>10}{:>10}{:>11}{:>10}",
            "split",
            format!("0 ({})", CLASS_NAMES[0]),
            format!("1 ({})", CLASS_NAMES[1]),
            "total",
            "IDC share",
            "patients"
        )?;
        let mut all = [0usize; 2];
        for (s, name) in SPLITS.iter().enumerate() {
            let [c0, c1] = self.counts[s];
            all[0] += c0;
            all[1] += c1;
            writeln!(
                f,
                "{name:<12}{c0:>10}{c1:>10}{:>10}{:>10.1}%{:>10}",
                c0 + c1,
                pct(c1, c0 + c1),
                self.patients[s]
            )?;
        }
        let t = all[0] + all[1];
        write!(
            f,
            "{:<12}{:>10}{:>10}{t:>10}{:>10.1}%{:>10}",
            "all",
            all[0],
            all[1],
            pct(all[1], t),
            self.patients.iter().sum::<usize>()
        )
    }
}

fn pct(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}
