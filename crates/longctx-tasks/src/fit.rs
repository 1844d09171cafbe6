//! Sizing a generated prompt to a length in tokens: the largest haystack that fits.

/// The largest size in `1..=largest` that `fits` (given that 1 does): sizes double until one
/// does not fit, then bisection between the last that did and it.
pub(crate) fn largest_fitting(largest: usize, fits: impl Fn(usize) -> bool) -> usize {
    let mut good = 1;
    let mut bad = loop {
        let next = (good * 2).min(largest);
        if next == good {
            return good;
        }
        if !fits(next) {
            break next;
        }
        good = next;
    };
    while bad - good > 1 {
        let middle = good + (bad - good) / 2;
        match fits(middle) {
            true => good = middle,
            false => bad = middle,
        }
    }
    good
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bisection_finds_the_largest_fitting_size() {
        for limit in [1, 2, 3, 17, 64, 1000] {
            assert_eq!(largest_fitting(5000, |s| s <= limit), limit);
        }
        assert_eq!(largest_fitting(40, |_| true), 40);
    }
}
