//! `runtime`'s errors, each one line with exit status 2 that names what is wrong: a missing
//! model or ONNX Runtime library, a folder of no images, a model over the size limit or not what
//! the report needs, an execution provider that cannot be used.

use super::{runtime, small_synth};
use crate::common::model;

#[test]
fn clear_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let onnx = model(tmp.path());
    let data = small_synth(tmp.path());
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    // Models that are not what the report needs, each a one-node graph.
    let tiny = |name: &str, input: Vec<i64>, op: &str, output: Vec<i64>, meta: &[(&str, &str)]| {
        use exporter::onnx_proto::tensor_proto::DataType;
        use exporter::onnx_proto::tensor_shape_proto::Dimension;
        use exporter::onnx_proto::*;
        use prost::Message;
        // An open dimension is named for its tensor and place: ONNX Runtime takes one name for
        // one size.
        let dims = |tensor: &str, d: &[i64]| {
            d.iter()
                .enumerate()
                .map(|(i, &v)| {
                    if v < 0 {
                        Dimension::symbolic(&format!("{tensor}{i}"))
                    } else {
                        Dimension::fixed(v)
                    }
                })
                .collect::<Vec<_>>()
        };
        let node = NodeProto {
            input: vec!["x".into()],
            output: vec!["y".into()],
            op_type: Some(op.into()),
            ..Default::default()
        };
        let graph = GraphProto {
            node: vec![node],
            name: Some("g".into()),
            input: vec![ValueInfoProto::tensor(
                "x",
                DataType::Float,
                dims("x", &input),
            )],
            output: vec![ValueInfoProto::tensor(
                "y",
                DataType::Float,
                dims("y", &output),
            )],
            ..Default::default()
        };
        let m = ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto::onnx(OPSET_VERSION)],
            graph: Some(graph),
            metadata_props: meta
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k.to_string()),
                    value: Some(v.to_string()),
                })
                .collect(),
            ..Default::default()
        };
        let path = tmp.path().join(name);
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        path
    };
    // x[N, 10] -> Relu: not an image.
    let not_image = tiny("vector.onnx", vec![-1, 10], "Relu", vec![-1, 10], &[]);
    // An image in, the image out: not [batch, 2] probabilities.
    let image_out = tiny(
        "image-out.onnx",
        vec![-1, 3, 48, 48],
        "Relu",
        vec![-1, 3, 48, 48],
        &[],
    );
    // A non-square input, and a side over the limit.
    let oblong = tiny(
        "oblong.onnx",
        vec![-1, 3, 48, 64],
        "Relu",
        vec![-1, 3, 48, 64],
        &[],
    );
    let huge = tiny(
        "huge.onnx",
        vec![-1, 3, 4096, 4096],
        "Relu",
        vec![-1, 3, 4096, 4096],
        &[],
    );
    // A grey image in; an output of rank 4, or of three columns: refused when opened.
    let grey = tiny(
        "grey.onnx",
        vec![-1, 1, 48, 48],
        "Relu",
        vec![-1, 1, 48, 48],
        &[],
    );
    let rank4 = tiny(
        "rank4.onnx",
        vec![-1, -1, 48, 48],
        "Relu",
        vec![-1, 2, 48, 48],
        &[],
    );
    let three_cols = tiny(
        "3cols.onnx",
        vec![-1, 3, -1, -1],
        "Flatten",
        vec![-1, 3],
        &[],
    );
    // Inputs with open dimensions (accepted) and an open output [batch, ?], which Flatten fills
    // with an image's every value: refused when a batch comes back with more than two columns.
    let flat = |name, input| tiny(name, input, "Flatten", vec![-1, -1], &[]);
    let open_inputs = [
        flat("open.onnx", vec![-1, -1, -1, -1]),
        flat("open-h.onnx", vec![-1, 3, -1, 48]),
        flat("open-w.onnx", vec![-1, 3, 48, -1]),
    ];
    // The real model with metadata that cannot be trusted: three classes, an absurd input size.
    let edited = |name: &str, key: &str, value: &str| {
        use exporter::onnx_proto::{ModelProto, StringStringEntryProto};
        use prost::Message;
        let mut proto = ModelProto::decode(std::fs::read(&onnx).unwrap().as_slice()).unwrap();
        proto
            .metadata_props
            .retain(|e| e.key.as_deref() != Some(key));
        proto.metadata_props.push(StringStringEntryProto {
            key: Some(key.into()),
            value: Some(value.into()),
        });
        let path = tmp.path().join(name);
        std::fs::write(&path, proto.encode_to_vec()).unwrap();
        path
    };
    let three = edited("classes.onnx", "classes", "0: a, 1: b, 2: c");
    let size = edited("size.onnx", "preprocess.input_size", "100000");
    let (d, m) = (data.to_str().unwrap(), onnx.to_str().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["eval", d, "--model", "missing.onnx"],
            "missing.onnx does not exist",
        ),
        (
            vec!["eval", empty.to_str().unwrap(), "--model", m],
            "no images under",
        ),
        (
            vec!["eval", d, "--model", m, "--max-model-bytes", "1000"],
            "over the 1000-byte limit",
        ),
        (
            vec!["eval", d, "--model", m, "--ep", "cuda"],
            "--ep cuda cannot be used",
        ),
        (
            vec![
                "eval",
                d,
                "--model",
                m,
                "--ort-lib",
                "/nonexistent/libonnxruntime.so",
            ],
            "/nonexistent/libonnxruntime.so",
        ),
    ];
    // The limit is inclusive: a model of exactly --max-model-bytes is read.
    let exact = std::fs::metadata(&onnx).unwrap().len().to_string();
    let o = runtime(&[
        "eval",
        d,
        "--model",
        m,
        "--ep",
        "cpu",
        "--max-model-bytes",
        &exact,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Models refused when opened, each for what it is.
    let refused = [
        (&not_image, "not a square image tensor"),
        (&image_out, "not the class probabilities [batch, 2]"),
        (&oblong, "not a square image tensor"),
        (&huge, "not a square image tensor"),
        (&three, "metadata classes"),
        (&size, "is not a side in [8, 1024]"),
        (&grey, "not a square image tensor"),
        (&rank4, "not the class probabilities [batch, 2]"),
        (&three_cols, "not the class probabilities [batch, 2]"),
    ];
    let refused_cases = refused
        .iter()
        .map(|(model, needle)| (vec!["eval", d, "--model", model.to_str().unwrap()], *needle));
    let open_input_cases = open_inputs.iter().map(|model| {
        let model = model.to_str().unwrap();
        let args = ["--input-size", "48", "--resize-filter", "bilinear"];
        let args = [&["eval", d, "--model", model][..], &args].concat();
        (args, ", 6912], expected [")
    });
    let all = cases
        .into_iter()
        .chain(refused_cases)
        .chain(open_input_cases);
    for (args, needle) in all {
        let o = runtime(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
    }
}
