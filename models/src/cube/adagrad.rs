//! Keras' Adagrad update on the GPU, `a += g^2; p -= lr * g / (sqrt(a) + eps)`, of many parameter
//! tensors in one launch: each unit updates one vector of each tensor, reading p, g and a once and
//! writing the new p and a. burn's ops take seven launches a tensor, and one launch a tensor left
//! CancerNet's 36 launches a step of one or two cubes each (bench/nvrtc-check.sh counts them).
//! Tensors of alike lengths share a launch (`launches`: CancerNet's take 4 on CUDA), as many as
//! the device's bindings allow (5 each; CUDA: 1,024; lavapipe: 31) and at most `MAX_TENSORS`.

use super::{Cube, contiguous, elementwise, empty, vector_size};
use crate::fast_ops::{cast, float, same, tensor};
use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime};
use cubecl::prelude::SequenceArg;

/// The kernel (in its own module: CubeCL's `Tensor` is not burn's).
mod kernels {
    use cubecl::prelude::*;

    /// The update of each tensor k of the sequences (p, g and a `[len_k]`, N values a unit):
    /// unit i updates vector i of every tensor that long.
    #[cube(launch_unchecked)]
    pub(super) fn adagrad<N: Size>(
        p: &Sequence<Tensor<Vector<f32, N>>>,
        g: &Sequence<Tensor<Vector<f32, N>>>,
        a: &Sequence<Tensor<Vector<f32, N>>>,
        p_out: &mut Sequence<Tensor<Vector<f32, N>>>,
        a_out: &mut Sequence<Tensor<Vector<f32, N>>>,
        lr: f32,
        epsilon: f32,
    ) {
        let at = ABSOLUTE_POS;
        #[unroll]
        for k in 0..p.len() {
            let pk = p.index(k);
            if at < pk.shape(0) / pk.vector_size() {
                let grad = g.index(k)[at];
                let acc = a.index(k)[at] + grad * grad;
                let step =
                    Vector::cast_from(lr) * grad / (Vector::sqrt(acc) + Vector::cast_from(epsilon));
                a_out.index_mut(k)[at] = acc;
                p_out.index_mut(k)[at] = pk[at] - step;
            }
        }
    }
}

/// One tensor's update: its values, gradient and accumulator, flattened (`[len]` each).
pub type Update<B> = (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>);

/// Updates, learning rate and epsilon, handed back where `B` is not a cubecl backend of this
/// build.
pub type Inputs<B> = (Vec<Update<B>>, f32, f32);

/// Each tensor's new values and accumulator (`[len]` each).
pub type Updated<B> = Vec<(Tensor<B, 1>, Tensor<B, 1>)>;

/// Buffers each tensor takes in a launch (p, g, a, new p, new a).
const BUFFERS: usize = 5;

/// Tensors a launch takes at most: CUDA passes each buffer and each tensor's shape as kernel
/// parameters, of 32 KB in all (~28 bytes a buffer: 9 KB here).
const MAX_TENSORS: usize = 64;

/// Units a launch may run for its tensors, each visiting them all: a quarter more than their
/// vectors, or this many (a few waves of a GPU, where a unit past a tensor's end skips it; on
/// lavapipe, which runs a unit's code for every tensor of its launch, such a unit costs about
/// one update).
const SLACK_UNITS: usize = 65_536;

/// The launches for tensors of these lengths, each its vector size and its tensors (indices into
/// `lens`): tensors of one vector size, longest first, as many a launch as `per_launch` allows
/// while its units (its longest tensor's vectors) times its tensors stay within 5/4 of their
/// vectors, or `SLACK_UNITS`. CancerNet's 36 take 4 launches on CUDA, its dense layer's weight
/// one alone.
fn launches(lens: &[usize], per_launch: usize) -> Vec<(usize, Vec<usize>)> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&k| (vector_size(lens[k]) == 1, std::cmp::Reverse(lens[k])));
    let mut out: Vec<(usize, Vec<usize>)> = Vec::new();
    for k in order {
        let vector = vector_size(lens[k]);
        let vectors = |ks: &[usize]| ks.iter().map(|&j| lens[j] / vector).sum::<usize>();
        match out.last_mut() {
            Some((v, ks))
                if *v == vector
                    && ks.len() < per_launch
                    && 4 * (ks.len() + 1) * (lens[ks[0]] / vector)
                        <= (5 * (vectors(ks) + lens[k] / vector)).max(4 * SLACK_UNITS) =>
            {
                ks.push(k)
            }
            _ => out.push((vector, vec![k])),
        }
    }
    out
}

/// The new values and accumulators, in the order of the updates, when `B` is `Cube<R, BT>`;
/// else the inputs back.
pub(super) fn on<B: Backend, R: CubeRuntime, BT: BoolElement>(
    inputs: Inputs<B>,
) -> Result<Updated<B>, Inputs<B>> {
    let (updates, lr, epsilon) = cast::<_, Inputs<Cube<R, BT>>>(inputs)?;
    let updates: Vec<[CubeTensor<R>; 3]> = updates
        .into_iter()
        .map(|(p, g, a)| [p, g, a].map(|t| contiguous(float(t))))
        .collect();
    let Some([first, ..]) = updates.first() else {
        return Ok(Vec::new());
    };
    let client = first.client.clone();
    // One binding is the launch's metadata.
    let bindings = client.properties().hardware.max_bindings as usize;
    let per_launch = (bindings.saturating_sub(1) / BUFFERS).clamp(1, MAX_TENSORS);
    let lens: Vec<usize> = updates
        .iter()
        .map(|u| u[0].meta.shape().num_elements())
        .collect();
    // The kernel bounds its loads by the values' length alone (it launches unchecked).
    for (u, &len) in updates.iter().zip(&lens) {
        let [_, g, a] = u.each_ref().map(|t| t.meta.shape().num_elements());
        assert!(
            g == len && a == len,
            "adagrad: a gradient or accumulator of {g} or {a} values for {len}"
        );
    }
    let mut outs: Vec<Option<[CubeTensor<R>; 2]>> = vec![None; updates.len()];
    for (vector, chunk) in launches(&lens, per_launch) {
        let longest = lens[chunk[0]];
        let (cube_count, cube_dim) = elementwise(&client, (longest / vector).max(1));
        let news: Vec<[CubeTensor<R>; 2]> = chunk
            .iter()
            .map(|&k| [0, 1].map(|_| empty(&updates[k][0], Shape::new([lens[k]]))))
            .collect();
        let input = |i: usize| -> SequenceArg<R, _> {
            chunk
                .iter()
                .map(|&k| updates[k][i].clone().into_tensor_arg())
                .collect()
        };
        let output = |i: usize| -> SequenceArg<R, _> {
            news.iter()
                .map(|n| n[i].clone().into_tensor_arg())
                .collect()
        };
        // SAFETY: each unit past a tensor's vectors skips it; the tensors are as long as their
        // values (asserted above).
        unsafe {
            kernels::adagrad::launch_unchecked::<R>(
                &client,
                cube_count,
                cube_dim,
                vector,
                input(0),
                input(1),
                input(2),
                output(0),
                output(1),
                lr,
                epsilon,
            )
        };
        for (&k, new) in chunk.iter().zip(news) {
            outs[k] = Some(new);
        }
    }
    let back = |t: CubeTensor<R>| -> Tensor<B, 1> { same(tensor::<Cube<R, BT>, 1>(t)) };
    Ok(outs
        .into_iter()
        .map(|o| {
            let [p, a] = o.expect("every update is in one launch");
            (back(p), back(a))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::launches;

    /// CancerNet's parameter tensors (lengths), in the order of its modules.
    fn cancernet() -> Vec<usize> {
        let mut lens = Vec::new();
        for (c_in, c_out) in [
            (3, 32),
            (32, 64),
            (64, 64),
            (64, 128),
            (128, 128),
            (128, 128),
        ] {
            // Depthwise weight, pointwise weight and bias, BatchNorm gamma and beta.
            lens.extend([9 * c_in, c_in * c_out, c_out, c_out, c_out]);
        }
        lens.extend([4608 * 256, 256, 256, 256, 256 * 2, 2]);
        lens
    }

    /// Each tensor in one launch, of its vector size, the longest first; no launch runs more
    /// units than `launches` allows.
    fn check(lens: &[usize], plan: &[(usize, Vec<usize>)]) {
        let mut all: Vec<usize> = plan.iter().flat_map(|(_, ks)| ks.clone()).collect();
        all.sort();
        assert_eq!(all, (0..lens.len()).collect::<Vec<_>>(), "each tensor once");
        for (vector, ks) in plan {
            assert!(
                ks.iter()
                    .all(|&k| lens[k].is_multiple_of(*vector) && lens[k] <= lens[ks[0]])
            );
            let vectors: usize = ks.iter().map(|&k| lens[k] / vector).sum();
            let units = ks.len() * lens[ks[0]] / vector;
            assert!(
                4 * units <= (5 * vectors).max(4 * super::SLACK_UNITS),
                "{plan:?}"
            );
        }
    }

    #[test]
    fn cancernet_takes_four_launches_with_its_largest_layer_alone() {
        let lens = cancernet();
        let plan = launches(&lens, super::MAX_TENSORS);
        check(&lens, &plan);
        assert_eq!(plan.len(), 4, "{plan:?}");
        assert_eq!(plan[0].1.len(), 1);
        assert_eq!(lens[plan[0].1[0]], 4608 * 256);
        assert_eq!(plan[3], (1, vec![0, 35]), "the two of odd lengths apart");
    }

    #[test]
    fn few_bindings_split_launches() {
        let lens = cancernet();
        let plan = launches(&lens, 6);
        check(&lens, &plan);
        assert!(plan.iter().all(|(_, ks)| ks.len() <= 6), "{plan:?}");
        assert_eq!(launches(&[5, 8, 3], 1).len(), 3);
        // Lengths read in vectors of 4 apart from odd ones; alike ones together.
        assert_eq!(
            launches(&[5, 8, 3, 8], 6),
            [(4, vec![1, 3]), (1, vec![0, 2])]
        );
        assert!(launches(&[], 6).is_empty());
    }
}
