//! The pointwise (1x1) convolution and the dense layers as one CubeCL matrix product with bias,
//! `y[n, o, p] = b[o] + sum over i of w(o, i) * x[n, i, p]`, with its input, weight and bias
//! gradients. A dense layer (burn's `[in, out]` weight) is the same product turned round: its
//! weight read as the input, one image of `in` inputs at `out` positions.
//!
//! Full f32 arithmetic on every device: burn's matrix product runs on tensor cores in TF32 on
//! recent NVIDIA GPUs (10 bits of mantissa), which made the CUDA step differ from the CPU's by
//! 1e-3 on the first step. Each unit computes a tile of two vectors of 4 positions x 16 outputs,
//! so that every input value loaded serves 16 products and every weight 8; in the weight
//! gradient, 8 outputs x 8 inputs. Loads are what these kernels wait on: on a GPU each load
//! served more products is arithmetic intensity, on lavapipe (which loads a storage buffer one
//! lane and one value at a time) it is most of the time. So where the outputs are a multiple of
//! 4 the product reads weights laid out `[ins, outs]`, 4 outputs to a load: a convolution's
//! forward turns its weight round first (a copy of the weight's outs x ins values), its input
//! gradient and a dense layer's weight gradient read them that way already; a dense layer's
//! forward and input gradient read `[outs, ins]`, one weight a load.

use super::reduce::sum_leading;
use super::{Cube, MAX_CUBES_YZ, WARP, contiguous, empty, vector_size, zeros};
use crate::fast_ops::{cast, float, same, tensor};
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{Shape, Tensor};
use burn_cubecl::ops::{permute, reshape};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime};
use cubecl::{CubeCount, CubeDim};

/// A layer's input, weight and bias (`D` = 4: a 1x1 convolution's; 2: a dense layer's), handed
/// back when the backend is not one of ours.
pub(super) type Inputs<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Tensor<B, 1>);

/// Outputs and vectors of positions of a unit's tile in the product: each input vector read
/// serves 16 products, each weight 2 vectors.
const TILE_O: usize = 16;
const TILE_V: usize = 2;
/// Outputs and inputs of a unit's tile in the weight gradient.
const GRAD_TILE: usize = 8;
/// Units of a cube, at most.
const UNITS: usize = 64;

/// The kernels (in their own module: CubeCL's `Tensor` is not burn's).
mod kernels {
    use crate::cube::reduce::{Walk, part_end};
    use cubecl::prelude::*;

    /// Where weight `(o, i)` is in a weight tensor: `[outs, ins]`, or `[ins, outs]` (`transposed`:
    /// a convolution's weight turned round for its forward, or read as it is for its input
    /// gradient; a dense layer's input read for its weight gradient).
    #[cube]
    fn weight_at(
        o: usize,
        i: usize,
        outs: usize,
        ins: usize,
        #[comptime] transposed: bool,
    ) -> usize {
        if transposed {
            i * outs + o
        } else {
            o * ins + i
        }
    }

    /// `y[n, o, p] = bias[o] + sum over i of weight(o, i) * x[n, i, p]` for x `[n, ins, positions]`
    /// and y `[parts * n, outs, positions]`, both read as vectors of N positions. Cube (bx, by, s)
    /// covers `tile_v` runs of `units` vectors from `bx * tile_v * units` (of all images,
    /// flattened), outputs `by * tile_o ..` and inputs `s * k_chunk ..`, writing its partial sum
    /// to part s of y (the bias goes to part 0). Each unit takes one vector of each run:
    /// neighbouring units read neighbouring vectors; a weight is the same for all of a cube's
    /// units (one broadcast read) and serves `tile_v` vectors. Weights laid out `[ins, outs]`
    /// (`transposed`) are read as vectors of W outputs (outs a multiple of W): 4 loads a tile's
    /// input instead of 16.
    #[cube(launch_unchecked)]
    pub(super) fn product<N: Size, W: Size>(
        x: &Tensor<Vector<f32, N>>,
        weight: &Tensor<Vector<f32, W>>,
        bias: &Tensor<f32>,
        y: &mut Tensor<Vector<f32, N>>,
        k_chunk: usize,
        #[comptime] tile_v: usize,
        #[comptime] tile_o: usize,
        #[comptime] transposed: bool,
        #[comptime] has_bias: bool,
    ) {
        let ins = x.shape(1);
        let outs = y.shape(1);
        let vectors = y.shape(2) / x.vector_size();
        let total = x.shape(0) * vectors;
        let first_o = CUBE_POS_Y as usize * tile_o;
        let part = CUBE_POS_Z as usize;
        let first_i = part * k_chunk;
        let mut last_i = first_i + k_chunk;
        if last_i > ins {
            last_i = ins;
        }
        let units = CUBE_DIM as usize;
        let first_m = CUBE_POS_X as usize * tile_v * units + UNIT_POS as usize;
        // Where each of the unit's vectors starts in x (input 0). A unit past the end computes
        // vector 0 and writes nothing.
        let mut at = Array::<u32>::new(tile_v);
        #[unroll]
        for t in 0..tile_v {
            let m = first_m + t * units;
            let mv = select(m < total, m, 0usize);
            at[t] = u32::cast_from((mv / vectors) * ins * vectors + mv % vectors);
        }
        let mut acc = Array::<Vector<f32, N>>::new(tile_v * tile_o);
        #[unroll]
        for j in 0..tile_o {
            let o = first_o + j;
            let mut b = 0.0f32;
            if has_bias {
                b = select(
                    o < outs && part == 0usize,
                    bias[min(o, outs - 1usize)],
                    0.0f32,
                );
            }
            #[unroll]
            for t in 0..tile_v {
                acc[t * tile_o + j] = Vector::cast_from(b);
            }
        }
        let mut xv = Array::<Vector<f32, N>>::new(tile_v);
        for i in first_i..last_i {
            #[unroll]
            for t in 0..tile_v {
                xv[t] = x[usize::cast_from(at[t]) + i * vectors];
            }
            let w_size = weight.vector_size();
            #[unroll]
            for g in 0..comptime!(tile_o / w_size) {
                let o = first_o + g * w_size;
                // Past the last output (the last tile's overhang) the load is made at the last
                // output's index and its value selected away.
                let loaded = min(o, outs - w_size);
                let ws = select(
                    o < outs,
                    weight[weight_at(loaded, i, outs, ins, transposed) / w_size],
                    Vector::cast_from(0.0f32),
                );
                #[unroll]
                for l in 0..w_size {
                    let w = Vector::<f32, N>::cast_from(ws[l]);
                    #[unroll]
                    for t in 0..tile_v {
                        acc[t * tile_o + g * w_size + l] += w * xv[t];
                    }
                }
            }
        }
        #[unroll]
        for t in 0..tile_v {
            let m = first_m + t * units;
            if m < total {
                let out = (part * total + (m / vectors) * vectors) * outs + m % vectors;
                #[unroll]
                for j in 0..tile_o {
                    let o = first_o + j;
                    if o < outs {
                        y[out + o * vectors] = acc[t * tile_o + j];
                    }
                }
            }
        }
    }

    /// One part of the weight gradient `sum over (n, p) of dy[n, o, p] * x[n, i, p]` and of the
    /// bias gradient `sum over (n, p) of dy[n, o, p]`, both read as vectors of N positions: cube
    /// (bo, bi, s) sums the vectors of images `s * images ..` for outputs `bo * tile ..` and
    /// inputs `bi * tile ..`, its units taking them in turn across images (`Walk`; the last
    /// block's planes have fewer vectors than a cube has units), then adds the units' sums in shared
    /// memory (rows for `slots` units, at least the cube's) into `partial[s, o, i]`. The bias is
    /// the weight of an input that is 1 everywhere, input `ins` (one past the last): the cube
    /// whose tile holds it writes those sums to `bias_partial[s, o]`, with no second pass over
    /// dy and no registers of their own. Each vector read serves a
    /// tile of 8 x 8 sums (a dot product of two vectors each, into one f32 each): 16 vector loads
    /// for 256 products, all of them made (at indices clamped into the tensors) and the values
    /// past the tile's end selected away after.
    #[cube(launch_unchecked)]
    pub(super) fn weight_grad<N: Size>(
        x: &Tensor<Vector<f32, N>>,
        dy: &Tensor<Vector<f32, N>>,
        partial: &mut Tensor<f32>,
        bias_partial: &mut Tensor<f32>,
        images: usize,
        #[comptime] tile: usize,
        #[comptime] slots: usize,
    ) {
        let ins = x.shape(1);
        let outs = dy.shape(1);
        let vectors = x.shape(2) / x.vector_size();
        let part = CUBE_POS_Z as usize;
        let units = CUBE_DIM as usize;
        let unit = UNIT_POS as usize;
        let first_o = CUBE_POS_X as usize * tile;
        let first_i = CUBE_POS_Y as usize * tile;
        let last = part_end(part, images, x.shape(0));
        let zero = Vector::<f32, N>::cast_from(0.0f32);
        let one = Vector::<f32, N>::cast_from(1.0f32);
        let sums = tile * tile;
        let mut acc = Array::<f32>::new(sums);
        #[unroll]
        for t in 0..sums {
            acc[t] = 0.0f32;
        }
        let mut walk = Walk::new(part * images, vectors);
        while walk.n < last {
            let mut xs = Array::<Vector<f32, N>>::new(tile);
            let x_at = walk.at(ins, 0usize);
            #[unroll]
            for k in 0..tile {
                let i = first_i + k;
                // Every load in bounds (clamped) and its value selected after, where a branch
                // around each load cost lavapipe a quarter of this kernel's time.
                let v = x[x_at + min(i, ins - 1usize) * vectors];
                xs[k] = select(i < ins, v, select(i == ins, one, zero));
            }
            let dy_at = walk.at(outs, 0usize);
            #[unroll]
            for j in 0..tile {
                let o = first_o + j;
                let g = select(o < outs, dy[dy_at + min(o, outs - 1usize) * vectors], zero);
                #[unroll]
                for k in 0..tile {
                    let xv = xs[k];
                    #[unroll]
                    for l in 0..g.vector_size() {
                        acc[j * tile + k] += g[l] * xv[l];
                    }
                }
            }
            walk.step();
        }
        // The units' sums as rows of shared memory, `sums + 1` apart (so that neither the units
        // writing their rows nor those reading a column meet in one bank of a GPU's shared
        // memory); then each unit adds up columns, in order of the units: one barrier and 2
        // accesses a sum, where a tree takes 6 barriers and 3.
        let stride = sums + 1;
        let mut shared = SharedMemory::<f32>::new(slots * stride);
        #[unroll]
        for t in 0..sums {
            shared[unit * stride + t] = acc[t];
        }
        sync_cube();
        // Units add up the columns in turn (a cube may have fewer units than sums).
        let mut t = unit;
        while t < sums {
            let mut total = 0.0f32;
            for u in 0..units {
                total += shared[u * stride + t];
            }
            let o = first_o + t / tile;
            let i = first_i + t % tile;
            if o < outs {
                if i < ins {
                    partial[(part * outs + o) * ins + i] = total;
                } else if i == ins {
                    bias_partial[part * outs + o] = total;
                }
            }
            t += units;
        }
    }
}

/// At least this many cubes per product (an H200 has 132 multiprocessors): fewer are made up by
/// splitting the inputs into parts, each at least `MIN_PART_INPUTS` long, added up after. At
/// batch 32 the dense layers need it (turned round: 256 positions, 2 cubes unsplit), and the last
/// block's convolutions of 128 inputs (12x12 planes: 72 cubes).
const MIN_CUBES: usize = 512;
const MIN_PART_INPUTS: usize = 64;

/// x `[n, ins, positions]` times the weight, plus the bias when given: `[n, outs, positions]`.
fn forward<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    bias: Option<CubeTensor<R>>,
    outs: usize,
    transposed: bool,
) -> CubeTensor<R> {
    let (x, weight) = (contiguous(x), contiguous(weight));
    let [n, ins, positions] = x.meta.shape().dims::<3>();
    if n * positions * outs == 0 {
        return empty(&x, Shape::new([n, outs, positions]));
    }
    let client = x.client.clone();
    let vector = vector_size(positions);
    let total = n * positions / vector;
    let units = total.next_power_of_two().clamp(WARP, UNITS);
    // Two vectors a unit where there are enough for every cube's units to have two.
    let tile_v = if total >= 2 * units { TILE_V } else { 1 };
    // Fewer outputs than a tile (block 1's input gradient: 3) take a smaller one: every
    // weight of a tile is loaded, past the last output too.
    let tile_o = TILE_O.min(outs.next_power_of_two().max(4));
    let (bx, by) = (total.div_ceil(units * tile_v).max(1), outs.div_ceil(tile_o));
    let parts = MIN_CUBES
        .div_ceil(bx * by)
        .min(ins / MIN_PART_INPUTS)
        .clamp(1, MAX_CUBES_YZ);
    let k_chunk = ins.div_ceil(parts).max(1);
    let parts = ins.div_ceil(k_chunk).max(1);
    let y = empty(&x, Shape::new([parts * n, outs, positions]));
    let has_bias = bias.is_some();
    // Without a bias the kernel reads none: any f32 tensor fills the place.
    let bias = contiguous(bias.unwrap_or_else(|| weight.clone()));
    // SAFETY: loads are clamped into x, the weight and the bias; stores made for outputs and
    // vectors that exist only.
    unsafe {
        kernels::product::launch_unchecked::<R>(
            &client,
            CubeCount::Static(bx as u32, by as u32, parts as u32),
            CubeDim::new_1d(units as u32),
            vector,
            // Transposed weights are read 4 outputs to a load where the outputs allow.
            if transposed { vector_size(outs) } else { 1 },
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            bias.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            k_chunk,
            tile_v,
            tile_o,
            transposed,
            has_bias,
        )
    };
    match parts {
        1 => y,
        _ => {
            let sums = sum_leading(reshape(y, Shape::new([parts, n * outs * positions])));
            reshape(sums, Shape::new([n, outs, positions]))
        }
    }
}

/// Values each unit of the weight-gradient kernel sums before the cube's units' sums are added.
const GRAD_VALUES_PER_UNIT: usize = 256;
/// Units of a cube of the weight-gradient kernel.
const GRAD_UNITS: usize = 64;

/// The weight gradient `[outs, ins]` and the bias gradient `[outs]` of a 1x1 convolution of x
/// that gave the output gradient dy.
fn weight_grad_of<R: CubeRuntime>(
    x: CubeTensor<R>,
    dy: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (x, dy) = (contiguous(x), contiguous(dy));
    let [n, ins, positions] = x.meta.shape().dims::<3>();
    let outs = dy.meta.shape()[1];
    if n * positions * outs == 0 {
        return (
            zeros(&x, Shape::new([outs, ins])),
            zeros(&x, Shape::new([outs])),
        );
    }
    if ins == 0 {
        // No weights: the bias gradient alone, dy summed over the images and positions.
        let db = Cube::<R, u32>::float_sum_dim(Cube::<R, u32>::float_sum_dim(dy, 2), 0);
        return (
            empty(&x, Shape::new([outs, 0])),
            reshape(db, Shape::new([outs])),
        );
    }
    let client = x.client.clone();
    let images = (GRAD_VALUES_PER_UNIT * GRAD_UNITS)
        .div_ceil(positions.max(1))
        .clamp(1, n.max(1));
    let images = n.div_ceil(n.div_ceil(images).min(MAX_CUBES_YZ)).max(1);
    let parts = n.div_ceil(images).max(1);
    let partial = empty(&x, Shape::new([parts, outs * ins]));
    let bias_partial = empty(&x, Shape::new([parts, outs]));
    // SAFETY: loads are clamped into x and dy; sums stored for weights that exist only.
    unsafe {
        kernels::weight_grad::launch_unchecked::<R>(
            &client,
            CubeCount::Static(
                outs.div_ceil(GRAD_TILE) as u32,
                // One more input, 1 everywhere: the bias.
                (ins + 1).div_ceil(GRAD_TILE) as u32,
                parts as u32,
            ),
            CubeDim::new_1d(GRAD_UNITS as u32),
            vector_size(positions),
            x.into_tensor_arg(),
            dy.into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            bias_partial.clone().into_tensor_arg(),
            images,
            GRAD_TILE,
            GRAD_UNITS,
        )
    };
    (
        reshape(sum_leading(partial), Shape::new([outs, ins])),
        sum_leading(bias_partial),
    )
}

/// x as `[n, ins, positions]`: a convolution's `[n, c, h, w]` or a dense layer's `[n, features]`.
fn as_positions<R: CubeRuntime>(x: CubeTensor<R>) -> CubeTensor<R> {
    let dims = x.meta.shape().clone();
    let positions: usize = dims.iter().skip(2).product();
    reshape(x, Shape::new([dims[0], dims[1], positions]))
}

/// A dense layer's `x w` (x `[n, ins]`, w `[ins, outs]`) as the product with the roles turned
/// round: w is the input, one image of `ins` inputs at `outs` positions, and x the weight,
/// `[n, ins]` read as `n` outputs. So the large operand (4608 x 256 in CancerNet) is the one read
/// as vectors of neighbouring values, and each of its values serves a tile of 16 images, where
/// the other way round each weight read served one image (`n` positions). `[n, outs]`.
fn dense_product<R: CubeRuntime>(x: CubeTensor<R>, w: CubeTensor<R>) -> CubeTensor<R> {
    let [n, ins] = x.meta.shape().dims::<2>();
    let outs = w.meta.shape()[1];
    let y = forward(reshape(w, Shape::new([1, ins, outs])), x, None, n, false);
    reshape(y, Shape::new([n, outs]))
}

/// The layer on x: a dense layer's weight is `[ins, outs]`, a convolution's `[outs, ins, 1,
/// 1]`. The output has x's shape with `outs` channels.
fn layer<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    bias: CubeTensor<R>,
    dense: bool,
) -> CubeTensor<R> {
    let mut shape = x.meta.shape().clone();
    shape[1] = bias.meta.shape()[0];
    if dense {
        // The bias added by burn's broadcast sum: one small launch (none without values:
        // burn-cubecl broadcasts [0, out] + [1, out] to [1, out]).
        let y = dense_product(x, weight);
        if y.meta.shape().num_elements() == 0 {
            return y;
        }
        let bias = reshape(bias, Shape::new([1, shape[1]]));
        return Cube::<R, u32>::float_add(y, bias);
    }
    // The weight turned to `[ins, outs]` (a small copy) where the product then reads it 4
    // outputs to a load.
    let [outs, ins] = [shape[1], x.meta.shape()[1]];
    let turn = vector_size(outs) > 1;
    let weight = match turn {
        true => permute(reshape(weight, Shape::new([outs, ins])), &[1, 0]),
        false => weight,
    };
    let y = forward(as_positions(x), weight, Some(bias), outs, turn);
    reshape(y, shape)
}

#[derive(Debug)]
struct LayerBackward;

impl<R: CubeRuntime, BT: BoolElement> Backward<Cube<R, BT>, 3> for LayerBackward {
    /// x, the weight, and whether it is a dense layer's.
    type State = (CubeTensor<R>, CubeTensor<R>, bool);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = as_positions(grads.consume::<Cube<R, BT>>(&ops.node));
        let (x, weight, dense) = ops.state;
        let (x_shape, w_shape) = (x.meta.shape().clone(), weight.meta.shape().clone());
        let x = as_positions(x);
        let [x_node, w_node, b_node] = ops.parents;
        if let Some(node) = x_node {
            // The input gradient is the product with the weight read the other way round; a
            // dense layer's, dy `[n, outs]` times w^T, turned round as its forward is.
            let dx = if dense {
                let [n, outs] = [dy.meta.shape()[0], dy.meta.shape()[1]];
                let w_t = contiguous(permute(weight, &[1, 0]));
                dense_product(reshape(dy.clone(), Shape::new([n, outs])), w_t)
            } else {
                forward(dy.clone(), weight, None, x_shape[1], true)
            };
            grads.register::<Cube<R, BT>>(node.id, reshape(dx, x_shape));
        }
        if w_node.is_none() && b_node.is_none() {
            return;
        }
        // A convolution's weight and bias gradients come from one kernel; a dense layer's `[in,
        // out]` weight gradient, x^T dy, sums over the batch only: the product with dy as one
        // image of `n` inputs at `out` positions, and x read as a transposed weight. Its bias
        // gradient sums dy `[n, out]` over the batch (`sum_leading`).
        let (dw, db) = if dense {
            let [n, ins, _] = x.meta.shape().dims::<3>();
            let outs = dy.meta.shape()[1];
            let db = sum_leading(reshape(dy.clone(), Shape::new([n, outs])));
            let dy = reshape(dy, Shape::new([1, n, outs]));
            let dw = forward(dy, reshape(x, Shape::new([n, ins])), None, ins, true);
            (dw, db)
        } else {
            weight_grad_of(x, dy)
        };
        if let Some(node) = w_node {
            grads.register::<Cube<R, BT>>(node.id, reshape(dw, w_shape));
        }
        if let Some(node) = b_node {
            grads.register::<Cube<R, BT>>(node.id, db);
        }
    }
}

fn layer_autodiff<R: CubeRuntime, BT: BoolElement, const D: usize>(
    (x, weight, bias): Inputs<Autodiff<Cube<R, BT>>, D>,
    dense: bool,
) -> Tensor<Autodiff<Cube<R, BT>>, D> {
    let (x, weight, bias) = (float(x), float(weight), float(bias));
    let y = layer(
        x.primitive.clone(),
        weight.primitive.clone(),
        bias.primitive,
        dense,
    );
    let prep = LayerBackward
        .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone(), bias.node.clone()])
        .compute_bound()
        .stateful();
    tensor(match prep {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, weight.primitive, dense), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    })
}

/// The layer by these kernels when `B` is `Cube<R, BT>` (with or without autodiff), else the
/// inputs back. `D` = 4: a 1x1 convolution; 2: a dense layer.
pub(super) fn on<B: Backend, R: CubeRuntime, BT: BoolElement, const D: usize>(
    inputs: Inputs<B, D>,
) -> Result<Tensor<B, D>, Inputs<B, D>> {
    let dense = D == 2;
    match cast::<_, Inputs<Autodiff<Cube<R, BT>>, D>>(inputs) {
        Ok(inputs) => Ok(same(layer_autodiff(inputs, dense))),
        Err(inputs) => match cast::<_, Inputs<Cube<R, BT>, D>>(inputs) {
            Ok((x, w, b)) => Ok(same(tensor::<Cube<R, BT>, D>(layer(
                float(x),
                float(w),
                float(b),
                dense,
            )))),
            Err(inputs) => Err(inputs),
        },
    }
}
