//! The CPU kernels at the edges of their shapes: an empty batch, no channels, planes of no
//! pixels, and planes too small to pool. Each returns results of the right (empty) sizes instead
//! of panicking; `fast_ops`' tests check the values of ordinary shapes against burn.

use models::kernels::*;

fn shape(n: usize, c: usize, h: usize, w: usize) -> Nchw {
    Nchw { n, c, h, w }
}

#[test]
fn a_shape_counts_its_planes_and_elements() {
    let s = shape(2, 3, 4, 5);
    assert_eq!((s.plane(), s.len(), s.is_empty()), (20, 120, false));
    for empty in [shape(0, 3, 4, 5), shape(2, 0, 4, 5), shape(2, 3, 0, 5)] {
        assert_eq!((empty.len(), empty.is_empty()), (0, true), "{empty:?}");
    }
}

#[test]
fn empty_shapes_give_empty_results() {
    let co = 2;
    for s in [
        shape(0, 3, 4, 5),
        shape(2, 0, 4, 4),
        shape(2, 3, 0, 5),
        shape(2, 3, 5, 0),
    ] {
        let x = vec![0.5f32; s.len()];
        let (ones, zeros) = (vec![1f32; s.c], vec![0f32; s.c]);
        let depthwise = vec![0.1f32; 9 * s.c];
        assert!(depthwise3x3(&x, &depthwise, s).is_empty(), "{s:?}");
        let (pw, bias) = (vec![0.1f32; co * s.c], vec![0.2f32; co]);
        let dy = vec![1f32; s.n * co * s.plane()];
        assert_eq!(pointwise(&x, &pw, &bias, s).len(), dy.len(), "{s:?}");
        for input_grad in [true, false] {
            let (dx, dw) = depthwise3x3_backward(&x, &depthwise, &x, s, input_grad);
            assert_eq!(dx.map(|d| d.len()), input_grad.then_some(0), "{s:?}");
            assert_eq!(dw.len(), 9 * s.c, "{s:?}");
            let (dx, dw, db) = pointwise_backward(&x, &pw, &dy, co, s, input_grad);
            assert_eq!(dx.map(|d| d.len()), input_grad.then_some(0), "{s:?}");
            assert_eq!((dw.len(), db.len()), (co * s.c, co), "{s:?}");
        }
        let (y, stats) = relu_batch_norm(&x, &ones, &zeros, 1e-3, s);
        assert_eq!((y.len(), stats.mean.len(), stats.var.len()), (0, s.c, s.c));
        let (y, code, _) = relu_batch_norm_pool(&x, &ones, &zeros, 1e-3, s, Some((0.25, 1)));
        assert!(y.is_empty() && code.is_empty(), "{s:?}");
        let (dz, dgamma, dbeta) =
            relu_batch_norm_backward(&x, &ones, &stats, 1e-3, OutputGrad::Dense(&x), s);
        assert_eq!((dz.len(), dgamma.len(), dbeta.len()), (0, s.c, s.c));
        assert!(relu_affine(&x, &ones, &zeros, s).is_empty(), "{s:?}");
        let (y, code) = max_pool2_dropout(&x, s, None);
        assert!(y.is_empty() && code.is_empty(), "{s:?}");
        assert!(
            max_pool2_dropout_backward(&[], &[], s, 1.0).is_empty(),
            "{s:?}"
        );
    }
}

/// A plane one pixel high pools to nothing: no output, and no gradient reaches its input.
#[test]
fn planes_too_small_to_pool_give_no_output_and_no_gradient() {
    let s = shape(2, 3, 1, 6);
    let x = vec![0.5f32; s.len()];
    let (y, code) = max_pool2_dropout(&x, s, Some((0.25, 1)));
    assert!(y.is_empty() && code.is_empty());
    let (ones, zeros) = (vec![1f32; s.c], vec![0f32; s.c]);
    let (y, code, _) = relu_batch_norm_pool(&x, &ones, &zeros, 1e-3, s, None);
    assert!(y.is_empty() && code.is_empty());
    assert_eq!(
        max_pool2_dropout_backward(&[], &[], s, 1.0),
        vec![0.0; s.len()]
    );
}

/// SplitMix64 (Steele, Lea and Flood 2014), as published.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Plane `plane`'s 16-bit draws for `seed`: SplitMix64 from `seed ^ plane * 0x9E3779B97F4A7C15`,
/// four draws a number, low bits first.
fn draws(seed: u64, plane: usize, count: usize) -> Vec<u64> {
    let mut state = seed ^ (plane as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..count.div_ceil(4))
        .flat_map(|_| {
            let v = splitmix64(&mut state);
            (0..4).map(move |k| v >> (16 * k) & 0xFFFF)
        })
        .take(count)
        .collect()
}

/// Dropout's mask is a fixed function of the seed, so a seed gives the same mask in every
/// version: each plane's windows in row-major order take its draws in turn, and a window is kept
/// when its draw is below round((1 - p) x 2^16), its maximum then scaled by 1 / (1 - p).
#[test]
fn dropout_masks_are_splitmix64_draws_of_the_seed() {
    let mut zero = 0;
    assert_eq!(
        splitmix64(&mut zero),
        0xE220_A839_7B1D_CDAF,
        "the published first value"
    );
    // 11 windows a row: a group of eight and a tail.
    let s = shape(3, 5, 6, 22);
    let windows = 3 * 11;
    let x: Vec<f32> = (0..s.len()).map(|i| (i % 7) as f32).collect();
    let plain = max_pool2_dropout(&x, s, None).0;
    // A p whose threshold is exactly plane 0's first draw: that window is dropped (below, not
    // at the threshold, is kept).
    let first = draws(7, 0, 1)[0];
    let at_first = (1.0 - first as f64 / 65536.0) as f32;
    for (p, seed) in [(0.25f32, 7u64), (0.5, 123_456_789), (at_first, 7)] {
        let (y, code) = max_pool2_dropout(&x, s, Some((p, seed)));
        let threshold = ((1.0 - f64::from(p)) * 65536.0).round() as u64;
        for plane in 0..s.n * s.c {
            let at = plane * windows..(plane + 1) * windows;
            for (i, draw) in at.zip(draws(seed, plane, windows)) {
                let kept = draw < threshold;
                assert_eq!(code[i] & 4 != 0, kept, "p {p} seed {seed} window {i}");
                let want = if kept { plain[i] / (1.0 - p) } else { 0.0 };
                assert!(
                    (y[i] - want).abs() < 1e-5,
                    "p {p} window {i}: {} vs {want}",
                    y[i]
                );
            }
        }
    }
    assert_eq!(max_pool2_dropout(&x, s, Some((at_first, 7))).1[0] & 4, 0);
}

/// ReLU passes no gradient where its input is 0 or below (as burn's does): BatchNorm(ReLU)'s
/// input gradient is 0 exactly there, and not elsewhere.
#[test]
fn no_gradient_flows_where_relu_is_flat() {
    let s = shape(2, 2, 3, 4);
    let z: Vec<f32> = (0..s.len()).map(|i| (i % 4) as f32 - 1.0).collect(); // -1, 0, 1, 2
    let dy: Vec<f32> = (0..s.len()).map(|i| 1.0 + (i % 7) as f32).collect();
    let gamma = vec![1.5f32; s.c];
    let (_, stats) = relu_batch_norm(&z, &gamma, &[0.0; 2], 1e-3, s);
    let (dz, ..) = relu_batch_norm_backward(&z, &gamma, &stats, 1e-3, OutputGrad::Dense(&dy), s);
    for (i, (&z, &g)) in z.iter().zip(&dz).enumerate() {
        assert_eq!(g == 0.0, z <= 0.0, "at {i}: z {z}, gradient {g}");
    }
}
