//! Neighbour context: a patch's IDC probability averaged, in log-odds, with those of the patches
//! next to it on the same slide (the 8 grid neighbours the file names place there).
//!
//! The dataset's labels come from IDC regions outlined by hand on whole slides, so a patch's
//! label is mostly its neighbours' too, and a slide evaluated as a whole has them. Measured in
//! docs/accuracy.md (patient-level cross-validation): ROC AUC higher in every fold.

use datasets::PatchName;
use std::collections::HashMap;

/// Step of the Kaggle grid: the patches of one slide sit 50 px apart (x, y = 50k + 1).
pub const GRID: u32 = 50;

/// Each neighbour's weight against the patch's own 1: `runtime --context`'s default, and the
/// trainer's `context` variants.
pub const DEFAULT_WEIGHT: f64 = 0.5;

/// The largest neighbour weight accepted (in config, flags and model metadata alike): at 4 the
/// 8 neighbours already outweigh the patch itself 32 to 1.
pub const MAX_WEIGHT: f64 = 4.0;

/// Whether `w` is a neighbour weight `smooth` accepts from a user: in (0, `MAX_WEIGHT`].
pub fn valid_weight(w: f64) -> bool {
    w > 0.0 && w <= MAX_WEIGHT
}

/// The 8 grid neighbours, in steps of `GRID`.
const NEIGHBOURS: [(i32, i32); 8] = [
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, -1),
    (0, 1),
    (1, -1),
    (1, 0),
    (1, 1),
];

/// Probabilities are clamped this far from 0 and 1 before their log-odds are taken.
const EPS: f64 = 1e-6;

/// The probabilities with context, and how many patches had at least one neighbour.
#[derive(Debug, Clone, PartialEq)]
pub struct Smoothed {
    pub probs: Vec<f32>,
    pub with_neighbours: usize,
}

fn logit(p: f32) -> f64 {
    let p = f64::from(p).clamp(EPS, 1.0 - EPS);
    (p / (1.0 - p)).ln()
}

/// `probs[i]` (patch `names[i]`) with each of its grid neighbours (same patient, x and y within
/// one `GRID` step) added at `weight` to the patch's own 1, as a weighted mean of log-odds. A
/// patch without a parsed name or without neighbours keeps its probability exactly; so does a
/// non-finite one (never passed on to neighbours either). Patches sharing a position count once
/// as a neighbour (the first of them).
pub fn smooth(names: &[Option<&PatchName>], probs: &[f32], weight: f64) -> Smoothed {
    assert_eq!(names.len(), probs.len(), "one name per probability");
    let mut at: HashMap<(&str, u32, u32), usize> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(n) = name
            && probs[i].is_finite()
        {
            at.entry((n.patient.as_str(), n.x, n.y)).or_insert(i);
        }
    }
    // Each patch's log-odds once, however many patches it neighbours.
    let z: Vec<f64> = probs.iter().map(|&p| logit(p)).collect();
    let mut with_neighbours = 0;
    let out = names
        .iter()
        .zip(probs)
        .zip(&z)
        .map(|((name, &p), &own)| {
            let Some(n) = name.filter(|_| p.is_finite()) else {
                return p;
            };
            let mut sum = 0.0;
            let mut count = 0usize;
            for (dx, dy) in NEIGHBOURS {
                let step = |at: u32, d: i32| at.checked_add_signed(d * GRID as i32);
                let (Some(x), Some(y)) = (step(n.x, dx), step(n.y, dy)) else {
                    continue; // off the slide's top or left edge (or past u32's end)
                };
                if let Some(&j) = at.get(&(n.patient.as_str(), x, y)) {
                    sum += z[j];
                    count += 1;
                }
            }
            if count == 0 {
                return p;
            }
            with_neighbours += 1;
            let mean = (own + weight * sum) / (1.0 + weight * count as f64);
            (1.0 / (1.0 + (-mean).exp())) as f32
        })
        .collect();
    Smoothed {
        probs: out,
        with_neighbours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(patient: &str, x: u32, y: u32) -> PatchName {
        PatchName {
            patient: patient.into(),
            x,
            y,
            class: 0,
        }
    }

    #[test]
    fn neighbours_pull_a_patch_toward_them_and_strangers_do_not() {
        let names = [
            name("a", 100, 100),
            name("a", 150, 100), // right of the first
            name("a", 50, 50),   // diagonal
            name("a", 200, 100), // two steps away: not a neighbour of the first
            name("b", 100, 150), // another patient
        ];
        let refs: Vec<_> = names.iter().map(Some).collect();
        let probs = [0.5, 0.9, 0.9, 0.1, 0.0];
        let s = smooth(&refs, &probs, 0.5);
        // (logit 0.5 + 0.5 * 2 * logit 0.9) / (1 + 0.5 * 2) = logit(0.9) / 2 = logit(0.75).
        assert!((s.probs[0] - 0.75).abs() < 1e-6, "{:?}", s.probs);
        assert!(s.probs[1] < 0.9 && s.probs[1] > 0.5, "{:?}", s.probs);
        assert_eq!(s.probs[4], 0.0, "patient b has no neighbours");
        assert_eq!(s.with_neighbours, 4);
    }

    #[test]
    fn zero_weight_unnamed_and_non_finite_patches_keep_their_probability() {
        let names = [name("a", 0, 0), name("a", 50, 0), name("a", 0, 50)];
        let probs = [0.2, 0.7, f32::NAN];
        let s = smooth(&[Some(&names[0]), Some(&names[1]), None], &probs, 0.0);
        assert!((s.probs[0] - 0.2).abs() < 1e-6 && (s.probs[1] - 0.7).abs() < 1e-6);
        let s = smooth(&[Some(&names[0]), None, Some(&names[2])], &probs, 0.5);
        assert_eq!(s.probs[0], 0.2, "its only named neighbour is NaN: not used");
        assert!(s.probs[2].is_nan());
        assert_eq!(s.with_neighbours, 0);
    }

    #[test]
    fn weights_in_zero_to_max_are_valid() {
        for w in [f64::MIN_POSITIVE, DEFAULT_WEIGHT, 1.0, MAX_WEIGHT] {
            assert!(valid_weight(w), "{w}");
        }
        let above = MAX_WEIGHT * (1.0 + f64::EPSILON);
        for w in [0.0, -0.5, above, f64::INFINITY, f64::NAN] {
            assert!(!valid_weight(w), "{w}");
        }
    }

    /// The formula of `smooth`'s documentation, written out for one patch.
    fn mean_of_log_odds(own: f64, neighbours: &[f64], weight: f64) -> f32 {
        let logit = |p: f64| (p / (1.0 - p)).ln();
        let sum: f64 = neighbours.iter().map(|&p| logit(p)).sum();
        let z = (logit(own) + weight * sum) / (1.0 + weight * neighbours.len() as f64);
        (1.0 / (1.0 + (-z).exp())) as f32
    }

    #[test]
    fn each_of_the_8_neighbours_counts_once() {
        // The centre at (100, 100) and each neighbour with its own probability: a neighbour read
        // at the wrong place (or twice) changes the mean.
        let probs = [0.3, 0.11, 0.22, 0.33, 0.44, 0.55, 0.66, 0.77, 0.88];
        let mut names = vec![name("a", 100, 100)];
        names.extend(
            NEIGHBOURS
                .iter()
                .map(|&(dx, dy)| name("a", (100 + dx * 50) as u32, (100 + dy * 50) as u32)),
        );
        let refs: Vec<_> = names.iter().map(Some).collect();
        let s = smooth(&refs, &probs, 0.7);
        let rest: Vec<f64> = probs[1..].iter().map(|&p| f64::from(p)).collect();
        let want = mean_of_log_odds(f64::from(probs[0]), &rest, 0.7);
        assert!((s.probs[0] - want).abs() < 1e-6, "{} vs {want}", s.probs[0]);
        assert_eq!(s.with_neighbours, 9);
    }

    #[test]
    fn certain_probabilities_are_clamped_before_their_log_odds() {
        // 1 and 0 would be infinite log-odds, deciding alone: clamped 1e-6 from 1 and 0 they pull
        // hard, as far as the weights say.
        let names = [
            name("a", 0, 0),
            name("a", 50, 0),
            name("a", 200, 0),
            name("a", 250, 0),
        ];
        let refs: Vec<_> = names.iter().map(Some).collect();
        let s = smooth(&refs, &[0.5, 1.0, 0.0, 0.5], 0.5);
        let want = [
            mean_of_log_odds(0.5, &[1.0 - EPS], 0.5),
            mean_of_log_odds(1.0 - EPS, &[0.5], 0.5),
            mean_of_log_odds(EPS, &[0.5], 0.5),
        ];
        for (got, want) in s.probs.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{:?} vs {want}", s.probs);
        }
    }

    proptest! {
        #[test]
        fn probabilities_stay_probabilities_whatever_the_layout(
            cells in proptest::collection::vec((0u8..2, 0u32..4, 0u32..4, 0.0f32..=1.0), 0..40),
            weight in 0.0f64..4.0,
        ) {
            let names: Vec<_> = cells
                .iter()
                .map(|&(p, x, y, _)| name(if p == 0 { "a" } else { "b" }, x * GRID, y * GRID))
                .collect();
            let refs: Vec<_> = names.iter().map(Some).collect();
            let probs: Vec<f32> = cells.iter().map(|c| c.3).collect();
            let s = smooth(&refs, &probs, weight);
            prop_assert_eq!(s.probs.len(), probs.len());
            prop_assert!(s.with_neighbours <= probs.len());
            // Each result lies between the lowest and highest of the patch's own probability and
            // its neighbours' (a weighted mean of log-odds), up to the clamp away from 0 and 1.
            for (i, (&q, &p)) in s.probs.iter().zip(&probs).enumerate() {
                prop_assert!((0.0..=1.0).contains(&q), "{} from {}", q, p);
                let near = names.iter().zip(&probs).filter(|(n, _)| {
                    n.patient == names[i].patient
                        && n.x.abs_diff(names[i].x) <= GRID
                        && n.y.abs_diff(names[i].y) <= GRID
                });
                let (lo, hi) = near.fold((p, p), |(lo, hi), (_, &o)| (lo.min(o), hi.max(o)));
                prop_assert!(q >= lo - 1e-5 && q <= hi + 1e-5, "{} outside [{}, {}]", q, lo, hi);
            }
            // Reversing the input reverses the output when no position is shared.
            let mut seen = std::collections::HashSet::new();
            if names.iter().all(|n| seen.insert((n.patient.clone(), n.x, n.y))) {
                let rev: Vec<_> = refs.iter().rev().copied().collect();
                let rp: Vec<f32> = probs.iter().rev().copied().collect();
                let r = smooth(&rev, &rp, weight);
                let back: Vec<f32> = r.probs.into_iter().rev().collect();
                prop_assert_eq!(back, s.probs);
            }
        }
    }
}
