//! A block's end on the GPU: the 2x2 max-pool (stride 2) and inverted dropout of
//! `relu(z) * scale + shift`, in one kernel that reads z once and writes only the pooled output
//! and one code per output (where the window's maximum was, and whether dropout kept it); its
//! backward puts each kept output's gradient back at its window's maximum. burn's ops take a
//! full-size affine output, a pool with its indices, a Bernoulli mask and a product for the same.
//!
//! The same rules as the CPU kernels (`kernels::max_pool2_dropout`): the first maximum in window
//! order (top-left, top-right, bottom-left, bottom-right), a trailing odd row or column dropped.
//! The masks come from a counter-based hash of the output's index and a seed the backend draws
//! on the device (so `Backend::seed` makes them reproducible, with no wait for the device); they
//! are not the CPU's masks, as burn's own dropout draws differ between backends too.

use super::{Cube, contiguous, elementwise, empty, vector_size};
use burn::tensor::{DType, Distribution, Int, Shape, Tensor};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime};

/// The kernels (in their own module: CubeCL's `Tensor` is not burn's).
mod kernels {
    use cubecl::prelude::*;

    /// Chris Wellons' `lowbias32` integer hash: every input bit moves every output bit.
    #[cube]
    fn mix(x: u32) -> u32 {
        let mut x = x;
        x ^= x >> 16u32;
        x *= 0x7feb_352du32;
        x ^= x >> 15u32;
        x *= 0x846c_a68bu32;
        x ^ (x >> 16u32)
    }

    /// Output `at`'s draw for the mask of `seed` (two words).
    #[cube]
    fn draw(seed: &Tensor<i32>, at: usize) -> u32 {
        mix(mix(u32::cast_from(at) ^ u32::cast_from(seed[0usize])) ^ u32::cast_from(seed[1usize]))
    }

    /// Reads `count` neighbouring values of z from `at` (a value's index, a multiple of N) as
    /// vectors of N into `row`.
    #[cube]
    fn read_row<N: Size>(
        z: &Tensor<Vector<f32, N>>,
        at: usize,
        row: &mut Array<f32>,
        #[comptime] count: usize,
    ) {
        let n = z.vector_size();
        #[unroll]
        for v in 0..comptime!(count / n) {
            let values = z[at / n + v];
            #[unroll]
            for l in 0..n {
                row[v * n + l] = values[l];
            }
        }
    }

    /// `y[n, c, i, j]` = the maximum of `relu(z) * scale[c] + shift[c]` over the window rows
    /// 2i, 2i + 1 and columns 2j, 2j + 1 of z `[n, c, h, w]`, times `1 / keep` when its draw is
    /// below `keep_below` (`dropout`), else 0; `code` gets the window position of the maximum
    /// (0..4), plus 4 when kept. One unit per vector of M outputs along a row (whose windows'
    /// two rows of z it reads as vectors of N: N = 2M, or N = 1).
    #[cube(launch_unchecked)]
    pub(super) fn relu_affine_pool<N: Size, M: Size>(
        z: &Tensor<Vector<f32, N>>,
        scale: &Tensor<f32>,
        shift: &Tensor<f32>,
        seed: &Tensor<i32>,
        y: &mut Tensor<Vector<f32, M>>,
        code: &mut Tensor<Vector<u32, M>>,
        keep_below: u32,
        inv_keep: f32,
        #[comptime] dropout: bool,
    ) {
        if ABSOLUTE_POS >= y.len() {
            terminate!();
        }
        let m = y.vector_size();
        let first = ABSOLUTE_POS * m;
        let (channels, width) = (z.shape(1), z.shape(3));
        let (ho, wo) = (y.shape(2), y.shape(3));
        let j = first % wo;
        let i = (first / wo) % ho;
        let plane = first / (wo * ho);
        let c = plane % channels;
        let (a, b) = (scale[c], shift[c]);
        let top = (plane * z.shape(2) + 2usize * i) * width + 2usize * j;
        let mut upper = Array::<f32>::new(comptime!(2 * m));
        let mut lower = Array::<f32>::new(comptime!(2 * m));
        read_row(z, top, &mut upper, comptime!(2 * m));
        read_row(z, top + width, &mut lower, comptime!(2 * m));
        let mut out = Vector::<f32, M>::empty();
        let mut codes = Vector::<u32, M>::empty();
        #[unroll]
        for k in 0..m {
            let v0 = f32::max(upper[2 * k], 0.0f32) * a + b;
            let v1 = f32::max(upper[2 * k + 1], 0.0f32) * a + b;
            let v2 = f32::max(lower[2 * k], 0.0f32) * a + b;
            let v3 = f32::max(lower[2 * k + 1], 0.0f32) * a + b;
            let (m1, i1) = (select(v1 > v0, v1, v0), select(v1 > v0, 1u32, 0u32));
            let (m2, i2) = (select(v3 > v2, v3, v2), select(v3 > v2, 3u32, 2u32));
            let (top_value, arg) = (select(m2 > m1, m2, m1), select(m2 > m1, i2, i1));
            let mut kept = true;
            if dropout {
                kept = draw(seed, first + k) < keep_below;
            }
            out[k] = select(kept, top_value * inv_keep, 0.0f32);
            codes[k] = arg + select(kept, 4u32, 0u32);
        }
        y[ABSOLUTE_POS] = out;
        code[ABSOLUTE_POS] = codes;
    }

    /// The gradient of `relu_affine_pool`'s pre-pool values `[n, c, h, w]` from its output's, dy
    /// `[n, c, h/2, w/2]`: `dy * 1 / keep` at each kept window's maximum, 0 elsewhere. One unit
    /// per vector of M windows along a row of `cells` (`[n, c, ceil(h/2), ceil(w/2)]`, counted
    /// in vectors), which reads its outputs' gradients and codes once and writes the windows'
    /// two rows as vectors of N (N = 2M, or N = 1); the windows of a trailing odd row or column,
    /// which the pool dropped, get zeros (with M = 2 the rows are a multiple of 4 long: a
    /// vector's windows are all pooled or all in the trailing row).
    #[cube(launch_unchecked)]
    pub(super) fn unpool<N: Size, M: Size>(
        dy: &Tensor<Vector<f32, M>>,
        code: &Tensor<Vector<u32, M>>,
        dx: &mut Tensor<Vector<f32, N>>,
        cells: usize,
        inv_keep: f32,
    ) {
        if ABSOLUTE_POS >= cells {
            terminate!();
        }
        let (m, n) = (dy.vector_size(), dx.vector_size());
        let first = ABSOLUTE_POS * m;
        let (height, width) = (dx.shape(2), dx.shape(3));
        let (ho, wo) = (dy.shape(2), dy.shape(3));
        let (hc, wc) = (height.div_ceil(2usize), width.div_ceil(2usize));
        let j = first % wc;
        let i = (first / wc) % hc;
        let plane = first / (wc * hc);
        let pooled = i < ho && j < wo;
        let mut g = Vector::<f32, M>::cast_from(0.0f32);
        // 8: no window position, never matched (codes are 0..8, kept ones 4..8).
        let mut kept_at = Vector::<u32, M>::cast_from(8u32);
        if pooled {
            let o = ((plane * ho + i) * wo + j) / m;
            g = dy[o] * Vector::cast_from(inv_keep);
            kept_at = code[o];
        }
        #[unroll]
        for dr in 0..2usize {
            let row = (plane * height + 2usize * i + dr) * width + 2usize * j;
            #[unroll]
            for v in 0..comptime!(2 * m / n) {
                let mut values = Vector::<f32, N>::empty();
                #[unroll]
                for l in 0..n {
                    let (k, dc) = ((v * n + l) / 2, (v * n + l) % 2);
                    let here = kept_at[k] == u32::cast_from(dr * 2usize + dc) + 4u32;
                    values[l] = select(here, g[k], 0.0f32);
                }
                if 2usize * i + dr < height && 2usize * j + v * n < width {
                    dx[row / n + v] = values;
                }
            }
        }
    }
}

/// How the pool's units read a plane of `width` columns: (the vector size of z's rows, the
/// outputs a unit takes). Rows a multiple of 4 long (every layer of CancerNet): 2 outputs from
/// one vector of each of their two rows; others one output from one value a load.
fn unit_layout(width: usize) -> (usize, usize) {
    match vector_size(width) {
        1 => (1, 1),
        n => (n, n / 2),
    }
}

/// What the backward pass needs of a pool: the codes and `1 / keep`.
pub(super) type Codes<R> = (CubeTensor<R>, f32);

/// The pooled, dropped-out `relu(z) * scale + shift` of z `[n, c, h, w]` (contiguous) with
/// dropout probability `p`, and its codes.
pub(super) fn forward<R: CubeRuntime, BT: BoolElement>(
    z: &CubeTensor<R>,
    scale: CubeTensor<R>,
    shift: CubeTensor<R>,
    p: f32,
) -> (CubeTensor<R>, Codes<R>) {
    let [n, c, h, w] = z.meta.shape().dims::<4>();
    let out = Shape::new([n, c, h / 2, w / 2]);
    let y = empty(z, out.clone());
    let code = empty(z, out.clone());
    let code = CubeTensor {
        dtype: DType::U32,
        ..code
    };
    // Two 30-bit draws of the backend's generator (its integers may be 32-bit signed); without
    // dropout the kernel reads none, and any tensor fills the place.
    let seed = match p > 0.0 {
        true => Tensor::<Cube<R, BT>, 1, Int>::random(
            [2],
            Distribution::Uniform(0.0, (1u64 << 30) as f64),
            &z.device,
        )
        .into_primitive(),
        false => code.clone(),
    };
    let keep = 1.0 - p;
    if out.num_elements() == 0 {
        return (y, (code, 1.0 / keep));
    }
    let client = z.client.clone();
    let (vector, outputs) = unit_layout(w);
    let (cube_count, cube_dim) = elementwise(&client, out.num_elements() / outputs);
    // SAFETY: a unit past the last output ends; a window's rows and columns are inside z.
    unsafe {
        kernels::relu_affine_pool::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            vector,
            outputs,
            z.clone().into_tensor_arg(),
            scale.into_tensor_arg(),
            shift.into_tensor_arg(),
            seed.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            code.clone().into_tensor_arg(),
            (keep as f64 * 4_294_967_296.0).round().min(u32::MAX as f64) as u32,
            1.0 / keep,
            p > 0.0,
        )
    };
    (y, (code, 1.0 / keep))
}

/// The gradient of the pool's input `[n, c, h, w]` (`shape`) from its output's, dy.
pub(super) fn backward<R: CubeRuntime>(
    dy: CubeTensor<R>,
    (code, inv_keep): Codes<R>,
    shape: Shape,
) -> CubeTensor<R> {
    let dy = contiguous(dy);
    let [n, c, h, w] = shape.dims::<4>();
    let dx = empty(&dy, shape);
    if dx.meta.shape().num_elements() == 0 {
        return dx;
    }
    let client = dy.client.clone();
    let (vector, outputs) = unit_layout(w);
    let cells = n * c * h.div_ceil(2) * w.div_ceil(2) / outputs;
    let (cube_count, cube_dim) = elementwise(&client, cells);
    // SAFETY: a unit past the last cell ends; dy is read for pooled windows only, dx written
    // inside the plane only.
    unsafe {
        kernels::unpool::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            vector,
            outputs,
            dy.into_tensor_arg(),
            code.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            cells,
            inv_keep,
        )
    };
    dx
}
