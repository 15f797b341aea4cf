use super::*;

#[test]
fn verification_compares_probabilities_and_calls() {
    // Three patches: identical, 3e-5 apart, 2e-4 apart (the same call each time).
    let burn = [0.9, 0.1, 0.3, 0.7, 0.6, 0.4];
    let close = [0.1, 0.70003, 0.4];
    let (d, n) = compare(&burn, &close);
    assert!((d - 3e-5).abs() < 1e-6 && n == 0, "{d} {n}");
    assert!(agree(d, n));
    let far = [0.1, 0.7, 0.4002];
    let (d, n) = compare(&burn, &far);
    assert!((d - 2e-4).abs() < 1e-6 && n == 0, "{d} {n}");
    assert!(!agree(d, n), "2e-4 apart must fail");
    // A call that flips with a tiny difference fails too; each flip is counted.
    let flipped = [0.50001, 0.49999, 0.49999, 0.50001];
    let (d, n) = compare(&flipped, &[0.49999, 0.50001]);
    assert_eq!((d, n), (0.0, 0));
    let (d, n) = compare(&flipped, &[0.50001, 0.49999]);
    assert_eq!(n, 2);
    assert!(d < 1e-4 && !agree(d, n));
    assert!(agree(1e-4, 0) && !agree(0.0, 1));
}

#[test]
fn verification_fails_on_nan_on_either_side() {
    let nan = f32::NAN;
    // NaN on both sides (weights that overflowed): `f32::max` would read it as difference 0.
    let (d, n) = compare(&[0.9, 0.1, nan, nan], &[0.1, nan]);
    assert!(d.is_nan() && n == 1 && !agree(d, n), "{d} {n}");
    // Once NaN, the largest difference stays NaN whatever follows.
    let (d, n) = compare(&[nan, nan, 0.9, 0.1], &[nan, 0.5]);
    assert!(d.is_nan() && n == 2, "{d} {n}");
    // NaN on one side only: the other class's probability alone, or ONNX Runtime's.
    let (d, n) = compare(&[nan, 0.1], &[0.1]);
    assert!(d == 0.0 && n == 1 && !agree(d, n), "{d} {n}");
    let (d, n) = compare(&[0.9, 0.1], &[nan]);
    assert!(d.is_nan() && n == 1, "{d} {n}");
}
