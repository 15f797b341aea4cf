//! CancerNet's depthwise 3x3 convolution ('same' padding, no bias) in CubeCL: one kernel for the
//! convolution, which with the filter turned half a turn is also its input gradient, and one for
//! the filter gradient, whose parts `reduce::sum_leading` adds up.
//!
//! Every tensor is a contiguous f32 NCHW tensor; the launchers make it so. Each unit slides a
//! window of inputs 3 rows by `cols + 2` columns down `cols` neighbouring columns in registers:
//! where rows are a multiple of 4 long (every layer of CancerNet), 8 columns, a row's 10 inputs
//! in 4 vector loads (0.5 a value); else 4 columns, a row's 6 inputs in 6 loads (1.5 a value);
//! a 3x3 window each would take 9 (loads are what these kernels wait on, on a GPU and on
//! lavapipe alike).
//! Every sum is taken in an order fixed by the launch, never by timing: a run gives the same
//! bytes every time on a device.

use super::reduce::sum_leading;
use super::{Cube, MAX_CUBES_YZ, WARP, contiguous, elementwise, empty, vector_size, zeros};
use crate::fast_ops::{cast, float, same, tensor};
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor};
use burn_cubecl::ops::reshape;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime};
use cubecl::{CubeCount, CubeDim};

/// The convolution's input and filter, handed back when the backend is not one of ours.
pub(super) type Inputs<B> = (Tensor<B, 4>, Tensor<B, 4>);

/// The kernels (in their own module: CubeCL's `Tensor` is not burn's).
mod kernels {
    use crate::cube::reduce::{part_end, tree_sum};
    use cubecl::prelude::*;

    /// x's planes and last vector, read from the launch's metadata once by each unit (on
    /// lavapipe every read of it is a load of its own).
    #[derive(CubeType)]
    struct Frame {
        height: usize,
        width: usize,
        last: usize,
    }

    #[cube]
    impl Frame {
        fn new<N: Size>(x: &Tensor<Vector<f32, N>>) -> Frame {
            Frame {
                height: x.shape(2),
                width: x.shape(3),
                last: x.len() - 1usize,
            }
        }
    }

    /// Loads into rows `slot ..= 2` of `win` (`cols + 2` values a row) rows of plane `base` (of x
    /// `[n, c, h, w]`, read as vectors of N along a row) from row `r - 1` (`r` is the row plus
    /// one, kept unsigned), columns col - 1 ..= col + cols, zero outside the plane: the `cols /
    /// N` vectors from column col, and one value of each vector beside them. A unit's window is
    /// 3 rows: all three when it starts (slot 0), then, sliding down, the new last one after
    /// `shift_up` (slot 2). Every load is made at an index clamped into x (these kernels launch
    /// unchecked) and its value selected after.
    #[cube]
    fn load_rows<N: Size>(
        x: &Tensor<Vector<f32, N>>,
        win: &mut Array<f32>,
        base: usize,
        r: usize,
        col: usize,
        frame: &Frame,
        #[comptime] slot: usize,
        #[comptime] cols: usize,
    ) {
        let (height, width, last) = (frame.height, frame.width, frame.last);
        let lanes = x.vector_size();
        let zero = Vector::<f32, N>::cast_from(0.0f32);
        #[unroll]
        for k in 0..3 - slot {
            let rk = r + k;
            let row = rk >= 1usize && rk <= height;
            // Vector `v` of the row from column col (v = 0: the one before it).
            let first = (base + select(row, rk - 1usize, 0usize) * width + col) / lanes;
            let row_at = (slot + k) * (cols + 2);
            let left = select(row && col >= 1usize, x[max(first, 1usize) - 1usize], zero);
            win[row_at] = left[comptime!(lanes - 1)];
            #[unroll]
            for v in 0..comptime!(cols / lanes) {
                let values = select(
                    row && col + v * lanes < width,
                    x[min(first + v, last)],
                    zero,
                );
                #[unroll]
                for l in 0..lanes {
                    win[row_at + 1usize + v * lanes + l] = values[l];
                }
            }
            let right = select(
                row && col + cols < width,
                x[min(first + comptime!(cols / lanes), last)],
                zero,
            );
            win[row_at + cols + 1usize] = right[0usize];
        }
    }

    /// Moves the window's rows up one, making room for the next row in the last.
    #[cube]
    fn shift_up(win: &mut Array<f32>, #[comptime] cols: usize) {
        #[unroll]
        for at in 0..2 * (cols + 2) {
            win[at] = win[at + cols + 2];
        }
    }

    /// `y[n, c, i, j] = sum over (ky, kx) of x[n, c, i + ky - 1, j + kx - 1] * w[c, ky, kx]`, zero
    /// outside the plane ('same' padding). With `flip` the filter is turned half a turn
    /// (`w[c, 2 - ky, 2 - kx]`): the convolution that maps an output gradient to the input gradient.
    /// Each unit computes `rows` x `cols` values of one plane, going down `cols` neighbouring
    /// columns with a window of inputs held in registers (`load_rows`), writing vectors of N,
    /// and the filter loaded once.
    #[cube(launch_unchecked)]
    pub(super) fn depthwise3x3<N: Size>(
        x: &Tensor<Vector<f32, N>>,
        weight: &Tensor<f32>,
        y: &mut Tensor<Vector<f32, N>>,
        #[comptime] rows: usize,
        #[comptime] cols: usize,
        #[comptime] flip: bool,
    ) {
        let channels = y.shape(1);
        // y has x's shape.
        let frame = Frame::new(x);
        let (height, width) = (frame.height, frame.width);
        let strips = height.div_ceil(rows);
        let groups = width.div_ceil(cols);
        let pos = ABSOLUTE_POS;
        if pos >= y.shape(0) * channels * strips * groups {
            terminate!();
        }
        let col = (pos % groups) * cols;
        let strip = (pos / groups) % strips;
        let plane = pos / (groups * strips);
        let base = plane * height * width;
        let first = strip * rows;

        let mut w = Array::<f32>::new(9usize);
        #[unroll]
        for tap in 0..9usize {
            let k = if flip { 8usize - tap } else { tap };
            w[tap] = weight[(plane % channels) * 9usize + k];
        }
        let mut win = Array::<f32>::new(3 * (cols + 2));
        load_rows(x, &mut win, base, first, col, &frame, 0usize, cols);
        let mut row = first;
        let last = part_end(strip, rows, height);
        let lanes = y.vector_size();
        while row < last {
            #[unroll]
            for v in 0..comptime!(cols / lanes) {
                let mut out = Vector::<f32, N>::empty();
                #[unroll]
                for l in 0..lanes {
                    let q = v * lanes + l;
                    let mut sum = 0.0f32;
                    #[unroll]
                    for ky in 0..3usize {
                        #[unroll]
                        for kx in 0..3usize {
                            sum += win[ky * (cols + 2) + q + kx] * w[ky * 3usize + kx];
                        }
                    }
                    out[l] = sum;
                }
                if col + v * lanes < width {
                    y[(base + row * width + col) / lanes + v] = out;
                }
            }
            row += 1usize;
            shift_up(&mut win, cols);
            load_rows(x, &mut win, base, row + 2usize, col, &frame, 2usize, cols);
        }
    }

    /// One part of the filter gradient, `sum over (n, i, j) of dy[n, c, i, j] * x[n, c, i + ky - 1,
    /// j + kx - 1]`: cube (c, s) sums images `s * images .. (s + 1) * images` of channel c into
    /// `partial[s, c, tap]`. Its units take turns over strips of `rows` x `cols` values (sliding
    /// a window of inputs in registers, as `depthwise3x3` does), then the units' sums are added
    /// in a tree in shared memory of `slots`, a power of two at least the cube's size.
    #[cube(launch_unchecked)]
    pub(super) fn depthwise3x3_filter_grad<N: Size>(
        x: &Tensor<Vector<f32, N>>,
        dy: &Tensor<Vector<f32, N>>,
        partial: &mut Tensor<f32>,
        images: usize,
        #[comptime] rows: usize,
        #[comptime] cols: usize,
        #[comptime] slots: usize,
    ) {
        let channel = CUBE_POS_X as usize;
        let part = CUBE_POS_Y as usize;
        let unit = UNIT_POS as usize;
        let units = CUBE_DIM as usize;
        let channels = x.shape(1);
        let frame = Frame::new(x);
        let (height, width) = (frame.height, frame.width);
        let strips = height.div_ceil(rows);
        let groups = width.div_ceil(cols);
        let first_image = part * images;
        let items = (part_end(part, images, x.shape(0)) - first_image) * strips * groups;

        let mut acc = Array::<f32>::new(9usize);
        #[unroll]
        for tap in 0..9usize {
            acc[tap] = 0.0f32;
        }
        let mut win = Array::<f32>::new(3 * (cols + 2));
        let zero = Vector::<f32, N>::cast_from(0.0f32);
        let mut item = unit;
        while item < items {
            let col = (item % groups) * cols;
            let strip = (item / groups) % strips;
            let n = first_image + item / (groups * strips);
            let base = (n * channels + channel) * height * width;
            let first = strip * rows;
            load_rows(x, &mut win, base, first, col, &frame, 0usize, cols);
            let mut row = first;
            let last = part_end(strip, rows, height);
            while row < last {
                let lanes = dy.vector_size();
                #[unroll]
                for v in 0..comptime!(cols / lanes) {
                    // Past the plane's last column the gradient is zero (its load clamped into
                    // dy, of x's shape).
                    let inside = col + v * lanes < width;
                    let g_at = min((base + row * width + col) / lanes + v, frame.last);
                    let g = select(inside, dy[g_at], zero);
                    #[unroll]
                    for l in 0..lanes {
                        let q = v * lanes + l;
                        #[unroll]
                        for ky in 0..3usize {
                            #[unroll]
                            for kx in 0..3usize {
                                acc[ky * 3usize + kx] += g[l] * win[ky * (cols + 2) + q + kx];
                            }
                        }
                    }
                }
                row += 1usize;
                shift_up(&mut win, cols);
                load_rows(x, &mut win, base, row + 2usize, col, &frame, 2usize, cols);
            }
            item += units;
        }

        let mut shared = SharedMemory::<f32>::new(9usize * slots);
        #[unroll]
        for tap in 0..9usize {
            shared[tap * slots + unit] = acc[tap];
        }
        tree_sum(&mut shared, 9usize, slots);
        // Units write the nine sums in turn (a cube may have fewer than nine units).
        let mut tap = unit;
        while tap < 9usize {
            partial[(part * channels + channel) * 9usize + tap] = shared[tap * slots];
            tap += units;
        }
    }
}

/// Values each unit of the convolution computes: down `ROWS_PER_UNIT` rows of `cols`
/// neighbouring columns.
const ROWS_PER_UNIT: usize = 8;

/// How a unit reads a plane of `width` columns: (the vector size, the columns it takes). Rows of
/// a multiple of 4 are read 4 to a load, two vectors and a value of each vector beside them: 4
/// loads a row for 8 values. Others one value to a load, 4 columns: 6 loads for 4 values.
fn row_layout(width: usize) -> (usize, usize) {
    match vector_size(width) {
        1 => (1, 4),
        n => (n, 2 * n),
    }
}

/// The convolution (`flip`: with the filter turned half a turn, for the input gradient).
fn forward<R: CubeRuntime>(x: CubeTensor<R>, weight: CubeTensor<R>, flip: bool) -> CubeTensor<R> {
    let (x, weight) = (contiguous(x), contiguous(weight));
    let [n, c, h, w] = x.meta.shape().dims::<4>();
    // The kernel reads 9 weights a channel, unchecked.
    let filter = weight.meta.shape().dims::<4>();
    assert_eq!(filter, [c, 1, 3, 3], "depthwise filter for {c} channels");
    let y = empty(&x, x.meta.shape().clone());
    if n * c * h * w == 0 {
        return y;
    }
    let client = x.client.clone();
    let (vector, cols) = row_layout(w);
    let units = n * c * h.div_ceil(ROWS_PER_UNIT) * w.div_ceil(cols);
    let (cube_count, cube_dim) = elementwise(&client, units);
    // SAFETY: loads are clamped into x (`load_rows`), stores made inside the plane only; the
    // filter is [c, 1, 3, 3] (asserted above).
    unsafe {
        kernels::depthwise3x3::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            vector,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            ROWS_PER_UNIT,
            cols,
            flip,
        )
    };
    y
}

/// Units in a cube of the filter-gradient kernel, at most.
const GRAD_UNITS: usize = 256;

/// Strips each unit of the filter-gradient kernel sums before the cube's tree: enough work per
/// unit to hide the tree. Its cubes are a channel and a part of the batch each: CancerNet at
/// batch 256 takes 15 for the first layer (3 channels), 64 to 128 for the others, fewer than an
/// H200's 132 multiprocessors for most layers (the balance there is unmeasured).
const STRIPS_PER_UNIT: usize = 8;

/// The filter gradient `[c, 1, 3, 3]` of the convolution of `x` that gave the output gradient `dy`.
fn filter_grad<R: CubeRuntime>(x: CubeTensor<R>, dy: CubeTensor<R>) -> CubeTensor<R> {
    let (x, dy) = (contiguous(x), contiguous(dy));
    let [n, c, h, w] = x.meta.shape().dims::<4>();
    // The kernel reads dy where it reads x, unchecked.
    assert_eq!(dy.meta.shape(), x.meta.shape(), "depthwise output gradient");
    if n * c * h * w == 0 {
        return zeros(&x, Shape::new([c, 1, 3, 3]));
    }
    let client = x.client.clone();
    let max_units = client.properties().hardware.max_units_per_cube as usize;
    let most = GRAD_UNITS.min(max_units);
    let (vector, cols) = row_layout(w);
    let strips_per_image = (h.div_ceil(ROWS_PER_UNIT) * w.div_ceil(cols)).max(1);
    let images = (STRIPS_PER_UNIT * most / strips_per_image).clamp(1, n.max(1));
    let images = n.div_ceil(n.div_ceil(images).min(MAX_CUBES_YZ)).max(1);
    let parts = n.div_ceil(images).max(1);
    // Units for `STRIPS_PER_UNIT` strips each of a part: the small last blocks' parts have few
    // strips (block 3 at batch 32: 128), and the cube's tree costs as much as its units.
    let units = (images * strips_per_image)
        .div_ceil(STRIPS_PER_UNIT)
        .next_power_of_two()
        .clamp(WARP.min(most), most);
    let partial = empty(&x, Shape::new([parts, c * 9]));
    // SAFETY: loads are clamped into x and dy (of x's shape, asserted above).
    unsafe {
        kernels::depthwise3x3_filter_grad::launch_unchecked::<R>(
            &client,
            CubeCount::Static(c as u32, parts as u32, 1),
            CubeDim::new_1d(units as u32),
            vector,
            x.into_tensor_arg(),
            dy.into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            images,
            ROWS_PER_UNIT,
            cols,
            units.next_power_of_two(),
        )
    };
    reshape(sum_leading(partial), Shape::new([c, 1, 3, 3]))
}

#[derive(Debug)]
struct DepthwiseBackward;

impl<R: CubeRuntime, BT: BoolElement> Backward<Cube<R, BT>, 2> for DepthwiseBackward {
    type State = (CubeTensor<R>, CubeTensor<R>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Cube<R, BT>>(&ops.node);
        let (x, weight) = ops.state;
        let [x_node, w_node] = ops.parents;
        if let Some(node) = x_node {
            grads.register::<Cube<R, BT>>(node.id, forward(dy.clone(), weight, true));
        }
        if let Some(node) = w_node {
            grads.register::<Cube<R, BT>>(node.id, filter_grad(x, dy));
        }
    }
}

fn depthwise_autodiff<R: CubeRuntime, BT: BoolElement>(
    x: Tensor<Autodiff<Cube<R, BT>>, 4>,
    weight: Tensor<Autodiff<Cube<R, BT>>, 4>,
) -> Tensor<Autodiff<Cube<R, BT>>, 4> {
    let (x, weight) = (float(x), float(weight));
    // Made contiguous once, for the forward and the filter gradient: on CUDA the network's input
    // comes from burn's upload with its rows padded (cubecl's pitched layout), a copy each time.
    let (x_values, w_values) = (contiguous(x.primitive), contiguous(weight.primitive));
    let y = forward(x_values.clone(), w_values.clone(), false);
    let prep = DepthwiseBackward
        .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful();
    tensor(match prep {
        OpsKind::Tracked(prep) => prep.finish((x_values, w_values), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    })
}

pub(super) fn on<B: Backend, R: CubeRuntime, BT: BoolElement>(
    inputs: Inputs<B>,
) -> Result<Tensor<B, 4>, Inputs<B>> {
    type Ad<R, BT> = Autodiff<Cube<R, BT>>;
    match cast::<_, (Tensor<Ad<R, BT>, 4>, Tensor<Ad<R, BT>, 4>)>(inputs) {
        Ok((x, w)) => Ok(same(depthwise_autodiff(x, w))),
        Err(inputs) => match cast::<_, (Tensor<Cube<R, BT>, 4>, Tensor<Cube<R, BT>, 4>)>(inputs) {
            Ok((x, w)) => Ok(same(tensor::<Cube<R, BT>, 4>(forward(
                float(x),
                float(w),
                false,
            )))),
            Err(inputs) => Err(inputs),
        },
    }
}
