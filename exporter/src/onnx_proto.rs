//! Hand-written `prost` message definitions for the subset of ONNX's
//! `onnx.proto` that the CNN exporter needs.
//!
//! Source: `onnx/onnx.proto` in the official ONNX repository
//! (github.com/onnx/onnx, path `onnx/onnx.proto`, checked against commit
//! `64209faab4da3d679f2d46c7f725f6f2b779279b`, whose `Version` enum ends at
//! IR version 10). Every field number, enum value and packing choice below was
//! checked against that file. The ONNX schema uses `syntax = "proto2"`, package
//! `onnx`.
//!
//! Only part of the schema is here. Fields and messages that are left out
//! (for example `TrainingInfoProto`, `FunctionProto`, `SparseTensorProto`,
//! `TensorProto.segment`, and the non-tensor `TypeProto` variants) are skipped
//! as unknown fields when a model is decoded. They are never written.
//!
//! Proto2 rules that matter for the wire format:
//! * Optional scalar fields are `Option<_>` with the `optional` label, so a set
//!   value is always written, even when it is the zero value (for example an
//!   `INT` attribute with `i = 0`, such as `keepdims = 0`).
//! * Repeated numeric fields are *not* packed in proto2 unless the `.proto`
//!   says `[packed = true]`. In prost 0.14 a repeated numeric field is packed
//!   unless told otherwise: prost-derive 0.14.6 `field/scalar.rs` uses
//!   `packed.unwrap_or_else(|| ty.is_numeric())`, and the attribute is parsed
//!   by `bool_attr("packed", ..)`, which accepts `packed = "false"`. So:
//!   - `TensorProto.dims`, `AttributeProto.floats` and `AttributeProto.ints`
//!     have no packed option in `onnx.proto`. They are marked
//!     `packed = "false"`.
//!   - `TensorProto.float_data`, `int32_data`, `int64_data`, `double_data`
//!     and `uint64_data` are declared `[packed = true]` in `onnx.proto`, so
//!     they keep prost's packed default.
//!
//!   Decoders accept both encodings either way.
//!
//! Versioning: we target the default-domain opset 17 ([`OPSET_VERSION`]).
//! In the ONNX release table (`docs/Versioning.md`), ONNX 1.12.0 introduced
//! opset 17 together with IR version 8 (`IR_VERSION_2021_7_30 = 8` in the
//! `Version` enum). So we write [`IR_VERSION`] = 8. The fields added in later
//! IR versions (`NodeProto.overload` = 8 and the `metadata_props` fields on
//! Node/Graph/Value/Tensor protos, all IR 10) are left out on purpose.

#![allow(dead_code)]

/// IR version written into `ModelProto.ir_version` (`IR_VERSION_2021_7_30`).
pub const IR_VERSION: i64 = 8;

/// Version of the default (`""` / `ai.onnx`) operator set we export against.
pub const OPSET_VERSION: i64 = 17;

// ---------------------------------------------------------------------------
// AttributeProto
// ---------------------------------------------------------------------------

/// A named attribute of a node (`message AttributeProto`).
///
/// Not included here: `sparse_tensor` = 22, `tp` = 14, `sparse_tensors` = 23,
/// `type_protos` = 15. Field numbers 12 and 16..=19 are reserved in the schema.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// `optional string name = 1;`
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// `optional string ref_attr_name = 21;`
    #[prost(string, optional, tag = "21")]
    pub ref_attr_name: Option<String>,
    /// `optional string doc_string = 13;`
    #[prost(string, optional, tag = "13")]
    pub doc_string: Option<String>,
    /// `optional AttributeType type = 20;`
    #[prost(enumeration = "attribute_proto::AttributeType", optional, tag = "20")]
    pub r#type: Option<i32>,
    /// `optional float f = 2;`
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    /// `optional int64 i = 3;`
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    /// `optional bytes s = 4;` (UTF-8 string)
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    /// `optional TensorProto t = 5;`
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// `optional GraphProto g = 6;`
    #[prost(message, optional, tag = "6")]
    pub g: Option<GraphProto>,
    /// `repeated float floats = 7;` (proto2: not packed)
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: Vec<f32>,
    /// `repeated int64 ints = 8;` (proto2: not packed)
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    /// `repeated bytes strings = 9;`
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    /// `repeated TensorProto tensors = 10;`
    #[prost(message, repeated, tag = "10")]
    pub tensors: Vec<TensorProto>,
    /// `repeated GraphProto graphs = 11;`
    #[prost(message, repeated, tag = "11")]
    pub graphs: Vec<GraphProto>,
}

/// Nested types of [`AttributeProto`].
pub mod attribute_proto {
    /// `enum AttributeType` (declaration order as in `onnx.proto`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum AttributeType {
        Undefined = 0,
        Float = 1,
        Int = 2,
        String = 3,
        Tensor = 4,
        Graph = 5,
        SparseTensor = 11,
        TypeProto = 13,
        Floats = 6,
        Ints = 7,
        Strings = 8,
        Tensors = 9,
        Graphs = 10,
        SparseTensors = 12,
        TypeProtos = 14,
    }
}

impl AttributeProto {
    /// `INT` attribute.
    pub fn from_int(name: &str, value: i64) -> Self {
        Self {
            name: Some(name.to_owned()),
            r#type: Some(attribute_proto::AttributeType::Int as i32),
            i: Some(value),
            ..Default::default()
        }
    }

    /// `INTS` attribute.
    pub fn from_ints(name: &str, values: Vec<i64>) -> Self {
        Self {
            name: Some(name.to_owned()),
            r#type: Some(attribute_proto::AttributeType::Ints as i32),
            ints: values,
            ..Default::default()
        }
    }

    /// `FLOAT` attribute.
    pub fn from_float(name: &str, value: f32) -> Self {
        Self {
            name: Some(name.to_owned()),
            r#type: Some(attribute_proto::AttributeType::Float as i32),
            f: Some(value),
            ..Default::default()
        }
    }

    /// `FLOATS` attribute.
    pub fn from_floats(name: &str, values: Vec<f32>) -> Self {
        Self {
            name: Some(name.to_owned()),
            r#type: Some(attribute_proto::AttributeType::Floats as i32),
            floats: values,
            ..Default::default()
        }
    }

    /// `STRING` attribute (stored as UTF-8 bytes).
    pub fn from_string(name: &str, value: &str) -> Self {
        Self {
            name: Some(name.to_owned()),
            r#type: Some(attribute_proto::AttributeType::String as i32),
            s: Some(value.as_bytes().to_vec()),
            ..Default::default()
        }
    }

    /// `TENSOR` attribute (for example, the `value` of a `Constant` node).
    pub fn from_tensor(name: &str, value: TensorProto) -> Self {
        Self {
            name: Some(name.to_owned()),
            r#type: Some(attribute_proto::AttributeType::Tensor as i32),
            t: Some(value),
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------------------
// ValueInfoProto
// ---------------------------------------------------------------------------

/// Name, type and shape of a value (`message ValueInfoProto`).
///
/// Not included here: `metadata_props` = 4 (IR 10).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// `optional string name = 1;`
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// `optional TypeProto type = 2;`
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    /// `optional string doc_string = 3;`
    #[prost(string, optional, tag = "3")]
    pub doc_string: Option<String>,
}

impl ValueInfoProto {
    /// A tensor-typed value with the given element type and shape.
    pub fn tensor(
        name: &str,
        elem_type: tensor_proto::DataType,
        dims: Vec<tensor_shape_proto::Dimension>,
    ) -> Self {
        Self {
            name: Some(name.to_owned()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(elem_type as i32),
                    shape: Some(TensorShapeProto { dim: dims }),
                })),
                denotation: None,
            }),
            doc_string: None,
        }
    }
}

// ---------------------------------------------------------------------------
// NodeProto
// ---------------------------------------------------------------------------

/// One operator call in a graph (`message NodeProto`).
///
/// Not included here: `overload` = 8 and `metadata_props` = 9 (later IR
/// versions than we target).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// `repeated string input = 1;`
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// `repeated string output = 2;`
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// `optional string name = 3;`
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
    /// `optional string op_type = 4;`
    #[prost(string, optional, tag = "4")]
    pub op_type: Option<String>,
    /// `optional string domain = 7;`
    #[prost(string, optional, tag = "7")]
    pub domain: Option<String>,
    /// `repeated AttributeProto attribute = 5;`
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// `optional string doc_string = 6;`
    #[prost(string, optional, tag = "6")]
    pub doc_string: Option<String>,
}

// ---------------------------------------------------------------------------
// ModelProto
// ---------------------------------------------------------------------------

/// Top-level model container (`message ModelProto`).
///
/// Not included here: `training_info` = 20 and `functions` = 25.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// `optional int64 ir_version = 1;`
    #[prost(int64, optional, tag = "1")]
    pub ir_version: Option<i64>,
    /// `repeated OperatorSetIdProto opset_import = 8;`
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// `optional string producer_name = 2;`
    #[prost(string, optional, tag = "2")]
    pub producer_name: Option<String>,
    /// `optional string producer_version = 3;`
    #[prost(string, optional, tag = "3")]
    pub producer_version: Option<String>,
    /// `optional string domain = 4;`
    #[prost(string, optional, tag = "4")]
    pub domain: Option<String>,
    /// `optional int64 model_version = 5;`
    #[prost(int64, optional, tag = "5")]
    pub model_version: Option<i64>,
    /// `optional string doc_string = 6;`
    #[prost(string, optional, tag = "6")]
    pub doc_string: Option<String>,
    /// `optional GraphProto graph = 7;`
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// `repeated StringStringEntryProto metadata_props = 14;`
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

// ---------------------------------------------------------------------------
// StringStringEntryProto
// ---------------------------------------------------------------------------

/// A key/value pair (`message StringStringEntryProto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    /// `optional string key = 1;`
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    /// `optional string value = 2;`
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

// ---------------------------------------------------------------------------
// GraphProto
// ---------------------------------------------------------------------------

/// A computation graph (`message GraphProto`).
///
/// Not included here: `sparse_initializer` = 15, `quantization_annotation` =
/// 14 and `metadata_props` = 16 (IR 10). Numbers 3, 4 and 6..=9 are reserved
/// in the schema.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// `repeated NodeProto node = 1;` (topologically sorted)
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// `optional string name = 2;`
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    /// `repeated TensorProto initializer = 5;`
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// `optional string doc_string = 10;`
    #[prost(string, optional, tag = "10")]
    pub doc_string: Option<String>,
    /// `repeated ValueInfoProto input = 11;`
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// `repeated ValueInfoProto output = 12;`
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    /// `repeated ValueInfoProto value_info = 13;`
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

// ---------------------------------------------------------------------------
// TensorProto
// ---------------------------------------------------------------------------

/// A serialized tensor (`message TensorProto`).
///
/// Not included here: `segment` = 3 and `metadata_props` = 16 (IR 10).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// `repeated int64 dims = 1;` (proto2, no `[packed]` option: not packed)
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    /// `optional int32 data_type = 2;` (a [`tensor_proto::DataType`] value)
    #[prost(int32, optional, tag = "2")]
    pub data_type: Option<i32>,
    /// `repeated float float_data = 4 [packed = true];`
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// `repeated int32 int32_data = 5 [packed = true];`
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    /// `repeated bytes string_data = 6;`
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub string_data: Vec<Vec<u8>>,
    /// `repeated int64 int64_data = 7 [packed = true];`
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    /// `optional string name = 8;`
    #[prost(string, optional, tag = "8")]
    pub name: Option<String>,
    /// `optional string doc_string = 12;`
    #[prost(string, optional, tag = "12")]
    pub doc_string: Option<String>,
    /// `optional bytes raw_data = 9;` (fixed-width little-endian elements)
    #[prost(bytes = "vec", optional, tag = "9")]
    pub raw_data: Option<Vec<u8>>,
    /// `repeated StringStringEntryProto external_data = 13;`
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// `optional DataLocation data_location = 14;`
    #[prost(enumeration = "tensor_proto::DataLocation", optional, tag = "14")]
    pub data_location: Option<i32>,
    /// `repeated double double_data = 10 [packed = true];`
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    /// `repeated uint64 uint64_data = 11 [packed = true];`
    #[prost(uint64, repeated, tag = "11")]
    pub uint64_data: Vec<u64>,
}

/// Nested types of [`TensorProto`].
pub mod tensor_proto {
    /// `enum DataType` (values as of the source commit; see module docs).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum DataType {
        Undefined = 0,
        Float = 1,
        Uint8 = 2,
        Int8 = 3,
        Uint16 = 4,
        Int16 = 5,
        Int32 = 6,
        Int64 = 7,
        String = 8,
        Bool = 9,
        Float16 = 10,
        Double = 11,
        Uint32 = 12,
        Uint64 = 13,
        Complex64 = 14,
        Complex128 = 15,
        Bfloat16 = 16,
        Float8e4m3fn = 17,
        Float8e4m3fnuz = 18,
        Float8e5m2 = 19,
        Float8e5m2fnuz = 20,
        Uint4 = 21,
        Int4 = 22,
    }

    /// `enum DataLocation`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum DataLocation {
        Default = 0,
        External = 1,
    }
}

impl TensorProto {
    /// `FLOAT` tensor whose elements are stored in `raw_data` as
    /// little-endian IEEE 754 values.
    pub fn from_f32_raw(name: &str, dims: Vec<i64>, values: &[f32]) -> Self {
        let mut raw = Vec::with_capacity(values.len() * 4);
        for v in values {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        Self {
            dims,
            data_type: Some(tensor_proto::DataType::Float as i32),
            name: Some(name.to_owned()),
            raw_data: Some(raw),
            ..Default::default()
        }
    }

    /// `INT64` tensor stored in `int64_data` (for example, a `Reshape` shape).
    pub fn from_i64(name: &str, dims: Vec<i64>, values: Vec<i64>) -> Self {
        Self {
            dims,
            data_type: Some(tensor_proto::DataType::Int64 as i32),
            name: Some(name.to_owned()),
            int64_data: values,
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------------------
// TensorShapeProto
// ---------------------------------------------------------------------------

/// A tensor shape, made of fixed or symbolic dimensions
/// (`message TensorShapeProto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// `repeated Dimension dim = 1;`
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// Nested types of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    /// `message Dimension`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        /// `optional string denotation = 3;`
        #[prost(string, optional, tag = "3")]
        pub denotation: Option<String>,
        /// `oneof value { int64 dim_value = 1; string dim_param = 2; }`
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
    }

    /// Nested types of [`Dimension`].
    pub mod dimension {
        /// `oneof value`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            /// `int64 dim_value = 1;`
            #[prost(int64, tag = "1")]
            DimValue(i64),
            /// `string dim_param = 2;`
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }

    impl Dimension {
        /// A fixed dimension (`dim_value`).
        pub fn fixed(value: i64) -> Self {
            Self {
                denotation: None,
                value: Some(dimension::Value::DimValue(value)),
            }
        }

        /// A symbolic dimension (`dim_param`), for example a dynamic batch
        /// size `"N"`.
        pub fn symbolic(param: &str) -> Self {
            Self {
                denotation: None,
                value: Some(dimension::Value::DimParam(param.to_owned())),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// TypeProto
// ---------------------------------------------------------------------------

/// The type of a value (`message TypeProto`). Only the `tensor_type`
/// variant of the `value` oneof is included.
///
/// Not included here: `sequence_type` = 4, `map_type` = 5,
/// `optional_type` = 9 and `sparse_tensor_type` = 8.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// `oneof value { Tensor tensor_type = 1; ... }`
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
    /// `optional string denotation = 6;`
    #[prost(string, optional, tag = "6")]
    pub denotation: Option<String>,
}

/// Nested types of [`TypeProto`].
pub mod type_proto {
    /// `message Tensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        /// `optional int32 elem_type = 1;` (a `TensorProto.DataType` value)
        #[prost(int32, optional, tag = "1")]
        pub elem_type: Option<i32>,
        /// `optional TensorShapeProto shape = 2;`
        #[prost(message, optional, tag = "2")]
        pub shape: Option<super::TensorShapeProto>,
    }

    /// `oneof value` (only the tensor variant).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// `Tensor tensor_type = 1;`
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }
}

// ---------------------------------------------------------------------------
// OperatorSetIdProto
// ---------------------------------------------------------------------------

/// A (domain, version) operator-set identifier (`message OperatorSetIdProto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// `optional string domain = 1;` (`""` means the default ONNX domain)
    #[prost(string, optional, tag = "1")]
    pub domain: Option<String>,
    /// `optional int64 version = 2;`
    #[prost(int64, optional, tag = "2")]
    pub version: Option<i64>,
}

impl OperatorSetIdProto {
    /// Import of the default ONNX operator set (`domain = ""`) at `version`.
    pub fn onnx(version: i64) -> Self {
        Self {
            domain: Some(String::new()),
            version: Some(version),
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests;
