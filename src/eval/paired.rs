//! Student − teacher on exactly the same sentences, with a paired bootstrap 95% interval.
//!
//! The units are the sentences the teacher was asked about. Each unit's headline counts
//! (matched, predicted, gold) are computed for both systems; a bootstrap draw resamples units
//! with replacement, sums both systems' counts over the same draw and takes the F1
//! difference. Pairing the draws cancels the sentence-to-sentence variance the two systems
//! share, which is what makes a 150-sentence sample able to separate them.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::metrics::Metric;

/// The system name of difference rows in `eval_results`.
pub const SYSTEM: &str = "student_minus_teacher";
/// Bootstrap draws.
pub const DRAWS: usize = 2000;

/// One unit's counts for one system.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub matched: f64,
    pub predicted: f64,
    pub gold: f64,
}

impl Counts {
    /// From a family's `_precision` and `_recall` metrics (value and denominator each).
    pub fn from_metrics(metrics: &[Metric], family: &str) -> Option<Self> {
        let find = |suffix: &str| metrics.iter().find(|m| m.name == format!("{family}_{suffix}"));
        let (p, r) = (find("precision")?, find("recall")?);
        // Undefined ratios are stored as 0 of 0.
        let matched = if r.n > 0 { r.value * r.n as f64 } else { p.value * p.n as f64 };
        Some(Counts { matched: matched.round(), predicted: p.n as f64, gold: r.n as f64 })
    }

    fn add(&mut self, other: &Counts) {
        self.matched += other.matched;
        self.predicted += other.predicted;
        self.gold += other.gold;
    }

    /// F1 with the project's convention: 0 when undefined.
    pub fn f1(&self) -> f64 {
        let denominator = self.predicted + self.gold;
        if denominator == 0.0 { 0.0 } else { 2.0 * self.matched / denominator }
    }
}

/// Point difference and 95% interval of student F1 − teacher F1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    pub diff: f64,
    pub low: f64,
    pub high: f64,
    pub units: usize,
}

fn pooled<'a>(units: impl Iterator<Item = &'a Counts>) -> Counts {
    let mut total = Counts::default();
    units.for_each(|c| total.add(c));
    total
}

/// The paired bootstrap over `(student, teacher)` counts per unit; `None` without units.
pub fn difference(units: &[(Counts, Counts)], draws: usize, seed: u64) -> Option<Difference> {
    if units.is_empty() {
        return None;
    }
    let diff = pooled(units.iter().map(|u| &u.0)).f1() - pooled(units.iter().map(|u| &u.1)).f1();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut diffs: Vec<f64> = (0..draws.max(1))
        .map(|_| {
            let (mut s, mut t) = (Counts::default(), Counts::default());
            for _ in 0..units.len() {
                let (us, ut) = &units[rng.random_range(0..units.len())];
                s.add(us);
                t.add(ut);
            }
            s.f1() - t.f1()
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    let at = |q: f64| diffs[((diffs.len() - 1) as f64 * q).round() as usize];
    Some(Difference { diff, low: at(0.025), high: at(0.975), units: units.len() })
}

/// The `eval_results` metrics of a difference for `family` (`n` = units).
pub fn metrics(family: &str, d: &Difference) -> [Metric; 3] {
    let n = d.units;
    [
        Metric { name: format!("{family}_f1_diff"), value: d.diff, n },
        Metric { name: format!("{family}_f1_diff_ci_low"), value: d.low, n },
        Metric { name: format!("{family}_f1_diff_ci_high"), value: d.high, n },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(matched: f64, predicted: f64, gold: f64) -> Counts {
        Counts { matched, predicted, gold }
    }

    #[test]
    fn identical_systems_differ_by_exactly_zero() {
        let units: Vec<_> = (0..20).map(|i| (c(i as f64 % 2.0, 1.0, 1.0), c(i as f64 % 2.0, 1.0, 1.0))).collect();
        let d = difference(&units, 500, 1).unwrap();
        assert_eq!((d.diff, d.low, d.high, d.units), (0.0, 0.0, 0.0, 20));
    }

    #[test]
    fn a_hand_checkable_difference_and_an_interval_around_it() {
        // 10 units, one gold item each. The student finds all 10 with no false positives
        // (F1 1); the teacher finds 5 and predicts 5 (F1 = 2*5/(5+10) = 2/3).
        let units: Vec<_> = (0..10).map(|i| (c(1.0, 1.0, 1.0), c(f64::from(i < 5), f64::from(i < 5), 1.0))).collect();
        let d = difference(&units, 2000, 7).unwrap();
        assert!((d.diff - (1.0 - 2.0 / 3.0)).abs() < 1e-12, "{d:?}");
        assert!(d.low <= d.diff && d.diff <= d.high, "{d:?}");
        assert!(d.low > 0.0, "the student is better on every draw with a teacher miss: {d:?}");
        assert!(d.high <= 1.0, "{d:?}");
        // A single unit: every draw is that unit.
        let one = difference(&units[..1], 100, 7).unwrap();
        assert_eq!((one.low, one.high), (one.diff, one.diff));
        assert!(difference(&[], 10, 7).is_none());
    }

    #[test]
    fn counts_come_back_from_precision_and_recall() {
        let metrics = [
            Metric { name: "strict_precision".into(), value: 0.5, n: 4 },
            Metric { name: "strict_recall".into(), value: 2.0 / 3.0, n: 3 },
        ];
        assert_eq!(Counts::from_metrics(&metrics, "strict"), Some(c(2.0, 4.0, 3.0)));
        assert_eq!(Counts::from_metrics(&metrics, "lenient"), None);
        assert!((c(2.0, 4.0, 3.0).f1() - 4.0 / 7.0).abs() < 1e-12);
    }
}
