//! Batch inference with ONNX Runtime over folders of patches: the library behind `runtime`
//! (eval, predict, heatmap, bench) and the exporter's verification.

pub mod evaluate;
pub mod heatmap;
pub mod openslide;
pub mod ortlib;
pub mod pipeline;
pub mod session;
pub mod slide;
