//! CancerNet, the tutorial's depthwise-separable CNN for 50x50 IDC patches, as a burn module.
//!
//! Layer for layer the Keras model of the tutorial: SeparableConv2D(k) is a depthwise 3x3 conv
//! (one filter per input channel, 'same' padding, no bias) then a pointwise 1x1 conv with bias.
//! Blocks of [SepConv ReLU BN] x depth, MaxPool 2, Dropout; then Dense ReLU BN Dropout Dense.
//! `forward` returns logits; softmax is applied by the loss, the metrics and the ONNX graph.

use burn::module::{ModuleMapper, Param, ParamId, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Initializer, Linear, LinearConfig,
    PaddingConfig2d,
};
use burn::prelude::*;
use burn::tensor::activation::softmax;

#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod cube;
/// Without a GPU backend in the build, no backend is served by GPU kernels.
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
pub mod cube {
    use burn::prelude::*;

    pub fn depthwise3x3<B: Backend>(
        x: Tensor<B, 4>,
        weight: Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
        Err((x, weight))
    }

    /// A layer's input, weight and bias, handed back.
    type LayerInputs<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Tensor<B, 1>);

    pub fn pointwise<B: Backend>(
        x: Tensor<B, 4>,
        weight: Tensor<B, 4>,
        bias: Tensor<B, 1>,
    ) -> Result<Tensor<B, 4>, LayerInputs<B, 4>> {
        Err((x, weight, bias))
    }

    pub fn linear<B: Backend>(
        x: Tensor<B, 2>,
        weight: Tensor<B, 2>,
        bias: Tensor<B, 1>,
    ) -> Result<Tensor<B, 2>, LayerInputs<B, 2>> {
        Err((x, weight, bias))
    }

    /// A BatchNorm layer, its input, and the pool's dropout probability, handed back.
    type BatchNormInputs<'a, B> = (&'a burn::nn::BatchNorm<B>, Tensor<B, 4>, Option<f32>);

    pub fn relu_batch_norm<B: Backend>(
        bn: &burn::nn::BatchNorm<B>,
        z: Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>, BatchNormInputs<'_, B>> {
        Err((bn, z, None))
    }

    pub fn relu_batch_norm_pool<B: Backend>(
        bn: &burn::nn::BatchNorm<B>,
        z: Tensor<B, 4>,
        p: f32,
    ) -> Result<Tensor<B, 4>, BatchNormInputs<'_, B>> {
        Err((bn, z, Some(p)))
    }

    /// Adagrad updates (parameter, gradient, accumulator), learning rate and epsilon.
    type AdagradInputs<B> = (Vec<(Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>)>, f32, f32);
    /// Each tensor's new values and accumulator.
    type AdagradUpdated<B> = Vec<(Tensor<B, 1>, Tensor<B, 1>)>;

    pub fn adagrad<B: Backend>(
        inputs: AdagradInputs<B>,
    ) -> Result<AdagradUpdated<B>, AdagradInputs<B>> {
        Err(inputs)
    }

    pub fn cross_entropy<B: Backend>(
        logits: Tensor<B, 2>,
        target: Tensor<B, 2>,
    ) -> Result<Tensor<B, 1>, (Tensor<B, 2>, Tensor<B, 2>)> {
        Err((logits, target))
    }

    pub fn serves<B: Backend>() -> bool {
        false
    }

    pub fn is_cube<B: Backend>() -> bool {
        false
    }
}
pub mod fast_ops;
pub mod kernels;
mod quiet;
pub use fast_ops::Kernels;
pub use quiet::catch_quietly;

/// Everything that shapes the network: the trainer config's `model:` section (a key left out
/// keeps the tutorial's value), and saved as JSON beside the weights (`model.json`), so the
/// exporter and a resumed run rebuild exactly this model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CancerNetConfig {
    /// Square input side (the tutorial resizes 50x50 patches to 48x48).
    pub input_size: usize,
    pub channels: usize,
    pub classes: usize,
    /// Output channels of each block's separable convolutions.
    pub widths: Vec<usize>,
    /// Number of [SepConv ReLU BN] units per block.
    pub depths: Vec<usize>,
    /// Width of the hidden dense layer.
    pub dense: usize,
    pub conv_dropout: f64,
    pub dense_dropout: f64,
    /// BatchNorm momentum in Keras' sense: the weight of the old running average (burn's
    /// momentum, the weight of the new batch statistic, is 1 - this).
    pub bn_momentum: f64,
    /// BatchNorm epsilon (Keras' default).
    pub bn_epsilon: f64,
}

/// The tutorial's CancerNet.
impl Default for CancerNetConfig {
    fn default() -> Self {
        CancerNetConfig {
            input_size: 48,
            channels: 3,
            classes: 2,
            widths: vec![32, 64, 128],
            depths: vec![1, 2, 3],
            dense: 256,
            conv_dropout: 0.25,
            dense_dropout: 0.5,
            bn_momentum: 0.99,
            bn_epsilon: 1e-3,
        }
    }
}

/// burn's `save`/`load` of `model.json`.
impl burn::config::Config for CancerNetConfig {}

/// As burn's configs print: pretty JSON, `model.json`'s text.
impl std::fmt::Display for CancerNetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&burn::config::config_to_json(self))
    }
}

/// `with_<field>(value)`: the config with one field changed, as burn's configs build.
macro_rules! builders {
    ($($method:ident => $field:ident: $ty:ty),* $(,)?) => {
        impl CancerNetConfig {
            $(
                pub fn $method(mut self, $field: $ty) -> Self {
                    self.$field = $field;
                    self
                }
            )*
        }
    };
}

builders!(
    with_input_size => input_size: usize,
    with_channels => channels: usize,
    with_classes => classes: usize,
    with_widths => widths: Vec<usize>,
    with_depths => depths: Vec<usize>,
    with_dense => dense: usize,
    with_conv_dropout => conv_dropout: f64,
    with_dense_dropout => dense_dropout: f64,
    with_bn_momentum => bn_momentum: f64,
    with_bn_epsilon => bn_epsilon: f64,
);

impl CancerNetConfig {
    /// Checks that the sizes fit together; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.widths.is_empty() || self.widths.len() != self.depths.len() {
            return Err(format!(
                "model.widths ({:?}) and model.depths ({:?}) must be non-empty and the same length",
                self.widths, self.depths
            ));
        }
        if self.widths.contains(&0)
            || self.depths.contains(&0)
            || self.dense == 0
            || self.classes < 2
            || self.channels == 0
        {
            return Err(
                "model widths, depths, dense and channels must be positive, classes >= 2".into(),
            );
        }
        if self.feature_side() == 0 {
            return Err(format!(
                "model.input_size {} is too small for {} pooling blocks",
                self.input_size,
                self.widths.len()
            ));
        }
        for (key, p) in [
            ("conv_dropout", self.conv_dropout),
            ("dense_dropout", self.dense_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("model.{key} = {p} must be in [0, 1)"));
            }
        }
        Ok(())
    }

    /// Side of the feature map entering the classifier (each block halves it, flooring).
    pub fn feature_side(&self) -> usize {
        self.widths.iter().fold(self.input_size, |s, _| s / 2)
    }

    /// Inputs of the hidden dense layer (6 x 6 x 128 = 4608 for the tutorial's model).
    pub fn flat_features(&self) -> usize {
        self.feature_side().pow(2) * self.widths.last().copied().unwrap_or(0)
    }

    /// The model with its initial weights drawn on the CPU from `seed` (Glorot-uniform kernels,
    /// zero biases, BatchNorm at identity), then put on `device`: a run starts from the same
    /// weights whatever its device (each backend has its own random generator).
    pub fn init_seeded<B: Backend>(&self, seed: u64, device: &B::Device) -> CancerNet<B> {
        use burn::backend::Flex;
        use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
        let cpu = Default::default();
        Flex::seed(&cpu, seed);
        let record = self.init::<Flex>(&cpu).into_record();
        let rec = BinBytesRecorder::<FullPrecisionSettings>::default();
        let bytes = rec.record(record, ()).expect("a record in memory");
        self.init::<B>(device).load_record(
            rec.load(bytes, device)
                .expect("the record of the same config"),
        )
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> CancerNet<B> {
        let mut in_ch = self.channels;
        let blocks = self
            .widths
            .iter()
            .zip(&self.depths)
            .map(|(&width, &depth)| {
                let units = (0..depth)
                    .map(|_| {
                        let unit = ConvUnit {
                            sepconv: SepConv::new(in_ch, width, device),
                            bn: BatchNormConfig::new(width)
                                .with_momentum(1.0 - self.bn_momentum)
                                .with_epsilon(self.bn_epsilon)
                                .init(device),
                        };
                        in_ch = width;
                        unit
                    })
                    .collect();
                Block { units }
            })
            .collect();
        let model = CancerNet {
            blocks,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            conv_dropout: DropoutConfig::new(self.conv_dropout).init(),
            dense: dense_layer(self.flat_features(), self.dense, device),
            dense_bn: BatchNormConfig::new(self.dense)
                .with_momentum(1.0 - self.bn_momentum)
                .with_epsilon(self.bn_epsilon)
                .init(device),
            dense_dropout: DropoutConfig::new(self.dense_dropout).init(),
            head: dense_layer(self.dense, self.classes, device),
        };
        fixed_ids(model)
    }
}

/// The model with parameter ids numbered in module order instead of burn's random ones, so that
/// the same training writes the same checkpoint bytes (the ids are saved with the weights). The
/// parameters stay lazy: they are still initialized in the order the forward pass first uses them.
fn fixed_ids<B: Backend>(model: CancerNet<B>) -> CancerNet<B> {
    struct Numbered(u64);
    impl<B: Backend> ModuleMapper<B> for Numbered {
        fn map_float<const D: usize>(
            &mut self,
            mut param: Param<Tensor<B, D>>,
        ) -> Param<Tensor<B, D>> {
            self.0 += 1;
            param.id = ParamId::from(self.0);
            param
        }
    }
    let mut model = model.map(&mut Numbered(0));
    // BatchNorm's running statistics are not parameters (the mapper cannot renumber them).
    let mut next = 1u64 << 32;
    for bn in model.batch_norms() {
        for state in [&mut bn.running_mean, &mut bn.running_var] {
            *state = RunningState::with_id(ParamId::from(next), state.value());
            next += 1;
        }
    }
    model
}

/// Keras' SeparableConv2D: depthwise 3x3 ('same', no bias) then pointwise 1x1 with bias.
#[derive(Module, Debug)]
pub struct SepConv<B: Backend> {
    pub depthwise: Conv2d<B>,
    pub pointwise: Conv2d<B>,
}

impl<B: Backend> SepConv<B> {
    fn new(in_ch: usize, out_ch: usize, device: &B::Device) -> Self {
        let glorot = Initializer::XavierUniform { gain: 1.0 };
        let depthwise = Conv2dConfig::new([in_ch, in_ch], [3, 3])
            .with_groups(in_ch)
            .with_padding(PaddingConfig2d::Same)
            .with_bias(false)
            .with_initializer(glorot.clone())
            .init(device);
        let mut pointwise = Conv2dConfig::new([in_ch, out_ch], [1, 1])
            .with_initializer(glorot)
            .init(device);
        pointwise.bias = Some(Param::from_tensor(Tensor::zeros([out_ch], device)));
        SepConv {
            depthwise,
            pointwise,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>, kernels: Kernels) -> Tensor<B, 4> {
        let x = fast_ops::depthwise3x3(&self.depthwise, x, kernels);
        fast_ops::pointwise(&self.pointwise, x, kernels)
    }
}

/// A 1x1 convolution as one batched matrix product, `W [Co, Ci] x X [N, Ci, H*W]`, plus bias: the
/// same arithmetic as `Conv2d::forward` for a 1x1 kernel with stride 1, through burn's GEMM
/// (which uses both cores) instead of its general convolution path.
pub fn pointwise_matmul<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, ci, h, w] = x.dims();
    let co = conv.weight.dims()[0];
    let weight: Tensor<B, 3> = conv.weight.val().reshape([1, co, ci]);
    let y = weight
        .matmul(x.reshape([n, ci, h * w]))
        .reshape([n * co, h * w]);
    // The bias as a [N*Co, 1] column: flex broadcasts columns fast, [1, Co, 1] slowly.
    let y = match &conv.bias {
        Some(bias) => {
            y + bias
                .val()
                .reshape([1, co])
                .repeat_dim(0, n)
                .reshape([n * co, 1])
        }
        None => y,
    };
    y.reshape([n, co, h, w])
}

/// SepConv, ReLU, BatchNorm (the tutorial's order: activation before normalisation).
#[derive(Module, Debug)]
pub struct ConvUnit<B: Backend> {
    pub sepconv: SepConv<B>,
    pub bn: BatchNorm<B>,
}

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub units: Vec<ConvUnit<B>>,
}

#[derive(Module, Debug)]
pub struct CancerNet<B: Backend> {
    pub blocks: Vec<Block<B>>,
    pub pool: MaxPool2d,
    pub conv_dropout: Dropout,
    pub dense: Linear<B>,
    pub dense_bn: BatchNorm<B>,
    pub dense_dropout: Dropout,
    pub head: Linear<B>,
}

fn dense_layer<B: Backend>(d_in: usize, d_out: usize, device: &B::Device) -> Linear<B> {
    let mut layer = LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::XavierUniform { gain: 1.0 })
        .init(device);
    layer.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
    layer
}

impl<B: Backend> CancerNet<B> {
    /// Logits `[batch, classes]` for images `[batch, channels, size, size]` scaled to [0, 1].
    /// Dropout and batch statistics apply only on an autodiff backend (training).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_with(x, Kernels::Fast)
    }

    /// `forward` with a choice of layer implementations: `Kernels::Burn` composes burn's own
    /// ops (the reference the fast CPU kernels are tested against).
    pub fn forward_with(&self, x: Tensor<B, 4>, kernels: Kernels) -> Tensor<B, 2> {
        let mut x = x;
        for block in &self.blocks {
            let (last, units) = block.units.split_last().expect("validated: depth >= 1");
            for unit in units {
                let z = unit.sepconv.forward(x, kernels);
                x = fast_ops::relu_batch_norm(&unit.bn, z, kernels);
            }
            let z = last.sepconv.forward(x, kernels);
            x = fast_ops::relu_batch_norm_pool(&last.bn, z, self.conv_dropout.prob, kernels);
        }
        // Flatten in NCHW order (c, h, w), as ONNX's Flatten does.
        let x: Tensor<B, 2> = x.flatten(1, 3);
        let x = fast_ops::linear(&self.dense, x, kernels);
        let x = fast_ops::dense_relu_batch_norm(&self.dense_bn, x, kernels);
        fast_ops::linear(&self.head, self.dense_dropout.forward(x), kernels)
    }

    /// Every BatchNorm, in module order.
    pub fn batch_norms(&mut self) -> impl Iterator<Item = &mut BatchNorm<B>> {
        let units = self.blocks.iter_mut().flat_map(|b| &mut b.units);
        units.map(|u| &mut u.bn).chain([&mut self.dense_bn])
    }

    /// Class probabilities `[batch, classes]`.
    pub fn probabilities(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        softmax(self.forward(x), 1)
    }

    /// Class probabilities averaged over the eight flips and quarter turns of each image
    /// (test-time augmentation; the exporter's `--tta` graph computes the same).
    pub fn probabilities_tta(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let n = x.dims()[0];
        let p = softmax(self.forward(dihedral(x)), 1);
        let classes = p.dims()[1];
        p.reshape([DIHEDRAL as usize, n, classes])
            .mean_dim(0)
            .reshape([n, classes])
    }

    /// `probabilities` or `probabilities_tta`.
    pub fn predict(&self, x: Tensor<B, 4>, tta: bool) -> Tensor<B, 2> {
        if tta {
            self.probabilities_tta(x)
        } else {
            self.probabilities(x)
        }
    }
}

impl<B: burn::tensor::backend::AutodiffBackend> CancerNet<B> {
    /// The same weights with every BatchNorm's running statistics recomputed as the mean of the
    /// batch statistics over `batches`, each batch weighted by its size, with dropout off
    /// ("precise BatchNorm", Wu & Johnson 2021). The running averages training leaves (momentum
    /// 0.99) mostly remember the weights of the last ~100 steps, not the final ones, and an
    /// average of epochs' weights has statistics of its own. Feed batches of the training batch
    /// size: the statistics the weights were trained to expect are those of such batches. The
    /// model's parameters must be initialized (loaded or seeded): a lazy one would be drawn anew.
    pub fn precise_batch_norm(self, batches: impl IntoIterator<Item = Tensor<B, 4>>) -> Self {
        let mut model = self;
        // A clone of a module shares its running statistics: give this one its own.
        for bn in model.batch_norms() {
            for state in [&mut bn.running_mean, &mut bn.running_var] {
                let p = state.clone().into_record();
                *state = RunningState::with_id(p.id, p.val());
            }
        }
        // A clone that shares those statistics, without dropout, whose forward passes keep no
        // autodiff graph (without a backward pass, a tracked graph would hold every batch's
        // activations: a pass over the training split filled 24 GB).
        let mut probe = model.clone().no_grad();
        (probe.conv_dropout.prob, probe.dense_dropout.prob) = (0.0, 0.0);
        let mut seen = 0;
        for x in batches {
            // Momentum n / (images so far) makes the running value the size-weighted mean of the
            // batches so far.
            let n = x.dims()[0];
            seen += n;
            probe.set_bn_momentum(n as f64 / seen.max(1) as f64);
            drop(probe.forward(x));
        }
        model
    }

    fn set_bn_momentum(&mut self, momentum: f64) {
        for bn in self.batch_norms() {
            bn.momentum = momentum;
        }
    }
}

/// How many images the dihedral group makes of one.
pub const DIHEDRAL: i64 = 8;

/// The eight flips and quarter turns of each image of `x` `[n, c, h, w]`, as one batch
/// `[8n, c, h, w]`: x, x flipped along w, along h, along both, then the same four of x with h and
/// w swapped (a transpose; with one flip it is a quarter turn).
pub fn dihedral<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let four = |x: Tensor<B, 4>| {
        vec![
            x.clone(),
            x.clone().flip([3]),
            x.clone().flip([2]),
            x.flip([2, 3]),
        ]
    };
    let mut all = four(x.clone());
    all.extend(four(x.swap_dims(2, 3)));
    Tensor::cat(all, 0)
}

/// burn's BatchNorm, computed on a `[batch * channels, height * width]` view of the input: the
/// same arithmetic and running-statistics update, but every per-channel operand is a column
/// broadcast, which the flex CPU backend does ~18x faster than the `[1, C, 1, 1]` broadcasts of
/// burn's own implementation (see `cargo bench -p trainer --bench ops`). Training mode (batch
/// statistics, running averages updated) on an autodiff backend, running statistics otherwise.
pub fn batch_norm_nchw<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let x2 = x.reshape([n * c, h * w]);
    // A per-channel vector [C] as a column [N*C, 1] matching x2's rows.
    let per_row = |v: Tensor<B, 1>| v.reshape([1, c]).repeat_dim(0, n).reshape([n * c, 1]);
    let per_channel_mean = |t: Tensor<B, 2>| {
        t.sum_dim(1)
            .reshape([n, c])
            .sum_dim(0)
            .reshape([c])
            .div_scalar((n * h * w) as f32)
    };
    let (gamma, beta) = (bn.gamma.val(), bn.beta.val());
    let y = if B::ad_enabled(&x2.device()) {
        let mean = per_channel_mean(x2.clone());
        let centred = x2 - per_row(mean.clone());
        let var = per_channel_mean(centred.clone().square());
        update_running_stats(bn, mean, var.clone());
        let scale = gamma / var.add_scalar(bn.epsilon).sqrt();
        centred * per_row(scale) + per_row(beta)
    } else {
        let scale = gamma / bn.running_var.value().add_scalar(bn.epsilon).sqrt();
        let shift = beta - bn.running_mean.value() * scale.clone();
        x2 * per_row(scale) + per_row(shift)
    };
    y.reshape([n, c, h, w])
}

/// Moves BatchNorm's running averages towards a batch's mean and (biased) variance, as burn does.
pub(crate) fn update_running_stats<B: Backend>(
    bn: &BatchNorm<B>,
    mean: Tensor<B, 1>,
    var: Tensor<B, 1>,
) {
    let m = bn.momentum;
    let running_mean =
        bn.running_mean.value_sync().mul_scalar(1.0 - m) + mean.detach().mul_scalar(m);
    let running_var = bn.running_var.value_sync().mul_scalar(1.0 - m) + var.detach().mul_scalar(m);
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());
}

/// (all, trainable) parameter counts as Keras reports them: BatchNorm's running mean and
/// variance count in `all` but are not trainable.
pub fn parameter_counts<B: Backend>(model: &CancerNet<B>) -> (usize, usize) {
    let all = model.num_params();
    let bn_features: usize = model
        .blocks
        .iter()
        .flat_map(|b| &b.units)
        .map(|u| u.bn.gamma.dims()[0])
        .sum::<usize>()
        + model.dense_bn.gamma.dims()[0];
    (all, all - 2 * bn_features)
}

#[cfg(test)]
mod tests;
