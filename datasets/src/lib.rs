#![forbid(unsafe_code)]
//! Everything about IDC patches on disk: file names, scanning a dataset tree, splitting it by
//! patient, materializing the split, synthetic data, and the one preprocessing path that training
//! and inference share.

pub mod augment;
pub mod build;
pub mod manifest;
pub mod patch;
pub mod preprocess;
pub mod rng;
pub mod scale;
pub mod scan;
pub mod split;
pub mod stain;
pub mod synth;
#[cfg(any(test, feature = "testdata"))]
pub mod testdata;

pub use patch::{Label, PatchName};
pub use preprocess::{Filter, Preprocess};
pub use scan::{Patch, Problem, Scan};

/// Split folder names, in the tutorial's order.
pub const SPLITS: [&str; 3] = ["training", "validation", "testing"];

/// Human-readable class names, index = class id (the Kaggle folder name).
pub const CLASS_NAMES: [&str; 2] = ["no IDC", "IDC"];
