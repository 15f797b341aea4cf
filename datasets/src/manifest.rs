//! `manifest.csv`: one row per patch of a built split (split, patient, class, x, y, path).

use crate::SPLITS;
use crate::patch::PatchName;
use anyhow::{Context, Result};
use common::text::Shown;
use sha2::{Digest, Sha256};
use std::path::Path;

pub const FILE_NAME: &str = "manifest.csv";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub split: String,
    pub patient: String,
    pub class: u8,
    pub x: u32,
    pub y: u32,
    /// Relative to the split root, e.g. `training/1/8916_idx5_x1001_y101_class1.png`.
    pub path: String,
}

impl Row {
    /// The row of a patch in `SPLITS[split]`; its file keeps the source's extension `ext`.
    pub fn new(split: usize, name: &PatchName, label: u8, ext: &str) -> Row {
        Row {
            split: SPLITS[split].to_string(),
            patient: name.patient.clone(),
            class: label,
            x: name.x,
            y: name.y,
            path: format!(
                "{}/{}/{}_idx5_x{}_y{}_class{}.{ext}",
                SPLITS[split], label, name.patient, name.x, name.y, name.class
            ),
        }
    }
}

/// CSV text of the rows, in the order given.
pub fn to_csv(rows: &[Row]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    Ok(w.into_inner()?)
}

pub fn read(path: &Path) -> Result<Vec<Row>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.shown()))?;
    r.deserialize()
        .collect::<Result<_, _>>()
        .with_context(|| format!("malformed manifest {}", path.shown()))
}

/// Hex SHA-256 of a file's bytes (provenance: which split a model was trained on).
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.shown()))?;
    Ok(sha256_hex(&bytes))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
