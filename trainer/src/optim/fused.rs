//! Keras Adagrad's step of all of a model's parameters at once on a GPU (`models::cube::adagrad`:
//! a few launches, 4 for CancerNet on CUDA, where burn's `OptimizerAdaptor` makes one a parameter
//! tensor). The accumulators stay in the adaptor's record, one per parameter as it keeps them, so
//! checkpoints do not change and either step resumes from the other's state.

use super::{AdagradState, KerasAdagrad};
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::AdaptorRecord;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use std::collections::HashMap;

type Inner<B> = <B as AutodiffBackend>::InnerBackend;
/// A parameter's values, gradient or accumulator, flattened.
type Flat<B> = Tensor<Inner<B>, 1>;
/// The adaptor's accumulators by parameter.
type Records<B, M> = <OptimizerAdaptor<KerasAdagrad, M, B> as Optimizer<M, B>>::Record;

/// The step of `optim` on `module` with `grads` at learning rate `lr`: all parameters at once on
/// a cubecl backend (one device: the model's); elsewhere the adaptor's own step, one parameter at
/// a time.
pub fn step<B: AutodiffBackend, M: AutodiffModule<B>>(
    optim: &mut OptimizerAdaptor<KerasAdagrad, M, B>,
    lr: f64,
    module: M,
    grads: GradientsParams,
) -> M {
    if !models::cube::is_cube::<Inner<B>>() {
        return optim.step(lr, module, grads);
    }
    let settings = optim.optim().clone();
    let mut gather = Gather::<B, M> {
        settings: &settings,
        grads: &grads,
        records: optim.to_record(),
        ids: Vec::new(),
        updates: Vec::new(),
    };
    module.visit(&mut gather);
    let Gather {
        mut records,
        ids,
        updates,
        ..
    } = gather;
    let (lr, epsilon) = (lr as f32, settings.epsilon as f32);
    let Ok(updated) = models::cube::adagrad((updates, lr, epsilon)) else {
        unreachable!("a cubecl backend takes the update kernel")
    };
    let mut apply = Apply::<B, M> {
        updated: ids.into_iter().zip(updated).collect(),
        records: &mut records,
    };
    let module = module.map(&mut apply);
    let old = std::mem::replace(optim, settings.init());
    *optim = old.load_record(records);
    module
}

/// Each parameter with a gradient, flattened with its gradient and accumulator (taken from the
/// records, or Keras' initial one on the first step).
struct Gather<'a, B: AutodiffBackend, M: AutodiffModule<B>> {
    settings: &'a KerasAdagrad,
    grads: &'a GradientsParams,
    records: Records<B, M>,
    ids: Vec<ParamId>,
    updates: Vec<(Flat<B>, Flat<B>, Flat<B>)>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> ModuleVisitor<B> for Gather<'_, B, M> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // A parameter without a gradient keeps its value, as with the adaptor; one met twice
        // (a module sharing it) is updated once, in its first place, as the adaptor does.
        let Some(grad) = self.grads.get::<Inner<B>, D>(param.id) else {
            return;
        };
        if self.ids.contains(&param.id) {
            return;
        }
        let p = param.val().inner();
        let len = p.shape().num_elements();
        let acc = match self.records.remove(&param.id) {
            Some(r) => r.into_state::<D>().accumulator,
            None => self.settings.first_accumulator(&grad),
        };
        self.ids.push(param.id);
        self.updates
            .push((p.reshape([len]), grad.reshape([len]), acc.reshape([len])));
    }
}

/// The new values in the parameters' places (their shapes back), the new accumulators in the
/// records.
struct Apply<'a, B: AutodiffBackend, M: AutodiffModule<B>> {
    updated: HashMap<ParamId, (Flat<B>, Flat<B>)>,
    records: &'a mut Records<B, M>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> ModuleMapper<B> for Apply<'_, B, M> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some((p, acc)) = self.updated.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let shape = tensor.shape();
        let accumulator: Tensor<Inner<B>, D> = acc.reshape(shape.clone());
        self.records
            .insert(id, AdaptorRecord::from_state(AdagradState { accumulator }));
        let mut new = Tensor::from_inner(p.reshape(shape));
        if tensor.is_require_grad() {
            new = new.require_grad();
        }
        Param::from_mapped_value(id, new, mapper)
    }
}
