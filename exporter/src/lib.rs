#![forbid(unsafe_code)]
//! The trained CancerNet as a self-describing ONNX file: protobuf messages (prost), the graph,
//! metadata, atomic writing and verification against burn with ONNX Runtime.

pub mod export;
pub mod graph;
pub mod onnx_proto;
pub mod verify;
