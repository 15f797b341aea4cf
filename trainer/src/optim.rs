//! Adagrad as Keras implements it (the tutorial's optimizer): the accumulator starts at
//! `initial_accumulator` (0.1), `acc += g^2`, `p -= lr * g / (sqrt(acc) + epsilon)`. burn's own
//! AdaGrad starts the accumulator at zero, which makes the first step lr * sign(g) for every
//! weight. The learning rate of each step (Keras' legacy decay) is passed in by the loop.
//! `Optim` is the optimizer a config asks for: that Adagrad, or burn's Adam (`train.optimizer`).

use crate::config::{OptimizerKind, TrainSection};
use burn::backend::Flex;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, AdamConfig, GradientsParams, Optimizer, SimpleOptimizer};
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;
use models::CancerNet;
use models::fast_ops::{cast, same};
use rayon::prelude::*;

#[doc(hidden)] // public for the GPU tests
pub mod fused;

#[derive(Clone, Debug)]
pub struct KerasAdagrad {
    pub initial_accumulator: f64,
    pub epsilon: f64,
}

/// Keras' settings, the config's defaults.
impl Default for KerasAdagrad {
    fn default() -> KerasAdagrad {
        KerasAdagrad::from_train(&TrainSection::default())
    }
}

#[derive(Record, Clone)]
pub struct AdagradState<B: Backend, const D: usize> {
    pub accumulator: Tensor<B, D>,
}

impl<B: Backend> SimpleOptimizer<B> for KerasAdagrad {
    type State<const D: usize> = AdagradState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let acc = match state {
            Some(s) => s.accumulator,
            None => self.first_accumulator(&grad),
        };
        // On the flex CPU backend, and with the GPU kernel on burn's cubecl backends, one pass
        // over the three tensors instead of seven ops.
        let (lr32, eps32) = (lr as f32, self.epsilon as f32);
        let state = |accumulator| Some(AdagradState { accumulator });
        let fused =
            cast::<_, (Tensor<Flex, D>, Tensor<Flex, D>, Tensor<Flex, D>)>((tensor, grad, acc));
        let (tensor, grad, acc) = match fused {
            Ok((p, g, a)) => {
                let (p, a) = adagrad_flex(p, g, a, lr32, eps32);
                return (same(p), state(same(a)));
            }
            Err(unfused) => unfused,
        };
        if models::cube::is_cube::<B>() {
            let shape = tensor.shape();
            let flat = |t: Tensor<B, D>| t.reshape([shape.num_elements()]);
            let update = vec![(flat(tensor), flat(grad), flat(acc))];
            let Ok(mut new) = models::cube::adagrad((update, lr32, eps32)) else {
                unreachable!("a cubecl backend takes the update kernel")
            };
            let (p, a) = new.remove(0);
            return (p.reshape(shape.clone()), state(a.reshape(shape)));
        }
        let acc = acc + grad.clone().powi_scalar(2);
        let update = grad
            .div(acc.clone().sqrt().add_scalar(self.epsilon))
            .mul_scalar(lr);
        (tensor - update, state(acc))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        AdagradState {
            accumulator: state.accumulator.to_device(device),
        }
    }
}

/// The Adagrad update of `param` and `acc` for gradient `grad`, in one parallel pass.
fn adagrad_flex<const D: usize>(
    param: Tensor<Flex, D>,
    grad: Tensor<Flex, D>,
    acc: Tensor<Flex, D>,
    lr: f32,
    eps: f32,
) -> (Tensor<Flex, D>, Tensor<Flex, D>) {
    let shape = param.shape();
    let values = |t: Tensor<Flex, D>| t.into_data().into_vec::<f32>().expect("f32 parameters");
    let (mut p, g, mut a) = (values(param), values(grad), values(acc));
    p.par_chunks_mut(1 << 14)
        .zip(a.par_chunks_mut(1 << 14))
        .zip(g.par_chunks(1 << 14))
        .for_each(|((p, a), g)| adagrad_update(p, a, g, lr, eps));
    let device = Default::default();
    (
        Tensor::from_data(TensorData::new(p, shape.clone()), &device),
        Tensor::from_data(TensorData::new(a, shape), &device),
    )
}

/// Keras' Adagrad step on slices: `a += g^2; p -= lr * g / (sqrt(a) + eps)`, 8 wide with AVX2.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn adagrad_update(p: &mut [f32], a: &mut [f32], g: &[f32], lr: f32, eps: f32) {
    for ((p, a), g) in p.iter_mut().zip(a.iter_mut()).zip(g) {
        *a += g * g;
        *p -= lr * g / (a.sqrt() + eps);
    }
}

impl KerasAdagrad {
    /// A parameter's accumulator before its first step: `initial_accumulator` everywhere.
    fn first_accumulator<B: Backend, const D: usize>(&self, grad: &Tensor<B, D>) -> Tensor<B, D> {
        grad.full_like(self.initial_accumulator)
    }

    /// The settings of a run's `train` section.
    pub fn from_train(train: &TrainSection) -> KerasAdagrad {
        KerasAdagrad {
            initial_accumulator: train.initial_accumulator,
            epsilon: train.epsilon,
        }
    }

    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }
}

/// The optimizer of a run, with its state.
pub enum Optim<B: AutodiffBackend> {
    Adagrad(OptimizerAdaptor<KerasAdagrad, CancerNet<B>, B>),
    Adam(OptimizerAdaptor<Adam, CancerNet<B>, B>),
}

impl<B: AutodiffBackend> Optim<B> {
    /// Fresh state for the optimizer `train` names, with its settings.
    pub fn new(train: &TrainSection) -> Optim<B> {
        match train.optimizer {
            OptimizerKind::Adagrad => Optim::Adagrad(KerasAdagrad::from_train(train).init()),
            OptimizerKind::Adam => Optim::Adam(
                AdamConfig::new()
                    .with_beta_1(train.beta_1 as f32)
                    .with_beta_2(train.beta_2 as f32)
                    .with_epsilon(train.epsilon as f32)
                    .init(),
            ),
        }
    }

    pub fn step(&mut self, lr: f64, model: CancerNet<B>, grads: GradientsParams) -> CancerNet<B> {
        match self {
            Optim::Adagrad(o) => fused::step(o, lr, model, grads),
            Optim::Adam(o) => o.step(lr, model, grads),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn fused_update_matches_the_generic_one() {
        // Flex takes the fused kernel; the same math on an autodiff backend takes burn's ops.
        use burn::backend::Autodiff;
        let opt = KerasAdagrad::default();
        let dev = Default::default();
        let p = Tensor::<Flex, 2>::random([70, 300], burn::tensor::Distribution::Default, &dev);
        let g = Tensor::<Flex, 2>::random([70, 300], burn::tensor::Distribution::Default, &dev);
        let (fused, s) = opt.step(0.01, p.clone(), g.clone(), None);
        let (fused, _) = opt.step(0.01, fused, g.clone(), s);
        let ad = |t: Tensor<Flex, 2>| Tensor::<Autodiff<Flex>, 2>::from_inner(t);
        let (generic, s) = opt.step(0.01, ad(p), ad(g.clone()), None);
        let (generic, _) = opt.step(0.01, generic, ad(g), s);
        let diff: f32 = (fused - generic.inner()).abs().max().into_scalar();
        assert!(diff < 1e-6, "max diff {diff}");
    }

    #[test]
    fn matches_the_keras_formula() {
        let opt = KerasAdagrad {
            initial_accumulator: 0.1,
            epsilon: 1e-7,
        };
        let dev = Default::default();
        let p = Tensor::<Flex, 1>::from_floats([1.0, -2.0], &dev);
        let g = Tensor::<Flex, 1>::from_floats([0.5, -1.0], &dev);
        let (p1, s) = opt.step(0.01, p, g.clone(), None);
        let (p2, _) = opt.step(0.01, p1.clone(), g, s);
        let p1: Vec<f32> = p1.into_data().to_vec().unwrap();
        let p2: Vec<f32> = p2.into_data().to_vec().unwrap();
        for (i, (p0, g)) in [(1.0f64, 0.5f64), (-2.0, -1.0)].into_iter().enumerate() {
            let acc1 = 0.1 + g * g;
            let want1 = p0 - 0.01 * g / (acc1.sqrt() + 1e-7);
            let acc2 = acc1 + g * g;
            let want2 = want1 - 0.01 * g / (acc2.sqrt() + 1e-7);
            assert!((p1[i] as f64 - want1).abs() < 1e-6, "{} vs {want1}", p1[i]);
            assert!((p2[i] as f64 - want2).abs() < 1e-6, "{} vs {want2}", p2[i]);
        }
    }
}
