//! Weight averaging over epochs (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima
//! and Better Generalization"): the element-wise mean of several checkpoints of one run, its
//! BatchNorm running statistics included. It is one model again, so inference costs nothing more.

use anyhow::{Result, ensure};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// The element-wise mean of every float tensor (parameters and running statistics) of `models`,
/// which share one architecture; `None` for no models. Summed in f64 in the order given, so the
/// same models give the same bytes.
pub fn mean_weights<B: Backend, M: Module<B>>(models: Vec<M>) -> Result<Option<M>> {
    let n = models.len();
    let mut models = models.into_iter();
    let Some(first) = models.next() else {
        return Ok(None);
    };
    let mut sum = flatten(&first);
    for (k, model) in models.enumerate() {
        let next = flatten(&model);
        ensure!(
            next.len() == sum.len() && next.iter().zip(&sum).all(|(a, b)| a.len() == b.len()),
            "model {} of {n} does not have the first one's tensors: cannot average them",
            k + 2
        );
        for (s, t) in sum.iter_mut().zip(next) {
            s.iter_mut().zip(t).for_each(|(s, t)| *s += t);
        }
    }
    let mut mean = sum
        .into_iter()
        .map(|t| t.into_iter().map(|v| (v / n as f64) as f32).collect());
    Ok(Some(first.map(&mut Replace(&mut mean))))
}

/// Every float tensor of a module, in visiting order.
fn flatten<B: Backend, M: Module<B>>(model: &M) -> Vec<Vec<f64>> {
    struct Flatten(Vec<Vec<f64>>);
    impl<B: Backend> ModuleVisitor<B> for Flatten {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data().convert::<f64>();
            self.0.push(data.into_vec().expect("f64 after convert"));
        }
    }
    let mut v = Flatten(Vec::new());
    model.visit(&mut v);
    v.0
}

/// Replaces every float tensor, in visiting order, with the next values (same shape, device, id).
struct Replace<'a, I: Iterator<Item = Vec<f32>>>(&'a mut I);

impl<B: Backend, I: Iterator<Item = Vec<f32>>> ModuleMapper<B> for Replace<'_, I> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let values = self
            .0
            .next()
            .expect("one value list per tensor, counted in mean_weights");
        let data = TensorData::new(values, tensor.shape());
        Param::from_mapped_value(id, Tensor::from_data(data, &tensor.device()), mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use models::CancerNetConfig;

    #[test]
    fn the_mean_of_models_is_their_element_wise_mean() {
        let dev = Default::default();
        let cfg = CancerNetConfig::default();
        let a = cfg.init_seeded::<Flex>(1, &dev);
        let b = cfg.init_seeded::<Flex>(2, &dev);
        let c = cfg.init_seeded::<Flex>(3, &dev);
        let (fa, fb, fc) = (flatten(&a), flatten(&b), flatten(&c));
        let mean = mean_weights(vec![a.clone(), b, c]).unwrap().unwrap();
        let fm = flatten(&mean);
        assert_eq!(fm.len(), fa.len());
        let mut moved = 0;
        for (((m, a), b), c) in fm.iter().zip(&fa).zip(&fb).zip(&fc) {
            for (((m, a), b), c) in m.iter().zip(a).zip(b).zip(c) {
                let want = ((a + b + c) / 3.0) as f32 as f64;
                assert_eq!(*m, want);
                moved += usize::from(m != a);
            }
        }
        assert!(
            moved > 1000,
            "only {moved} values differ from the first model"
        );
        // One model is its own mean; none is no model.
        assert_eq!(flatten(&mean_weights(vec![a]).unwrap().unwrap()), fa);
        assert!(
            mean_weights::<Flex, models::CancerNet<Flex>>(vec![])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn models_of_different_shapes_are_refused() {
        let dev = Default::default();
        let small = CancerNetConfig::default()
            .with_dense(8)
            .init_seeded::<Flex>(1, &dev);
        let big = CancerNetConfig::default().init_seeded::<Flex>(1, &dev);
        let err = mean_weights(vec![big, small]).unwrap_err().to_string();
        assert!(err.contains("model 2 of 2"), "{err}");
    }
}
