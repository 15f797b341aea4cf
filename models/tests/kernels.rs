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
        for input_grad in [true, false] {
            let (dx, dw) = depthwise3x3_backward(&x, &depthwise, &x, s, input_grad);
            assert_eq!(dx.map(|d| d.len()), input_grad.then_some(0), "{s:?}");
            assert_eq!(dw.len(), 9 * s.c, "{s:?}");
            let (pw, bias) = (vec![0.1f32; co * s.c], vec![0.2f32; co]);
            let dy = vec![1f32; s.n * co * s.plane()];
            let (dx, dw, db) = pointwise_backward(&x, &pw, &dy, co, s, input_grad);
            assert_eq!(dx.map(|d| d.len()), input_grad.then_some(0), "{s:?}");
            assert_eq!((dw.len(), db.len()), (co * s.c, co), "{s:?}");
            assert_eq!(pointwise(&x, &pw, &bias, s).len(), dy.len(), "{s:?}");
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
