//! Assigning patches to training / validation / testing.
//!
//! The tutorial shuffles images and cuts the list, so one patient's strongly correlated patches
//! land in training and testing alike and test accuracy reads high. The default here keeps every
//! patient in one split and balances the splits' sizes and IDC shares.

use crate::rng::Rng;
use crate::scan::Patch;
use common::choice::Choice;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitBy {
    Patient,
    Image,
}

impl Choice for SplitBy {
    const CHOICES: &'static [(SplitBy, &'static str, &'static str)] = &[
        (
            SplitBy::Patient,
            "patient",
            "Every patient's patches in one split, splits stratified by IDC share (default)",
        ),
        (
            SplitBy::Image,
            "image",
            "The tutorial's random image-level split (leaks patients across splits; for comparison)",
        ),
    ];
}

common::display_as_choice!(SplitBy);

/// How to split. Fractions follow the tutorial: 20% of all patches for testing, then 10% of
/// the rest for validation.
#[derive(Debug, Clone, Copy)]
pub struct SplitConfig {
    pub by: SplitBy,
    pub test_fraction: f64,
    pub val_fraction: f64,
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            by: SplitBy::Patient,
            test_fraction: 0.2,
            val_fraction: 0.1,
            seed: 42,
        }
    }
}

impl SplitConfig {
    /// Target share of all patches for training, validation, testing.
    pub fn shares(&self) -> [f64; 3] {
        let train_all = 1.0 - self.test_fraction;
        [
            train_all * (1.0 - self.val_fraction),
            train_all * self.val_fraction,
            self.test_fraction,
        ]
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, v) in [
            ("--test-fraction", self.test_fraction),
            ("--val-fraction", self.val_fraction),
        ] {
            anyhow::ensure!((0.0..1.0).contains(&v), "{name} must be in [0, 1), got {v}");
        }
        Ok(())
    }

    /// Split index (0 training, 1 validation, 2 testing) for each patch, in the order given.
    /// Deterministic for a given set of patches, whatever order they come in.
    pub fn assign(&self, patches: &[Patch]) -> Vec<usize> {
        match self.by {
            SplitBy::Image => self.assign_images(patches),
            SplitBy::Patient => self.assign_patients(patches),
        }
    }

    fn assign_images(&self, patches: &[Patch]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..patches.len()).collect();
        order.sort_by(|&a, &b| patches[a].name.cmp(&patches[b].name));
        Rng::new(self.seed).shuffle(&mut order);
        // The tutorial's cuts: first (1 - test) for training, of which the first val share is validation.
        let n_train_all = (patches.len() as f64 * (1.0 - self.test_fraction)) as usize;
        let n_val = (n_train_all as f64 * self.val_fraction) as usize;
        let mut split = vec![0; patches.len()];
        for (rank, &i) in order.iter().enumerate() {
            split[i] = if rank < n_val {
                1
            } else if rank < n_train_all {
                0
            } else {
                2
            };
        }
        split
    }

    fn assign_patients(&self, patches: &[Patch]) -> Vec<usize> {
        balanced_by_patient(patches, &self.shares(), self.seed)
    }
}

/// Patient-level k-fold cross-validation: the fold (0..k) of each patch. Every patient's patches
/// are in one fold, and the folds are balanced in patch count and IDC count (so in IDC share),
/// the same way `assign` balances the splits. Seeded and independent of the patches' order.
pub fn kfold(patches: &[Patch], k: usize, seed: u64) -> Vec<usize> {
    balanced_by_patient(patches, &vec![1.0 / k as f64; k], seed)
}

/// Assigns whole patients, in a seeded random order, each to the group (share > 0) that brings
/// every group's patch and IDC counts closest to `shares` of the totals; every group gets at
/// least one patient while patients last. Returns each patch's group.
fn balanced_by_patient(patches: &[Patch], shares: &[f64], seed: u64) -> Vec<usize> {
    // patient -> [patches, IDC patches]
    let mut per_patient: BTreeMap<&str, [usize; 2]> = BTreeMap::new();
    for p in patches {
        let c = per_patient.entry(&p.name.patient).or_default();
        c[0] += 1;
        c[1] += p.label as usize;
    }
    let mut patients: Vec<(&str, [usize; 2])> = per_patient.into_iter().collect();
    Rng::new(seed).shuffle(&mut patients);

    let total = patches.len() as f64;
    let total_idc = patches.iter().filter(|p| p.label == 1).count() as f64;
    let wanted: Vec<usize> = (0..shares.len()).filter(|&s| shares[s] > 0.0).collect();
    let mut have = vec![[0usize; 2]; shares.len()];
    let mut chosen: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, (patient, counts)) in patients.iter().enumerate() {
        let left = patients.len() - k;
        // A group without patients has no patches (every patient has at least one).
        let empty: Vec<usize> = wanted
            .iter()
            .copied()
            .filter(|&s| have[s][0] == 0)
            .collect();
        let candidates = if !empty.is_empty() && left <= empty.len() {
            empty
        } else {
            wanted.clone()
        };
        let best = candidates
            .iter()
            .copied()
            .min_by(|&a, &b| {
                let cost = |s: usize| {
                    let mut h = have.clone();
                    h[s][0] += counts[0];
                    h[s][1] += counts[1];
                    imbalance(&h, shares, total, total_idc)
                };
                cost(a).total_cmp(&cost(b))
            })
            .expect("at least one group has a positive share");
        have[best][0] += counts[0];
        have[best][1] += counts[1];
        chosen.insert(patient, best);
    }
    patches
        .iter()
        .map(|p| chosen[p.name.patient.as_str()])
        .collect()
}

/// Squared relative distance of each group's patch and IDC counts from their targets.
fn imbalance(have: &[[usize; 2]], shares: &[f64], total: f64, total_idc: f64) -> f64 {
    let mut cost = 0.0;
    for s in 0..shares.len() {
        if shares[s] <= 0.0 {
            continue;
        }
        let (t, ti) = (shares[s] * total, shares[s] * total_idc.max(1.0));
        cost += ((have[s][0] as f64 - t) / t).powi(2) + ((have[s][1] as f64 - ti) / ti).powi(2);
    }
    cost
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::PatchName;
    use std::collections::{HashMap, HashSet};

    fn fake(patients: usize, per: usize) -> Vec<Patch> {
        let mut v = Vec::new();
        for p in 0..patients {
            for i in 0..per + p * 7 {
                let label = u8::from((i * 31 + p * 11) % 100 < 20 + (p % 3) * 10);
                let name = PatchName {
                    patient: format!("{}", 9000 + p),
                    x: i as u32 * 50 + 1,
                    y: 1,
                    class: label,
                };
                v.push(Patch {
                    path: format!("{}/{}", p, name).into(),
                    name,
                    label,
                });
            }
        }
        v
    }

    #[test]
    fn patient_split_keeps_patients_whole_and_balanced() {
        let patches = fake(60, 100);
        let split = SplitConfig::default().assign(&patches);
        let mut where_: HashMap<&str, HashSet<usize>> = HashMap::new();
        for (p, &s) in patches.iter().zip(&split) {
            where_.entry(&p.name.patient).or_default().insert(s);
        }
        assert!(
            where_.values().all(|s| s.len() == 1),
            "a patient is in two splits"
        );
        let shares = SplitConfig::default().shares();
        let idc_all = patches.iter().filter(|p| p.label == 1).count() as f64 / patches.len() as f64;
        for s in 0..3 {
            let ps: Vec<&Patch> = patches
                .iter()
                .zip(&split)
                .filter(|(_, x)| **x == s)
                .map(|(p, _)| p)
                .collect();
            let share = ps.len() as f64 / patches.len() as f64;
            assert!(
                (share - shares[s]).abs() < 0.03,
                "split {s} has {share}, wanted {}",
                shares[s]
            );
            let idc = ps.iter().filter(|p| p.label == 1).count() as f64 / ps.len() as f64;
            assert!(
                (idc - idc_all).abs() < 0.03,
                "split {s} IDC share {idc} vs {idc_all}"
            );
        }
    }

    #[test]
    fn split_is_deterministic_and_order_independent() {
        let patches = fake(30, 50);
        let mut reversed = patches.clone();
        reversed.reverse();
        let a = SplitConfig::default().assign(&patches);
        let mut b = SplitConfig::default().assign(&reversed);
        b.reverse();
        assert_eq!(a, b);
        let c = SplitConfig {
            seed: 7,
            ..Default::default()
        }
        .assign(&patches);
        assert_ne!(a, c);
    }

    /// The tutorial's image split: its cut sizes, and the flaw it has (a patient's patches in
    /// both training and testing), which the patient split exists to avoid.
    #[test]
    fn image_split_cuts_like_the_tutorial_and_leaks_patients() {
        let patches = fake(10, 100);
        let n = patches.len();
        let split = SplitConfig {
            by: SplitBy::Image,
            ..Default::default()
        }
        .assign(&patches);
        let count = |s: usize| split.iter().filter(|&&x| x == s).count();
        // build_dataset.py on 1315 images: int(1315 * 0.8) = 1052 for training and validation,
        // of which int(1052 * 0.1) = 105 validation; 263 testing.
        assert_eq!(n, 1315);
        assert_eq!((count(0), count(1), count(2)), (947, 105, 263));
        assert_eq!(count(0) + count(1) + count(2), n);
        let patients = |s: usize| -> HashSet<&str> {
            patches
                .iter()
                .zip(&split)
                .filter(|(_, x)| **x == s)
                .map(|(p, _)| p.name.patient.as_str())
                .collect()
        };
        assert_eq!(
            patients(0),
            patients(2),
            "every test patient is also a training patient"
        );
    }

    #[test]
    fn few_patients_fill_every_split() {
        let patches = fake(3, 100);
        let split = SplitConfig::default().assign(&patches);
        for s in 0..3 {
            assert!(split.contains(&s), "split {s} is empty");
        }
    }

    /// A zero share means an empty split; fractions outside [0, 1) are refused.
    #[test]
    fn zero_shares_stay_empty_and_fractions_are_checked() {
        let patches = fake(12, 100);
        let no_val = SplitConfig {
            val_fraction: 0.0,
            ..SplitConfig::default()
        };
        let split = no_val.assign(&patches);
        assert!(!split.contains(&1) && split.contains(&0) && split.contains(&2));
        assert!(no_val.validate().is_ok());
        for (test_fraction, val_fraction) in [(1.0, 0.1), (0.2, 1.0), (-0.1, 0.1), (f64::NAN, 0.1)]
        {
            let cfg = SplitConfig {
                test_fraction,
                val_fraction,
                ..SplitConfig::default()
            };
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains("must be in [0, 1)"), "{e}");
        }
    }

    /// The split must not change across versions: the same patches and seed give this
    /// assignment (a digest of it) on every machine, with every dependency version.
    #[test]
    fn golden_assignment() {
        let patches = fake(60, 100);
        let digest = |split: &[usize]| {
            let text: String = split.iter().map(|s| char::from(b'0' + *s as u8)).collect();
            crate::manifest::sha256_hex(text.as_bytes())
        };
        let patient = SplitConfig::default().assign(&patches);
        let image = SplitConfig {
            by: SplitBy::Image,
            ..Default::default()
        }
        .assign(&patches);
        assert_eq!(
            digest(&patient),
            "a16f0da80947bf0ebbaa49ea97af0950dffb408733b912e3723ae5d13cfbb913"
        );
        assert_eq!(
            digest(&image),
            "2d7422f9b5d743a80e9754db40500a880364163bca0f84e8c92f7ffbf0dc1a58"
        );
    }

    #[test]
    fn kfold_keeps_patients_whole_and_balances_the_folds() {
        let patches = fake(60, 100);
        let folds = kfold(&patches, 5, 42);
        let mut where_: HashMap<&str, HashSet<usize>> = HashMap::new();
        for (p, &f) in patches.iter().zip(&folds) {
            where_.entry(&p.name.patient).or_default().insert(f);
        }
        assert!(
            where_.values().all(|f| f.len() == 1),
            "a patient is in two folds"
        );
        let idc_all = patches.iter().filter(|p| p.label == 1).count() as f64 / patches.len() as f64;
        for f in 0..5 {
            let ps: Vec<&Patch> = patches
                .iter()
                .zip(&folds)
                .filter(|(_, x)| **x == f)
                .map(|(p, _)| p)
                .collect();
            let share = ps.len() as f64 / patches.len() as f64;
            assert!((share - 0.2).abs() < 0.03, "fold {f} has {share}");
            let idc = ps.iter().filter(|p| p.label == 1).count() as f64 / ps.len() as f64;
            assert!(
                (idc - idc_all).abs() < 0.03,
                "fold {f} IDC share {idc} vs {idc_all}"
            );
        }
        let mut reversed = patches.clone();
        reversed.reverse();
        let mut again = kfold(&reversed, 5, 42);
        again.reverse();
        assert_eq!(again, folds, "order-dependent");
        assert_ne!(kfold(&patches, 5, 7), folds, "seed ignored");
    }
}
