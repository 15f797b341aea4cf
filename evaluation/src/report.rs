//! The classification report shared by `trainer` (validation, testing) and `runtime eval`:
//! scikit-learn's `classification_report`, the confusion matrix, and with IDC as the positive
//! class sensitivity (IDC recall) and specificity (healthy recall) the right way round, balanced
//! accuracy, F1 of IDC, ROC AUC and PR AUC (average precision).

use datasets::CLASS_NAMES;
use std::fmt;

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassStats {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Probability of IDC at or above which a patch is called IDC.
    pub threshold: f64,
    /// `confusion[true][predicted]`.
    pub confusion: [[usize; 2]; 2],
    pub classes: [ClassStats; 2],
    pub accuracy: f64,
    pub macro_avg: ClassStats,
    pub weighted_avg: ClassStats,
    /// IDC recall: TP / (TP + FN).
    pub sensitivity: f64,
    /// Healthy recall: TN / (TN + FP).
    pub specificity: f64,
    pub balanced_accuracy: f64,
    pub f1_idc: f64,
    /// `None` when only one class is present.
    pub roc_auc: Option<f64>,
    /// Average precision; `None` without IDC patches.
    pub pr_auc: Option<f64>,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn f1(p: f64, r: f64) -> f64 {
    let sum = p + r;
    if sum > 0.0 { 2.0 * p * r / sum } else { 0.0 }
}

impl Report {
    /// `labels[i]` in {0, 1}, `probs[i]` = probability of IDC.
    pub fn new(labels: &[u8], probs: &[f32], threshold: f64) -> Report {
        assert_eq!(labels.len(), probs.len());
        let mut confusion = [[0usize; 2]; 2];
        for (&y, &p) in labels.iter().zip(probs) {
            confusion[y as usize][usize::from(p as f64 >= threshold)] += 1;
        }
        let n: usize = confusion.iter().flatten().sum();
        let classes = [0, 1].map(|c| {
            let tp = confusion[c][c];
            let predicted = confusion[0][c] + confusion[1][c];
            let support = confusion[c][0] + confusion[c][1];
            let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
            ClassStats {
                precision,
                recall,
                f1: f1(precision, recall),
                support,
            }
        });
        let avg = |w: &dyn Fn(&ClassStats) -> f64| {
            let total: f64 = classes.iter().map(w).sum();
            let mean = |f: fn(&ClassStats) -> f64| {
                if total == 0.0 {
                    0.0
                } else {
                    classes.iter().map(|c| f(c) * w(c)).sum::<f64>() / total
                }
            };
            ClassStats {
                precision: mean(|c| c.precision),
                recall: mean(|c| c.recall),
                f1: mean(|c| c.f1),
                support: n,
            }
        };
        let (sensitivity, specificity) = (classes[1].recall, classes[0].recall);
        Report {
            threshold,
            confusion,
            classes,
            accuracy: ratio(confusion[0][0] + confusion[1][1], n),
            macro_avg: avg(&|_| 1.0),
            weighted_avg: avg(&|c| c.support as f64),
            sensitivity,
            specificity,
            balanced_accuracy: (sensitivity + specificity) / 2.0,
            f1_idc: classes[1].f1,
            roc_auc: roc_auc(labels, probs),
            pr_auc: average_precision(labels, probs),
        }
    }

    pub fn total(&self) -> usize {
        self.confusion.iter().flatten().sum()
    }
}

/// ROC AUC as the Mann-Whitney statistic with tied scores counted half.
pub fn roc_auc(labels: &[u8], probs: &[f32]) -> Option<f64> {
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));
    let (mut rank_sum_pos, mut i) = (0.0, 0);
    while i < order.len() {
        let mut j = i;
        while j < order.len() && probs[order[j]].total_cmp(&probs[order[i]]).is_eq() {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0; // ranks i+1 ..= j
        rank_sum_pos += avg_rank * order[i..j].iter().filter(|&&k| labels[k] == 1).count() as f64;
        i = j;
    }
    let pos = labels.iter().filter(|&&y| y == 1).count() as f64;
    let neg = labels.len() as f64 - pos;
    (pos > 0.0 && neg > 0.0).then(|| (rank_sum_pos - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// Cumulative (true positives, false positives) at each distinct score, highest score first: the
/// points a threshold sweep passes through, with the score.
fn sweep(labels: &[u8], probs: &[f32]) -> Vec<(f32, usize, usize)> {
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let (mut tp, mut fp, mut i, mut points) = (0, 0, 0, Vec::new());
    while i < order.len() {
        let score = probs[order[i]];
        while i < order.len() && probs[order[i]].total_cmp(&score).is_eq() {
            if labels[order[i]] == 1 {
                tp += 1
            } else {
                fp += 1
            }
            i += 1;
        }
        points.push((score, tp, fp));
    }
    points
}

/// The threshold (`p >= t` is IDC) chosen on labelled predictions by `pick`, which sees each
/// candidate's (sensitivity, specificity) from the highest threshold down and returns the index
/// of the one to use. The threshold lies midway between the chosen score and the next lower one,
/// so it does not sit on a validation patch's own score. `None` without both classes.
fn pick_threshold(
    labels: &[u8],
    probs: &[f32],
    pick: impl Fn(&[(f64, f64)]) -> Option<usize>,
) -> Option<f64> {
    let pos = labels.iter().filter(|&&y| y == 1).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let points = sweep(labels, probs);
    let rates: Vec<(f64, f64)> = points
        .iter()
        .map(|&(_, tp, fp)| (tp as f64 / pos as f64, 1.0 - fp as f64 / neg as f64))
        .collect();
    let k = pick(&rates)?;
    let next = points.get(k + 1).map_or(0.0, |p| p.0 as f64);
    Some((points[k].0 as f64 + next) / 2.0)
}

/// The threshold with the highest balanced accuracy (the first, i.e. highest, on ties).
pub fn threshold_max_bac(labels: &[u8], probs: &[f32]) -> Option<f64> {
    pick_threshold(labels, probs, |rates| {
        // Twice the balanced accuracy: only the order matters. A tolerance: sensitivity and
        // specificity are ratios of different counts, and equal sums can differ in the last bit.
        let score = |&(sens, spec): &(f64, f64)| sens + spec;
        (0..rates.len()).reduce(|best, k| {
            if score(&rates[k]) > score(&rates[best]) + 1e-12 {
                k
            } else {
                best
            }
        })
    })
}

/// The highest threshold whose sensitivity reaches `target`.
pub fn threshold_for_sensitivity(labels: &[u8], probs: &[f32], target: f64) -> Option<f64> {
    pick_threshold(labels, probs, |rates| {
        rates.iter().position(|&(sens, _)| sens >= target)
    })
}

/// Average precision (scikit-learn's definition): sum over score thresholds, highest first, of
/// (recall gained) x precision.
pub fn average_precision(labels: &[u8], probs: &[f32]) -> Option<f64> {
    let pos = labels.iter().filter(|&&y| y == 1).count();
    if pos == 0 {
        return None;
    }
    let (mut ap, mut last_recall) = (0.0, 0.0);
    for (_, tp, fp) in sweep(labels, probs) {
        let recall = tp as f64 / pos as f64;
        ap += (recall - last_recall) * tp as f64 / (tp + fp) as f64;
        last_recall = recall;
    }
    Some(ap)
}

/// Points (false positive rate, true positive rate) of the ROC curve, from (0,0) to (1,1).
pub fn roc_curve(labels: &[u8], probs: &[f32]) -> Vec<(f64, f64)> {
    let pos = labels.iter().filter(|&&y| y == 1).count();
    let (pos, neg) = (pos.max(1) as f64, (labels.len() - pos).max(1) as f64);
    let mut points = vec![(0.0, 0.0)];
    points.extend(
        sweep(labels, probs)
            .into_iter()
            .map(|(_, tp, fp)| (fp as f64 / neg, tp as f64 / pos)),
    );
    points
}

fn opt(v: Option<f64>) -> String {
    v.map_or("n/a (one class only)".into(), |v| format!("{v:.4}"))
}

impl fmt::Display for Report {
    /// Laid out like scikit-learn's `classification_report(digits=4)`, then the IDC summary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>14}{:>11}{:>10}{:>10}{:>10}\n",
            "", "precision", "recall", "f1-score", "support"
        )?;
        for (name, c) in CLASS_NAMES.iter().zip(&self.classes) {
            writeln!(
                f,
                "{name:>14}{:>11.4}{:>10.4}{:>10.4}{:>10}",
                c.precision, c.recall, c.f1, c.support
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:>14}{:>11}{:>10}{:>10.4}{:>10}",
            "accuracy",
            "",
            "",
            self.accuracy,
            self.total()
        )?;
        for (name, c) in [
            ("macro avg", &self.macro_avg),
            ("weighted avg", &self.weighted_avg),
        ] {
            writeln!(
                f,
                "{name:>14}{:>11.4}{:>10.4}{:>10.4}{:>10}",
                c.precision, c.recall, c.f1, c.support
            )?;
        }
        let m = &self.confusion;
        writeln!(
            f,
            "\nconfusion matrix (rows: true, columns: predicted; threshold {})",
            self.threshold
        )?;
        writeln!(f, "{:>14}{:>10}{:>10}", "", "no IDC", "IDC")?;
        writeln!(f, "{:>14}{:>10}{:>10}", "no IDC", m[0][0], m[0][1])?;
        writeln!(f, "{:>14}{:>10}{:>10}", "IDC", m[1][0], m[1][1])?;
        writeln!(f, "\nIDC is the positive class")?;
        writeln!(f, "  sensitivity (IDC recall)      {:.4}", self.sensitivity)?;
        writeln!(f, "  specificity (healthy recall)  {:.4}", self.specificity)?;
        writeln!(
            f,
            "  balanced accuracy             {:.4}",
            self.balanced_accuracy
        )?;
        writeln!(f, "  F1 (IDC)                      {:.4}", self.f1_idc)?;
        writeln!(f, "  ROC AUC                       {}", opt(self.roc_auc))?;
        write!(f, "  PR AUC (average precision)    {}", opt(self.pr_auc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_confusion_matrix() {
        // true:  0 0 0 0 1 1 1   probs chosen so that TN=3 FP=1 FN=1 TP=2 at 0.5
        let labels = [0, 0, 0, 0, 1, 1, 1];
        let probs = [0.1, 0.2, 0.3, 0.7, 0.4, 0.8, 0.9];
        let r = Report::new(&labels, &probs, 0.5);
        assert_eq!(r.confusion, [[3, 1], [1, 2]]);
        assert!((r.sensitivity - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.specificity - 3.0 / 4.0).abs() < 1e-12);
        assert!((r.classes[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.classes[0].precision - 3.0 / 4.0).abs() < 1e-12);
        assert!((r.accuracy - 5.0 / 7.0).abs() < 1e-12);
        // F1 of IDC: 2 * (2/3 * 2/3) / (2/3 + 2/3) = 2/3; of no IDC: 3/4.
        assert!((r.f1_idc - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.classes[0].f1 - 3.0 / 4.0).abs() < 1e-12);
        assert!((r.balanced_accuracy - (2.0 / 3.0 + 3.0 / 4.0) / 2.0).abs() < 1e-12);
        // Pairs (pos, neg) ranked right: 0.4 beats 3 of 4 negatives, 0.8 and 0.9 beat all 4.
        assert!((r.roc_auc.unwrap() - 11.0 / 12.0).abs() < 1e-12);
        // AP: ranks 0.9(+) 0.8(+) 0.7(-) 0.4(+): 1/3*1 + 1/3*1 + 1/3*3/4.
        assert!((r.pr_auc.unwrap() - (1.0 + 1.0 + 0.75) / 3.0).abs() < 1e-12);
        let text = r.to_string();
        assert!(
            text.contains("sensitivity (IDC recall)      0.6667"),
            "{text}"
        );
        assert!(text.contains("weighted avg"));
    }

    #[test]
    fn one_class_set_is_well_defined() {
        let r = Report::new(&[0, 0, 0], &[0.1, 0.9, 0.2], 0.5);
        assert_eq!(r.confusion, [[2, 1], [0, 0]]);
        assert_eq!(r.roc_auc, None);
        assert_eq!(r.pr_auc, None);
        assert_eq!(r.sensitivity, 0.0);
        assert!((r.specificity - 2.0 / 3.0).abs() < 1e-12);
        assert!(r.to_string().contains("n/a"));
    }

    #[test]
    fn ties_count_half_and_threshold_moves() {
        assert_eq!(roc_auc(&[0, 1], &[0.5, 0.5]), Some(0.5));
        let r = Report::new(&[0, 1], &[0.3, 0.6], 0.7);
        assert_eq!(r.confusion, [[1, 0], [1, 0]]);
        let curve = roc_curve(&[0, 1], &[0.3, 0.6]);
        assert_eq!(curve, vec![(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)]);
    }

    #[test]
    fn thresholds_chosen_on_validation() {
        // Scores: negatives 0.1 0.2 0.6, positives 0.4 0.7 0.9.
        let labels = [0, 0, 0, 1, 1, 1];
        let probs = [0.1, 0.2, 0.6, 0.4, 0.7, 0.9];
        // Cutting between 0.7 and 0.6 (sensitivity 2/3, specificity 1) and between 0.4 and 0.2
        // (1 and 2/3) both give the best BAC, 5/6; the higher threshold is chosen.
        let t = threshold_max_bac(&labels, &probs).unwrap();
        assert!((t - 0.65).abs() < 1e-6, "{t}");
        let r = Report::new(&labels, &probs, t);
        assert!((r.balanced_accuracy - 5.0 / 6.0).abs() < 1e-12);
        let t = threshold_for_sensitivity(&labels, &probs, 1.0).unwrap();
        assert!((t - 0.3).abs() < 1e-6, "{t}");
        assert_eq!(Report::new(&labels, &probs, t).sensitivity, 1.0);
        assert_eq!(threshold_max_bac(&[1, 1], &[0.2, 0.3]), None);
    }

    use proptest::prelude::*;

    /// Small labelled sets with many tied scores (scores from a coarse grid).
    fn labelled() -> impl Strategy<Value = (Vec<u8>, Vec<f32>)> {
        proptest::collection::vec((0u8..2, 0u8..12), 0..60)
            .prop_map(|v| v.into_iter().map(|(y, s)| (y, s as f32 / 11.0)).unzip())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// The max-BAC threshold is as good as any other threshold, and the sensitivity one
        /// reaches its target with the highest such threshold.
        #[test]
        fn chosen_thresholds_are_optimal((labels, probs) in labelled(), target in 0.0f64..1.0) {
            let Some(t) = threshold_max_bac(&labels, &probs) else { return Ok(()); };
            let best = Report::new(&labels, &probs, t).balanced_accuracy;
            for k in 0..=12 {
                let other = Report::new(&labels, &probs, k as f64 / 11.0 - 0.01).balanced_accuracy;
                prop_assert!(other <= best + 1e-12, "{} beats {} at {}", other, best, t);
            }
            let t = threshold_for_sensitivity(&labels, &probs, target).unwrap();
            prop_assert!(Report::new(&labels, &probs, t).sensitivity >= target);
            // The next higher cut (just above the lowest score the threshold still calls IDC)
            // misses the target.
            let lowest_called = probs.iter().map(|&p| p as f64).filter(|&p| p >= t).fold(f64::INFINITY, f64::min);
            if lowest_called.is_finite() {
                let higher = Report::new(&labels, &probs, lowest_called + 1e-9);
                prop_assert!(higher.sensitivity < target);
            }
        }

        /// The ROC curve climbs from (0,0) to (1,1) and its area (trapezoids) is the ROC AUC.
        #[test]
        fn roc_curve_encloses_the_auc((labels, probs) in labelled()) {
            let Some(auc) = roc_auc(&labels, &probs) else { return Ok(()); };
            let curve = roc_curve(&labels, &probs);
            prop_assert_eq!(curve[0], (0.0, 0.0));
            prop_assert_eq!(*curve.last().unwrap(), (1.0, 1.0));
            let mut area = 0.0;
            for w in curve.windows(2) {
                let ((x0, y0), (x1, y1)) = (w[0], w[1]);
                prop_assert!(x1 >= x0 && y1 >= y0);
                area += (x1 - x0) * (y0 + y1) / 2.0;
            }
            prop_assert!((area - auc).abs() < 1e-9, "{} vs {}", area, auc);
        }

        #[test]
        fn report_maths_hold((labels, probs) in labelled(), t in 0u8..12) {
            let threshold = t as f64 / 11.0;
            let r = Report::new(&labels, &probs, threshold);
            let n = labels.len();
            prop_assert_eq!(r.total(), n);
            // The matrix counts each (truth, call) pair.
            for y in 0..2u8 {
                for call in 0..2 {
                    let want = labels.iter().zip(&probs)
                        .filter(|&(&l, &p)| l == y && usize::from(p as f64 >= threshold) == call)
                        .count();
                    prop_assert_eq!(r.confusion[y as usize][call], want);
                }
            }
            let m = r.confusion;
            let div = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            prop_assert_eq!(r.sensitivity, div(m[1][1], m[1][0] + m[1][1]));
            prop_assert_eq!(r.specificity, div(m[0][0], m[0][0] + m[0][1]));
            prop_assert_eq!(r.accuracy, div(m[0][0] + m[1][1], n));
            // Per class: precision, recall, F1 (the harmonic mean, 0 when both are 0), support;
            // then the macro (plain) and weighted (by support) averages, as scikit-learn's.
            for c in 0..2 {
                let (tp, called, actual) = (m[c][c], m[0][c] + m[1][c], m[c][0] + m[c][1]);
                let (p, rc) = (div(tp, called), div(tp, actual));
                let f = if p + rc == 0.0 { 0.0 } else { 2.0 * p * rc / (p + rc) };
                let k = &r.classes[c];
                prop_assert_eq!((k.precision, k.recall, k.support), (p, rc, actual));
                prop_assert!((k.f1 - f).abs() < 1e-12);
            }
            prop_assert!((r.f1_idc - r.classes[1].f1).abs() < 1e-15);
            prop_assert!((r.balanced_accuracy - (r.sensitivity + r.specificity) / 2.0).abs() < 1e-15);
            let macro_f1 = (r.classes[0].f1 + r.classes[1].f1) / 2.0;
            prop_assert!((r.macro_avg.f1 - macro_f1).abs() < 1e-12);
            if n > 0 {
                let w = |f: fn(&ClassStats) -> f64| {
                    (f(&r.classes[0]) * r.classes[0].support as f64 + f(&r.classes[1]) * r.classes[1].support as f64) / n as f64
                };
                prop_assert!((r.weighted_avg.precision - w(|k| k.precision)).abs() < 1e-12);
                prop_assert!((r.weighted_avg.recall - w(|k| k.recall)).abs() < 1e-12);
                prop_assert!((r.weighted_avg.f1 - w(|k| k.f1)).abs() < 1e-12);
            }
            prop_assert_eq!((r.macro_avg.support, r.weighted_avg.support), (n, n));
            // ROC AUC: the share of (IDC, healthy) pairs ranked right, ties counting half.
            let (mut good, mut pairs) = (0.0, 0usize);
            for (i, _) in labels.iter().enumerate().filter(|(_, l)| **l == 1) {
                for (j, _) in labels.iter().enumerate().filter(|(_, l)| **l == 0) {
                    pairs += 1;
                    good += if probs[i] > probs[j] { 1.0 } else if probs[i] == probs[j] { 0.5 } else { 0.0 };
                }
            }
            match r.roc_auc {
                Some(auc) => prop_assert!((auc - good / pairs as f64).abs() < 1e-12),
                None => prop_assert_eq!(pairs, 0),
            }
            // Average precision: precision at each IDC patch's score, averaged over IDC patches.
            let positives: Vec<usize> = (0..n).filter(|&i| labels[i] == 1).collect();
            match r.pr_auc {
                Some(ap) => {
                    let want = positives.iter().map(|&i| {
                        let at = (0..n).filter(|&j| probs[j] >= probs[i]);
                        let (tp, all) = at.fold((0, 0), |(tp, all), j| (tp + usize::from(labels[j] == 1), all + 1));
                        tp as f64 / all as f64
                    }).sum::<f64>() / positives.len() as f64;
                    prop_assert!((ap - want).abs() < 1e-9, "{} vs {}", ap, want);
                }
                None => prop_assert!(positives.is_empty()),
            }
        }
    }
}
