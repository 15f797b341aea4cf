//! Assigning patches to training / validation / testing.
//!
//! The tutorial shuffles images and cuts the list, so one patient's strongly correlated patches
//! land in training and testing alike and test accuracy reads high. The default here keeps every
//! patient in one split and balances the splits' sizes and IDC shares.

use crate::rng::Rng;
use crate::scan::Patch;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitBy {
    /// Every patient's patches in one split, splits stratified by IDC share (default).
    Patient,
    /// The tutorial's random image-level split (leaks patients across splits; for comparison).
    Image,
}

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
        // patient -> [patches, IDC patches]
        let mut per_patient: BTreeMap<&str, [usize; 2]> = BTreeMap::new();
        for p in patches {
            let c = per_patient.entry(&p.name.patient).or_default();
            c[0] += 1;
            c[1] += p.label as usize;
        }
        let mut patients: Vec<(&str, [usize; 2])> = per_patient.into_iter().collect();
        Rng::new(self.seed).shuffle(&mut patients);

        let total = patches.len() as f64;
        let total_idc = patches.iter().filter(|p| p.label == 1).count() as f64;
        let shares = self.shares();
        let wanted: Vec<usize> = (0..3).filter(|&s| shares[s] > 0.0).collect();
        let mut have = [[0usize; 2]; 3];
        let mut members = [0usize; 3];
        let mut chosen: BTreeMap<&str, usize> = BTreeMap::new();
        for (k, (patient, counts)) in patients.iter().enumerate() {
            let left = patients.len() - k;
            let empty: Vec<usize> = wanted
                .iter()
                .copied()
                .filter(|&s| members[s] == 0)
                .collect();
            // Every wanted split gets at least one patient while patients last.
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
                        let mut h = have;
                        h[s][0] += counts[0];
                        h[s][1] += counts[1];
                        imbalance(&h, &shares, total, total_idc)
                    };
                    cost(a).total_cmp(&cost(b))
                })
                .expect("at least one split has a positive share");
            have[best][0] += counts[0];
            have[best][1] += counts[1];
            members[best] += 1;
            chosen.insert(patient, best);
        }
        patches
            .iter()
            .map(|p| chosen[p.name.patient.as_str()])
            .collect()
    }
}

/// Squared relative distance of each split's patch and IDC counts from their targets.
fn imbalance(have: &[[usize; 2]; 3], shares: &[f64; 3], total: f64, total_idc: f64) -> f64 {
    let mut cost = 0.0;
    for s in 0..3 {
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

    #[test]
    fn image_split_matches_tutorial_cuts() {
        let patches = fake(10, 100);
        let n = patches.len();
        let split = SplitConfig {
            by: SplitBy::Image,
            ..Default::default()
        }
        .assign(&patches);
        let train_all = (n as f64 * 0.8) as usize;
        let val = (train_all as f64 * 0.1) as usize;
        assert_eq!(split.iter().filter(|&&s| s == 2).count(), n - train_all);
        assert_eq!(split.iter().filter(|&&s| s == 1).count(), val);
    }

    #[test]
    fn few_patients_fill_every_split() {
        let patches = fake(3, 100);
        let split = SplitConfig::default().assign(&patches);
        for s in 0..3 {
            assert!(split.contains(&s), "split {s} is empty");
        }
    }
}
