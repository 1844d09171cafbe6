//! Confidence intervals for scores over samples, so that a reader can tell a difference from
//! noise: a seeded percentile bootstrap of a mean, and of a mean paired difference (a method
//! against the baseline on the same samples).

/// Resamples per interval.
const RESAMPLES: usize = 2000;

/// A mean and its 95% bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// Whether the interval lies wholly above or below zero.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// One splitmix64 step.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut x = *state;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The mean of `values` with the 2.5th and 97.5th percentiles of the means of `RESAMPLES`
/// resamples drawn with replacement (seeded, so a report never changes between runs).
/// `None` for no values.
pub fn bootstrap_mean(values: &[f64], seed: u64) -> Option<Interval> {
    bootstrap_mean_of_means(&[values], seed)
}

/// The mean of the groups' means (a LongBench category: the mean of its datasets' scores),
/// with a stratified bootstrap interval: each resample draws every group's samples again
/// from that group alone (one group: the plain bootstrap). `None` when a group is empty or
/// there are none.
pub fn bootstrap_mean_of_means(groups: &[&[f64]], seed: u64) -> Option<Interval> {
    if groups.is_empty() || groups.iter().any(|g| g.is_empty()) {
        return None;
    }
    let mean_of_means = |draw: &mut dyn FnMut(&[f64]) -> f64| {
        groups.iter().map(|g| draw(g)).sum::<f64>() / groups.len() as f64
    };
    let mean = mean_of_means(&mut |g| g.iter().sum::<f64>() / g.len() as f64);
    let mut state = seed ^ (groups.len() as u64).wrapping_mul(0xA076_1D64_78BD_642F);
    let mut means: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            mean_of_means(&mut |g| {
                (0..g.len())
                    .map(|_| g[(splitmix(&mut state) % g.len() as u64) as usize])
                    .sum::<f64>()
                    / g.len() as f64
            })
        })
        .collect();
    means.sort_by(f64::total_cmp);
    Some(Interval {
        mean,
        low: percentile(&means, 0.025),
        high: percentile(&means, 0.975),
    })
}

/// The `q` quantile of sorted `values` (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

/// The mean difference `a − b` over paired samples (`a[i]` and `b[i]` scored on the same
/// sample), with its bootstrap interval (pairs resampled together).
pub fn paired_difference(a: &[f64], b: &[f64], seed: u64) -> Option<Interval> {
    let differences: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    bootstrap_mean(&differences, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_cover_the_mean_and_shrink_with_samples() {
        let few = [1.0, 0.0, 1.0, 1.0];
        let many: Vec<f64> = few.iter().cycle().take(400).copied().collect();
        let (a, b) = (
            bootstrap_mean(&few, 0).unwrap(),
            bootstrap_mean(&many, 0).unwrap(),
        );
        assert_eq!((a.mean, b.mean), (0.75, 0.75));
        assert!(a.low <= a.mean && a.mean <= a.high);
        assert!(b.high - b.low < (a.high - a.low) / 3.0, "{a:?} {b:?}");
        // A constant has a zero-width interval; nothing has none.
        let flat = bootstrap_mean(&[0.5; 10], 3).unwrap();
        assert_eq!((flat.low, flat.high), (0.5, 0.5));
        assert!(bootstrap_mean(&[], 0).is_none());
        // Seeded: the same interval every time.
        assert_eq!(bootstrap_mean(&few, 0), bootstrap_mean(&few, 0));
    }

    #[test]
    fn a_mean_of_means_weighs_groups_equally() {
        let small = [1.0, 1.0];
        let large = [0.0; 50];
        let i = bootstrap_mean_of_means(&[&small, &large], 0).unwrap();
        assert_eq!(i.mean, 0.5);
        // Constant groups: no spread.
        assert_eq!((i.low, i.high), (0.5, 0.5));
        let noisy = [0.0, 1.0, 0.0, 1.0];
        let j = bootstrap_mean_of_means(&[&noisy, &large], 0).unwrap();
        assert!(j.low < 0.25 && j.high > 0.25 && j.high <= 0.5, "{j:?}");
        assert!(bootstrap_mean_of_means(&[&small, &[]], 0).is_none());
    }

    #[test]
    fn a_consistent_paired_difference_excludes_zero() {
        let base: Vec<f64> = (0..50).map(|i| (i % 2) as f64).collect();
        let worse: Vec<f64> = base.iter().map(|x| x - 0.5).collect();
        assert!(paired_difference(&worse, &base, 0).unwrap().excludes_zero());
        // Noise around no difference does not.
        let mixed: Vec<f64> = (0..50).map(|i| ((i / 2) % 2) as f64).collect();
        let d = paired_difference(&mixed, &base, 0).unwrap();
        assert!(!d.excludes_zero(), "{d:?}");
    }
}
