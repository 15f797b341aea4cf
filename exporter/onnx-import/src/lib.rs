//! The exporter's ONNX file for a non-default CancerNet, imported back into burn by burn-onnx at
//! build time (see build.rs); tests/import.rs compares it with the original.

pub mod spec;

#[allow(clippy::all, unused)]
pub mod cancernet {
    include!(concat!(env!("OUT_DIR"), "/model/cancernet.rs"));
}
