//! CPU kernels behind CancerNet's fast training path, on plain `f32` slices in NCHW order.
//!
//! Each works plane by plane (one `h x w` image of one channel of one sample), in parallel over
//! the planes with rayon (BatchNorm over the channels, a channel's planes together), and writes
//! its result into a fresh buffer. `fast_ops` wraps them as burn operations with their own
//! backward; its tests check values and gradients against burn's ops.
//!
//! The public kernels are compiled twice, for AVX2 + FMA and for baseline x86-64, and pick one
//! at run time (`multiversion`). Closures defined inside a kernel inherit its target features,
//! so the per-plane loops that rayon runs are 8 floats wide where the CPU allows.
//!
//! `depthwise` holds the depthwise 3x3 convolution, `pointwise` the 1x1 convolution (the dense
//! layers are burn's `Linear` on the CPU), `batch_norm` training-mode ReLU + BatchNorm (with a block's pool fused in), `pool` the
//! max-pool + dropout, and `buffers` the plumbing they share (buffers filled in parallel without
//! zeroing, planes grouped by channel).

mod batch_norm;
mod buffers;
mod depthwise;
mod pointwise;
mod pool;

pub use batch_norm::{
    BatchStats, OutputGrad, bn_affine, relu_affine, relu_batch_norm, relu_batch_norm_backward,
    relu_batch_norm_pool,
};
pub use depthwise::{depthwise3x3, depthwise3x3_backward};
pub use pointwise::{pointwise, pointwise_backward};
pub use pool::{max_pool2_dropout, max_pool2_dropout_backward};

/// Shape of an NCHW tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nchw {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Nchw {
    pub fn plane(&self) -> usize {
        self.h * self.w
    }
    pub fn len(&self) -> usize {
        self.n * self.c * self.plane()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sum of `f(a[i], b[i])` with eight accumulators (vectorizable).
#[inline(always)]
fn sum_map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += f(x[l], y[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel's output, gradients included, is the same bits whatever the thread count
    /// (and however rayon splits the work): training repeats byte for byte at the default
    /// `threads: 0`. The reductions over samples are where this can break.
    #[test]
    fn kernels_give_the_same_bits_on_any_thread_count() {
        let s = Nchw {
            n: 37,
            c: 12,
            h: 6,
            w: 10,
        };
        let co = 9;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        };
        let (x, dw_in, wp, b) = (rand(s.len()), rand(9 * s.c), rand(co * s.c), rand(co));
        let dy_p = rand(s.n * co * s.plane());
        let dy_d = rand(s.len());
        let all = || {
            let (dxp, dwp, dbp) = pointwise_backward(&x, &wp, &dy_p, co, s, true);
            let (dxd, dwd) = depthwise3x3_backward(&x, &dw_in, &dy_d, s, true);
            let y = pointwise(&x, &wp, &b, s);
            let gamma: Vec<f32> = (0..s.c).map(|i| 1.0 + i as f32 / 10.0).collect();
            let stats = relu_batch_norm(&x, &gamma, &vec![0.1; s.c], 1e-3, s);
            (
                dxp,
                dwp,
                dbp,
                dxd,
                dwd,
                y,
                stats.0,
                stats.1.mean,
                stats.1.var,
            )
        };
        let bits = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let out = pool.install(all);
            format!("{:?}", out)
        };
        let one = bits(1);
        for threads in [2, 3, 8] {
            assert!(bits(threads) == one, "{threads} threads differ from 1");
        }
    }
}
