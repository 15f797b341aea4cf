//! CancerNet as an ONNX graph of standard ops (opset 17): Conv (depthwise: group = channels; then
//! pointwise 1x1), Relu, BatchNormalization, MaxPool, Flatten, Gemm, Softmax. Dropout is left out
//! (inference). Nodes and initializers are named after the layers (`block2.sepconv1.depthwise.weight`).
//!
//! `fold_bn` folds the classifier's BatchNorm into the Gemm after it, which is exact. The conv
//! blocks' BatchNorms stay as nodes: each follows a ReLU, so it cannot fold into the conv before
//! it, and folding it into the next (zero-padded) conv would change the border pixels.

use crate::onnx_proto::tensor_proto::DataType;
use crate::onnx_proto::tensor_shape_proto::Dimension;
use crate::onnx_proto::*;
use anyhow::{Result, bail};
use burn::nn::BatchNorm;
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use models::{CancerNet, CancerNetConfig, DIHEDRAL};

pub const INPUT: &str = "image";
pub const PROBABILITIES: &str = "probabilities";
pub const LOGITS: &str = "logits";
pub const BATCH_DIM: &str = "batch";

/// A tensor's values and shape.
type Values = (Vec<f32>, Vec<i64>);

/// A tensor's values and shape, read from burn.
fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Values {
    let dims = t.dims().iter().map(|&d| d as i64).collect();
    (
        t.into_data()
            .convert::<f32>()
            .into_vec()
            .expect("f32 tensor"),
        dims,
    )
}

struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Builder {
    fn init(&mut self, name: &str, values: Values, expected: &[i64]) -> Result<String> {
        let (data, dims) = self.check(name, values, expected)?;
        self.initializers
            .push(TensorProto::from_f32_raw(name, dims, &data));
        Ok(name.to_string())
    }

    /// `values`, when their shape is the one the model config implies.
    fn check(&self, name: &str, (data, dims): Values, expected: &[i64]) -> Result<Values> {
        if dims != expected {
            bail!(
                "checkpoint tensor {name} has shape {dims:?}, but the model config says {expected:?}: was it trained with another model config?"
            );
        }
        Ok((data, dims))
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: Vec<String>,
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![name.to_string()],
            name: Some(name.to_string()),
            op_type: Some(op.to_string()),
            domain: None,
            attribute: attributes,
            doc_string: None,
        });
        name.to_string()
    }

    fn conv<B: Backend>(
        &mut self,
        name: &str,
        x: String,
        conv: &Conv2d<B>,
        shape: [i64; 4],
        group: i64,
    ) -> Result<String> {
        let w = self.init(&format!("{name}.weight"), values(conv.weight.val()), &shape)?;
        let mut inputs = vec![x, w];
        if let Some(b) = &conv.bias {
            inputs.push(self.init(&format!("{name}.bias"), values(b.val()), &[shape[0]])?);
        }
        // CancerNet's kernels are odd (3x3, 1x1): 'same' padding is k / 2 on every side.
        let (k, pad) = (shape[2], shape[2] / 2);
        let attrs = vec![
            AttributeProto::from_ints("kernel_shape", vec![k, k]),
            AttributeProto::from_ints("pads", vec![pad; 4]),
            AttributeProto::from_ints("strides", vec![1, 1]),
            AttributeProto::from_int("group", group),
        ];
        Ok(self.node("Conv", name, inputs, attrs))
    }

    fn batch_norm<B: Backend>(
        &mut self,
        name: &str,
        x: String,
        bn: &BatchNorm<B>,
        c: i64,
    ) -> Result<String> {
        let inputs = vec![
            x,
            self.init(&format!("{name}.scale"), values(bn.gamma.val()), &[c])?,
            self.init(&format!("{name}.bias"), values(bn.beta.val()), &[c])?,
            self.init(
                &format!("{name}.running_mean"),
                values(bn.running_mean.value()),
                &[c],
            )?,
            self.init(
                &format!("{name}.running_var"),
                values(bn.running_var.value()),
                &[c],
            )?,
        ];
        Ok(self.node(
            "BatchNormalization",
            name,
            inputs,
            vec![AttributeProto::from_float("epsilon", bn.epsilon as f32)],
        ))
    }

    fn int64s(&mut self, name: &str, values: Vec<i64>) -> String {
        let dims = vec![values.len() as i64];
        self.initializers
            .push(TensorProto::from_i64(name, dims, values));
        name.to_string()
    }

    /// `x` along its last axis (`axis` 3) or its height (`axis` 2) reversed: Slice with step -1.
    fn flip(&mut self, name: &str, x: String, axis: i64) -> String {
        let inputs = vec![
            x,
            self.int64s(&format!("{name}.starts"), vec![-1]),
            self.int64s(&format!("{name}.ends"), vec![i64::MIN]),
            self.int64s(&format!("{name}.axes"), vec![axis]),
            self.int64s(&format!("{name}.steps"), vec![-1]),
        ];
        self.node("Slice", name, inputs, vec![])
    }

    /// The batch of the eight flips and quarter turns of each image, in `models::dihedral`'s
    /// order: x, flipped along w, along h, along both, then the same of x transposed.
    fn dihedral(&mut self, input: &str) -> String {
        let t = self.node(
            "Transpose",
            "tta.transpose",
            vec![input.to_string()],
            vec![AttributeProto::from_ints("perm", vec![0, 1, 3, 2])],
        );
        let mut views = Vec::new();
        for (tag, x) in [("", input.to_string()), ("t", t)] {
            let w = self.flip(&format!("tta.{tag}flip_w"), x.clone(), 3);
            let h = self.flip(&format!("tta.{tag}flip_h"), x.clone(), 2);
            let hw = self.flip(&format!("tta.{tag}flip_hw"), w.clone(), 2);
            views.extend([x, w, h, hw]);
        }
        self.node(
            "Concat",
            "tta.views",
            views,
            vec![AttributeProto::from_int("axis", 0)],
        )
    }

    fn gemm(
        &mut self,
        name: &str,
        x: String,
        (w, wd): (Vec<f32>, Vec<i64>),
        (b, bd): (Vec<f32>, Vec<i64>),
        shape: [i64; 2],
    ) -> Result<String> {
        // burn holds the weight as [in, out]; the graph stores [out, in] with transB = 1, the
        // layout PyTorch's export uses (ONNX Runtime runs both alike; measured in
        // bench/compare_graphs.py).
        let (w, wd) = self.check(&format!("{name}.weight"), (w, wd), &shape)?;
        let (rows, cols) = (wd[0] as usize, wd[1] as usize);
        let transposed: Vec<f32> = (0..cols)
            .flat_map(|c| (0..rows).map(move |r| (r, c)))
            .map(|(r, c)| w[r * cols + c])
            .collect();
        let w = self.init(
            &format!("{name}.weight"),
            (transposed, vec![wd[1], wd[0]]),
            &[shape[1], shape[0]],
        )?;
        let b = self.init(&format!("{name}.bias"), (b, bd), &[shape[1]])?;
        let trans_b = AttributeProto::from_int("transB", 1);
        Ok(self.node("Gemm", name, vec![x, w, b], vec![trans_b]))
    }
}

fn linear<B: Backend>(l: &Linear<B>) -> (Values, Values) {
    (
        values(l.weight.val()),
        values(l.bias.as_ref().expect("dense layers have a bias").val()),
    )
}

/// The head Gemm with the preceding BatchNorm folded in: for bn(x) = x * s + t,
/// head(bn(x)) = x (diag(s) W) + (t W + c).
fn fold_bn_into<B: Backend>(bn: &BatchNorm<B>, head: &Linear<B>) -> (Values, Values) {
    let ((w, wd), (c, cd)) = linear(head);
    let f = |t: Tensor<B, 1>| -> Vec<f64> { values(t).0.into_iter().map(f64::from).collect() };
    let (gamma, beta, mean, var) = (
        f(bn.gamma.val()),
        f(bn.beta.val()),
        f(bn.running_mean.value()),
        f(bn.running_var.value()),
    );
    let (k, n) = (wd[0] as usize, wd[1] as usize);
    let s: Vec<f64> = (0..k)
        .map(|i| gamma[i] / (var[i] + bn.epsilon).sqrt())
        .collect();
    let t: Vec<f64> = (0..k).map(|i| beta[i] - mean[i] * s[i]).collect();
    let w2: Vec<f32> = (0..k * n)
        .map(|ij| (s[ij / n] * w[ij] as f64) as f32)
        .collect();
    let c2: Vec<f32> = (0..n)
        .map(|j| (c[j] as f64 + (0..k).map(|i| t[i] * w[i * n + j] as f64).sum::<f64>()) as f32)
        .collect();
    ((w2, wd), (c2, cd))
}

/// The graph of a model (eval-mode weights) and its config.
pub fn graph<B: Backend>(
    model: &CancerNet<B>,
    cfg: &CancerNetConfig,
    fold_bn: bool,
    tta: bool,
) -> Result<GraphProto> {
    let mut g = Builder {
        nodes: Vec::new(),
        initializers: Vec::new(),
    };
    let x = if tta {
        g.dihedral(INPUT)
    } else {
        INPUT.to_string()
    };
    let x = g.features(model, cfg, x)?;
    let (mut logits, mut out) = g.classifier(model, cfg, x, fold_bn)?;
    if tta {
        (logits, out) = g.mean_of_views(out, cfg.classes as i64);
    }
    // Name the graph's outputs: rename the last nodes' outputs.
    rename_output(&mut g.nodes, &logits, LOGITS);
    rename_output(&mut g.nodes, &out, PROBABILITIES);
    Ok(g.into_graph(cfg))
}

impl Builder {
    /// The separable-conv blocks: per unit depthwise 3x3, pointwise 1x1, ReLU, BatchNorm; per
    /// block a 2x2 max pool.
    fn features<B: Backend>(
        &mut self,
        model: &CancerNet<B>,
        cfg: &CancerNetConfig,
        mut x: String,
    ) -> Result<String> {
        if model.blocks.len() != cfg.widths.len() {
            bail!(
                "checkpoint has {} blocks, the model config {}: was it trained with another model config?",
                model.blocks.len(),
                cfg.widths.len()
            );
        }
        let mut c_in = cfg.channels as i64;
        let shapes = cfg.widths.iter().zip(&cfg.depths);
        for (b, (block, (&width, &depth))) in model.blocks.iter().zip(shapes).enumerate() {
            if block.units.len() != depth {
                bail!(
                    "checkpoint block {} has {} units, the model config {depth}",
                    b + 1,
                    block.units.len()
                );
            }
            let w = width as i64;
            for (u, unit) in block.units.iter().enumerate() {
                let p = format!("block{}.sepconv{}", b + 1, u + 1);
                let sep = &unit.sepconv;
                x = self.conv(
                    &format!("{p}.depthwise"),
                    x,
                    &sep.depthwise,
                    [c_in, 1, 3, 3],
                    c_in,
                )?;
                x = self.conv(
                    &format!("{p}.pointwise"),
                    x,
                    &sep.pointwise,
                    [w, c_in, 1, 1],
                    1,
                )?;
                x = self.node("Relu", &format!("{p}.relu"), vec![x], vec![]);
                x = self.batch_norm(&format!("block{}.bn{}", b + 1, u + 1), x, &unit.bn, w)?;
                c_in = w;
            }
            let pool = vec![
                AttributeProto::from_ints("kernel_shape", vec![2, 2]),
                AttributeProto::from_ints("strides", vec![2, 2]),
            ];
            x = self.node("MaxPool", &format!("block{}.maxpool", b + 1), vec![x], pool);
        }
        Ok(x)
    }

    /// Flatten, dense + ReLU, BatchNorm (or folded into the head), head, softmax: the logits'
    /// and the probabilities' names.
    fn classifier<B: Backend>(
        &mut self,
        model: &CancerNet<B>,
        cfg: &CancerNetConfig,
        x: String,
        fold_bn: bool,
    ) -> Result<(String, String)> {
        let axis1 = || vec![AttributeProto::from_int("axis", 1)];
        let mut x = self.node("Flatten", "flatten", vec![x], axis1());
        let (flat, dense, classes) = (
            cfg.flat_features() as i64,
            cfg.dense as i64,
            cfg.classes as i64,
        );
        let (w, bias) = linear(&model.dense);
        x = self.gemm("dense", x, w, bias, [flat, dense])?;
        x = self.node("Relu", "dense.relu", vec![x], vec![]);
        let (w, bias) = if fold_bn {
            fold_bn_into(&model.dense_bn, &model.head)
        } else {
            x = self.batch_norm("dense_bn", x, &model.dense_bn, dense)?;
            linear(&model.head)
        };
        let logits = self.gemm("head", x, w, bias, [dense, classes])?;
        let out = self.node("Softmax", "softmax", vec![logits.clone()], axis1());
        Ok((logits, out))
    }

    /// The eight views' probabilities averaged; logits = log(probabilities), so that
    /// softmax(logits) is still the probabilities.
    fn mean_of_views(&mut self, probabilities: String, classes: i64) -> (String, String) {
        let shape = self.int64s("tta.shape", vec![DIHEDRAL, -1, classes]);
        let grouped = self.node("Reshape", "tta.reshape", vec![probabilities, shape], vec![]);
        let mean = vec![
            AttributeProto::from_ints("axes", vec![0]),
            AttributeProto::from_int("keepdims", 0),
        ];
        let out = self.node("ReduceMean", "tta.mean", vec![grouped], mean);
        let logits = self.node("Log", "tta.log", vec![out.clone()], vec![]);
        (logits, out)
    }

    /// The graph of the nodes built, with its named, typed input and outputs.
    fn into_graph(self, cfg: &CancerNetConfig) -> GraphProto {
        let side = cfg.input_size as i64;
        let image_dims = vec![
            Dimension::symbolic(BATCH_DIM),
            Dimension::fixed(cfg.channels as i64),
            Dimension::fixed(side),
            Dimension::fixed(side),
        ];
        let classes = cfg.classes as i64;
        let out_dims = || vec![Dimension::symbolic(BATCH_DIM), Dimension::fixed(classes)];
        GraphProto {
            node: self.nodes,
            name: Some("CancerNet".into()),
            initializer: self.initializers,
            doc_string: Some(
                "CancerNet (depthwise-separable CNN) for IDC vs healthy 50x50 breast histology patches"
                    .into(),
            ),
            input: vec![ValueInfoProto::tensor(INPUT, DataType::Float, image_dims)],
            output: vec![
                ValueInfoProto::tensor(PROBABILITIES, DataType::Float, out_dims()),
                ValueInfoProto::tensor(LOGITS, DataType::Float, out_dims()),
            ],
            value_info: vec![],
        }
    }
}

fn rename_output(nodes: &mut [NodeProto], from: &str, to: &str) {
    for n in nodes.iter_mut() {
        for v in n.input.iter_mut().chain(n.output.iter_mut()) {
            if v == from {
                *v = to.to_string();
            }
        }
    }
}
