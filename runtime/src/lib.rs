//! Batch inference with ONNX Runtime over folders of patches and whole-slide images: the library
//! behind `runtime` (eval, predict, heatmap, slide, bench) and the exporter's verification.

pub mod bench;
pub mod evaluate;
pub mod heatmap;
pub mod openslide;
pub mod ortlib;
pub mod pipeline;
pub mod session;
pub mod settings;
pub mod slide;
