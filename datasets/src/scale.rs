//! The physical scale of the training patches, which `runtime slide` needs to cut a whole-slide
//! image into tiles that cover what a patch covered. It travels from the trainer's config
//! (`data.scale`) through the ONNX metadata (`to_metadata` / `from_metadata`).
//!
//! The Kaggle patches (Janowczyk & Madabhushi 2016) are 50x50 pixels cut at 2.5x: slides scanned
//! at 40x (~0.25 µm a pixel) downsampled 16:1, so ~4 µm a pixel and ~200 µm a patch.

use anyhow::{Result, bail};
use common::text::Shown;
use std::collections::HashMap;

/// Side of a training patch in pixels, and the microns one of its pixels spans.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchScale {
    pub pixels: u32,
    pub mpp: f64,
}

/// Metadata keys, as written into the ONNX file.
pub mod keys {
    pub const PIXELS: &str = "patch.pixels";
    pub const MPP: &str = "patch.mpp";
}

/// The patch sides and scales accepted (config, metadata, flags alike).
pub const PIXELS: std::ops::RangeInclusive<u32> = 8..=1024;
pub const MPP: std::ops::RangeInclusive<f64> = 0.05..=100.0;

impl Default for PatchScale {
    /// The Kaggle dataset's.
    fn default() -> Self {
        PatchScale {
            pixels: 50,
            mpp: 4.0,
        }
    }
}

impl PatchScale {
    /// Side of a patch in microns.
    pub fn microns(&self) -> f64 {
        f64::from(self.pixels) * self.mpp
    }

    /// An error naming the bad field, for a scale from a config or a flag.
    pub fn check(&self) -> Result<()> {
        if !PIXELS.contains(&self.pixels) {
            bail!(
                "patch side {} px is outside [{}, {}]",
                self.pixels,
                PIXELS.start(),
                PIXELS.end()
            );
        }
        if !MPP.contains(&self.mpp) {
            bail!(
                "patch scale {} µm/px is outside [{}, {}]",
                self.mpp,
                MPP.start(),
                MPP.end()
            );
        }
        Ok(())
    }

    pub fn to_metadata(&self) -> Vec<(String, String)> {
        vec![
            (keys::PIXELS.into(), self.pixels.to_string()),
            (keys::MPP.into(), self.mpp.to_string()),
        ]
    }

    /// The scale from model metadata: `None` when the model has neither key (exported before
    /// they existed), an error when one is missing or out of range (metadata is input too).
    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<Option<PatchScale>> {
        let (pixels, mpp) = match (meta.get(keys::PIXELS), meta.get(keys::MPP)) {
            (None, None) => return Ok(None),
            (Some(p), Some(m)) => (p, m),
            _ => bail!(
                "model metadata has only one of {} and {}",
                keys::PIXELS,
                keys::MPP
            ),
        };
        let scale = PatchScale {
            pixels: pixels.trim().parse().unwrap_or(0),
            mpp: mpp.trim().parse().unwrap_or(f64::NAN),
        };
        if let Err(e) = scale.check() {
            bail!(
                "model metadata {} = \"{}\", {} = \"{}\": {e}",
                keys::PIXELS,
                pixels.shown(),
                keys::MPP,
                mpp.shown()
            );
        }
        Ok(Some(scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_bad_values_are_named() {
        let s = PatchScale {
            pixels: 64,
            mpp: 0.5,
        };
        let meta: HashMap<String, String> = s.to_metadata().into_iter().collect();
        assert_eq!(PatchScale::from_metadata(&meta).unwrap(), Some(s));
        assert_eq!(PatchScale::from_metadata(&HashMap::new()).unwrap(), None);
        assert_eq!(PatchScale::default().microns(), 200.0);
        for (k, v) in [
            (keys::MPP, "0"),
            (keys::MPP, "NaN"),
            (keys::MPP, "1e9"),
            (keys::PIXELS, "4"),
        ] {
            let mut bad = meta.clone();
            bad.insert(k.into(), v.into());
            let err = PatchScale::from_metadata(&bad).unwrap_err().to_string();
            assert!(err.contains(k) && err.contains(v), "{err}");
        }
        let mut half = meta;
        half.remove(keys::MPP);
        assert!(PatchScale::from_metadata(&half).is_err());
    }
}
