use super::tensor_shape_proto::Dimension;
use super::*;
use prost::Message;

fn tiny_model() -> ModelProto {
    let weight = TensorProto::from_f32_raw("conv.weight", vec![2, 1, 3, 3], &[0.5f32; 18]);
    let bias = TensorProto {
        dims: vec![2],
        data_type: Some(tensor_proto::DataType::Float as i32),
        float_data: vec![0.0, -1.25],
        name: Some("conv.bias".to_owned()),
        ..Default::default()
    };
    let shape = TensorProto::from_i64("flat.shape", vec![2], vec![0, -1]);

    let conv = NodeProto {
        input: vec!["input".into(), "conv.weight".into(), "conv.bias".into()],
        output: vec!["conv_out".into()],
        name: Some("conv".into()),
        op_type: Some("Conv".into()),
        domain: Some(String::new()),
        attribute: vec![
            AttributeProto::from_ints("kernel_shape", vec![3, 3]),
            AttributeProto::from_ints("pads", vec![1, 1, 1, 1]),
            AttributeProto::from_int("group", 1),
        ],
        doc_string: None,
    };
    let relu = NodeProto {
        input: vec!["conv_out".into()],
        output: vec!["relu_out".into()],
        name: Some("relu".into()),
        op_type: Some("Relu".into()),
        ..Default::default()
    };
    let reshape = NodeProto {
        input: vec!["relu_out".into(), "flat.shape".into()],
        output: vec!["output".into()],
        name: Some("flatten".into()),
        op_type: Some("Reshape".into()),
        ..Default::default()
    };

    ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto::onnx(OPSET_VERSION)],
        producer_name: Some("exporter".into()),
        producer_version: Some("0.1.0".into()),
        domain: None,
        model_version: Some(1),
        doc_string: Some("round-trip test".into()),
        graph: Some(GraphProto {
            node: vec![conv, relu, reshape],
            name: Some("tiny_cnn".into()),
            initializer: vec![weight, bias, shape],
            doc_string: None,
            input: vec![ValueInfoProto::tensor(
                "input",
                tensor_proto::DataType::Float,
                vec![
                    Dimension::symbolic("N"),
                    Dimension::fixed(1),
                    Dimension::fixed(8),
                    Dimension::fixed(8),
                ],
            )],
            output: vec![ValueInfoProto::tensor(
                "output",
                tensor_proto::DataType::Float,
                vec![Dimension::symbolic("N"), Dimension::fixed(128)],
            )],
            value_info: vec![],
        }),
        metadata_props: vec![StringStringEntryProto {
            key: Some("classes".into()),
            value: Some("10".into()),
        }],
    }
}

#[test]
fn model_round_trip() {
    let model = tiny_model();
    let bytes = model.encode_to_vec();
    assert!(!bytes.is_empty());
    let decoded = ModelProto::decode(bytes.as_slice()).expect("decode ModelProto");
    assert_eq!(decoded, model);
    assert_eq!(decoded.ir_version, Some(IR_VERSION));
    let graph = decoded.graph.as_ref().unwrap();
    assert_eq!(
        graph.node[0].attribute[0].r#type(),
        attribute_proto::AttributeType::Ints
    );
    assert_eq!(
        graph.initializer[0].raw_data.as_ref().unwrap().len(),
        18 * 4
    );
}

#[test]
fn tensor_wire_format_is_proto2_faithful() {
    // dims unpacked (one key per element), float_data packed.
    let t = TensorProto {
        dims: vec![2, 3],
        data_type: Some(tensor_proto::DataType::Float as i32),
        float_data: vec![1.0],
        name: Some("w".into()),
        ..Default::default()
    };
    let expected: Vec<u8> = vec![
        0x08, 0x02, 0x08, 0x03, // dims: field 1, varint, unpacked
        0x10, 0x01, // data_type: field 2 = FLOAT
        0x22, 0x04, 0x00, 0x00, 0x80, 0x3F, // float_data: field 4, packed
        0x42, 0x01, b'w', // name: field 8
    ];
    assert_eq!(t.encode_to_vec(), expected);
}

#[test]
fn attribute_wire_format_is_proto2_faithful() {
    // ints unpacked; the type discriminator (field 20) uses a 2-byte key.
    let a = AttributeProto::from_ints("k", vec![3, 3]);
    let expected: Vec<u8> = vec![
        0x0A, 0x01, b'k', // name: field 1
        0x40, 0x03, 0x40, 0x03, // ints: field 8, varint, unpacked
        0xA0, 0x01, 0x07, // type: field 20 = INTS
    ];
    assert_eq!(a.encode_to_vec(), expected);

    // Optional scalar set to zero is still written (explicit presence).
    let keepdims = AttributeProto::from_int("keepdims", 0);
    let bytes = keepdims.encode_to_vec();
    assert!(bytes.ends_with(&[0x18, 0x00, 0xA0, 0x01, 0x02]));
    let decoded = AttributeProto::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded.i, Some(0));
}
