//! The tutorial's semantics pinned against TensorFlow/Keras itself: `bench/keras_golden.py` ran
//! Keras' CancerNet on weights and a batch that a formula gives (the same here), and committed
//! what Keras computed (`tests/data/keras_golden.json`): the logits in inference and training
//! mode, the class-weighted loss of two Adagrad steps at a learning rate with the legacy decay,
//! and every tensor after them (BatchNorm's moving statistics included). Here our CancerNet, on
//! the trainer's CPU backend and fused kernels, with the trainer's loss, optimizer and schedule,
//! runs the same and must agree within float error.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Param, RunningState};
use burn::nn::BatchNorm;
use burn::optim::GradientsParams;
use burn::prelude::*;
use models::{CancerNet, CancerNetConfig};
use trainer::config::TrainConfig;
use trainer::optim::Optim;
use trainer::train::weighted_loss;

type B = Autodiff<Flex>;
type Dev = burn::tensor::Device<B>;

const BATCH: usize = 8;

/// SplitMix64's output function.
fn splitmix64(x: u64) -> u64 {
    let z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The fixture's numbers: `len` in [0, 1) from `stream` (the top 24 bits of SplitMix64).
fn uniform(stream: u64, len: usize) -> impl Iterator<Item = f64> {
    (0..len as u64)
        .map(move |i| (splitmix64((stream << 32) + i) >> 40) as f64 / (1u64 << 24) as f64)
}

/// Tensor `id`'s values: uniform numbers mapped to [-1, 1), scaled (f64, then f32).
fn value(id: u64, len: usize, scale: f64, offset: f64) -> Vec<f32> {
    uniform(id, len)
        .map(|u| (offset + scale * (2.0 * u - 1.0)) as f32)
        .collect()
}

/// The input batch's stream in the fixture (the tensors' are their numbers, from 0).
const IMAGES: u64 = 1000;

/// Sets every tensor of `model` from the formula, in the order `bench/keras_golden.py` numbers
/// them; returns their names in that order.
struct Fill<'a> {
    id: u64,
    device: &'a Dev,
    names: Vec<String>,
}

impl Fill<'_> {
    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        scale: f64,
        offset: f64,
    ) -> Tensor<B, D> {
        let len = shape.iter().product();
        let t = Tensor::from_data(
            TensorData::new(value(self.id, len, scale, offset), shape),
            self.device,
        );
        self.id += 1;
        self.names.push(name.to_string());
        t
    }

    fn param<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        scale: f64,
    ) -> Param<Tensor<B, D>> {
        Param::from_tensor(self.tensor(name, shape, scale, 0.0))
    }

    fn batch_norm(&mut self, name: &str, bn: &mut BatchNorm<B>, c: usize) {
        bn.gamma = Param::from_tensor(self.tensor(&format!("{name}.gamma"), [c], 0.2, 1.0));
        bn.beta = self.param(&format!("{name}.beta"), [c], 0.1);
        bn.running_mean =
            RunningState::new(self.tensor(&format!("{name}.running_mean"), [c], 0.05, 0.0));
        bn.running_var =
            RunningState::new(self.tensor(&format!("{name}.running_var"), [c], 0.3, 1.0));
    }
}

fn formula_model(cfg: &CancerNetConfig, device: &Dev) -> (CancerNet<B>, Vec<String>) {
    let mut model = cfg.init::<B>(device);
    let mut f = Fill {
        id: 0,
        device,
        names: Vec::new(),
    };
    let mut c_in = cfg.channels;
    for (b, (block, &w)) in model.blocks.iter_mut().zip(&cfg.widths).enumerate() {
        for (u, unit) in block.units.iter_mut().enumerate() {
            let p = format!("blocks.{b}.units.{u}");
            let sep = &mut unit.sepconv;
            sep.depthwise.weight = f.param(
                &format!("{p}.sepconv.depthwise.weight"),
                [c_in, 1, 3, 3],
                0.5,
            );
            let scale = 1.5 / (c_in as f64).sqrt();
            sep.pointwise.weight = f.param(
                &format!("{p}.sepconv.pointwise.weight"),
                [w, c_in, 1, 1],
                scale,
            );
            sep.pointwise.bias = Some(f.param(&format!("{p}.sepconv.pointwise.bias"), [w], 0.05));
            f.batch_norm(&format!("{p}.bn"), &mut unit.bn, w);
            c_in = w;
        }
    }
    let flat = cfg.flat_features();
    model.dense.weight = f.param(
        "dense.weight",
        [flat, cfg.dense],
        1.5 / (flat as f64).sqrt(),
    );
    model.dense.bias = Some(f.param("dense.bias", [cfg.dense], 0.05));
    f.batch_norm("dense_bn", &mut model.dense_bn, cfg.dense);
    model.head.weight = f.param(
        "head.weight",
        [cfg.dense, cfg.classes],
        1.5 / (cfg.dense as f64).sqrt(),
    );
    model.head.bias = Some(f.param("head.bias", [cfg.classes], 0.05));
    (model, f.names)
}

/// Every tensor of `model` by the fixture's names, as f64.
fn tensors(model: &CancerNet<B>) -> Vec<Vec<f64>> {
    let v = |t: Tensor<B, 1>| t.into_data().convert::<f64>().into_vec::<f64>().unwrap();
    let flat = |t: Tensor<B, 4>| v(t.flatten(0, 3));
    let bn = |bn: &BatchNorm<B>| {
        vec![
            v(bn.gamma.val()),
            v(bn.beta.val()),
            v(bn.running_mean.value()),
            v(bn.running_var.value()),
        ]
    };
    let mut out = Vec::new();
    for block in &model.blocks {
        for unit in &block.units {
            let sep = &unit.sepconv;
            out.push(flat(sep.depthwise.weight.val()));
            out.push(flat(sep.pointwise.weight.val()));
            out.push(v(sep.pointwise.bias.as_ref().unwrap().val()));
            out.extend(bn(&unit.bn));
        }
    }
    out.push(v(model.dense.weight.val().flatten(0, 1)));
    out.push(v(model.dense.bias.as_ref().unwrap().val()));
    out.extend(bn(&model.dense_bn));
    out.push(v(model.head.weight.val().flatten(0, 1)));
    out.push(v(model.head.bias.as_ref().unwrap().val()));
    out
}

/// Sum, and a sum weighted by position (as the fixture's `checksums`).
fn checksums(v: &[f64]) -> [f64; 2] {
    let weighted = v
        .iter()
        .enumerate()
        .map(|(i, x)| x * (1 + i % 7) as f64)
        .sum();
    [v.iter().sum(), weighted]
}

fn images(side: usize, device: &Dev) -> Tensor<B, 4> {
    let x: Vec<f32> = uniform(IMAGES, BATCH * 3 * side * side)
        .map(|u| u as f32)
        .collect();
    Tensor::from_data(TensorData::new(x, [BATCH, 3, side, side]), device)
}

fn logits<Bk: Backend>(t: Tensor<Bk, 2>) -> Vec<f64> {
    t.into_data().convert::<f64>().into_vec().unwrap()
}

fn golden() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keras_golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn numbers(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(numbers).collect(),
        v => vec![v.as_f64().unwrap()],
    }
}

/// The largest |ours - keras| / max(|keras|, floor) over `ours`.
fn worst(what: &str, ours: &[f64], keras: &[f64], floor: f64) -> f64 {
    assert_eq!(ours.len(), keras.len(), "{what}");
    let w = ours
        .iter()
        .zip(keras)
        .map(|(a, b)| (a - b).abs() / b.abs().max(floor))
        .fold(0.0, f64::max);
    eprintln!("{what}: worst relative difference {w:.2e}");
    w
}

#[test]
fn cancernet_loss_adagrad_and_decay_match_keras() {
    let g = golden();
    let device = Default::default();
    let mut cfg = TrainConfig::default();
    cfg.model = cfg
        .model
        .clone()
        .with_conv_dropout(0.0)
        .with_dense_dropout(0.0);
    cfg.train.learning_rate = g["learning_rate"].as_f64().unwrap();
    cfg.train.decay = g["decay"].as_f64();
    cfg.validate().unwrap();
    let labels: Vec<u8> = numbers(&g["labels"]).iter().map(|&y| y as u8).collect();
    let w = numbers(&g["class_weights"]);
    let x = images(cfg.model.input_size, &device);

    let (model, names) = formula_model(&cfg.model, &device);
    let eval = logits(model.valid().forward(x.clone().inner()));
    assert!(
        worst(
            "inference-mode logits",
            &eval,
            &numbers(&g["eval_logits"]),
            1.0
        ) < 1e-6
    );
    let train = logits(model.forward(x.clone()));
    assert!(
        worst(
            "training-mode logits",
            &train,
            &numbers(&g["train_logits"]),
            1.0
        ) < 4e-5
    );

    // Training mode moved the running statistics: the steps start from the formula again.
    let (mut model, _) = formula_model(&cfg.model, &device);
    let mut optim = Optim::<B>::new(&cfg.train);
    let steps = numbers(&g["losses"]).len();
    let mut losses = Vec::new();
    for t in 0..steps {
        let loss = weighted_loss(model.forward(x.clone()), &labels, [w[0], w[1]], &device);
        losses.push(loss.clone().into_scalar().elem::<f64>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(cfg.learning_rate_at(t, 100), model, grads);
    }
    assert!(worst("losses", &losses, &numbers(&g["losses"]), 0.0) < 6e-6);
    let after = logits(model.valid().forward(x.inner()));
    assert!(
        worst(
            "inference-mode logits after the steps",
            &after,
            &numbers(&g["after_eval_logits"]),
            1.0
        ) < 3e-6
    );
    let sums: Vec<f64> = tensors(&model).iter().flat_map(|t| checksums(t)).collect();
    let want: Vec<f64> = names
        .iter()
        .flat_map(|n| numbers(&g["after_checksums"][n]))
        .collect();
    assert!(
        worst(
            "every tensor after the steps (checksums)",
            &sums,
            &want,
            1e-2
        ) < 1e-4
    );
}

/// `class_weights: auto` is the tutorial's `classTotals.max() / classTotals`, per class (an
/// empty class counted as 1); `none` is 1 for both, fixed weights pass through.
#[test]
fn auto_class_weights_are_the_tutorials() {
    use trainer::config::{AutoWeights, ClassWeights};
    use trainer::train::class_weights;
    let mut cfg = TrainConfig::default();
    cfg.train.class_weights = ClassWeights::Auto(AutoWeights::Auto);
    assert_eq!(class_weights(&cfg, [300, 120]), [1.0, 2.5]);
    assert_eq!(class_weights(&cfg, [80, 200]), [2.5, 1.0]);
    assert_eq!(class_weights(&cfg, [0, 5]), [5.0, 1.0]);
    cfg.train.class_weights = ClassWeights::Auto(AutoWeights::None);
    assert_eq!(class_weights(&cfg, [300, 120]), [1.0, 1.0]);
    cfg.train.class_weights = ClassWeights::Fixed([0.7, 3.0]);
    assert_eq!(class_weights(&cfg, [300, 120]), [0.7, 3.0]);
}
