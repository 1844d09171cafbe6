//! Python's `difflib.SequenceMatcher(None, a, b).ratio()`, ported line by line, including
//! the "autojunk" heuristic (in a `b` of 200 or more items, items occurring more than
//! 1% + 1 times are ignored as match seeds).

use std::collections::HashMap;

/// 2·M / (len(a) + len(b)), M the total size of the matching blocks; 1.0 for two empty inputs.
pub fn sequence_matcher_ratio(a: &[char], b: &[char]) -> f64 {
    let total = a.len() + b.len();
    if total == 0 {
        return 1.0;
    }
    let b2j = index_b(b);
    let mut matched = 0usize;
    let mut queue = vec![(0, a.len(), 0, b.len())];
    while let Some((alo, ahi, blo, bhi)) = queue.pop() {
        let (i, j, k) = find_longest_match(a, b, &b2j, alo, ahi, blo, bhi);
        if k > 0 {
            matched += k;
            if alo < i && blo < j {
                queue.push((alo, i, blo, j));
            }
            if i + k < ahi && j + k < bhi {
                queue.push((i + k, ahi, j + k, bhi));
            }
        }
    }
    2.0 * matched as f64 / total as f64
}

/// `__chain_b`: positions of each item of `b`, popular items removed when `b` is long.
fn index_b(b: &[char]) -> HashMap<char, Vec<usize>> {
    let mut b2j: HashMap<char, Vec<usize>> = HashMap::new();
    for (j, c) in b.iter().enumerate() {
        b2j.entry(*c).or_default().push(j);
    }
    if b.len() >= 200 {
        let limit = b.len() / 100 + 1;
        b2j.retain(|_, positions| positions.len() <= limit);
    }
    b2j
}

/// `find_longest_match` with no junk function: the longest block `a[i..i+k] == b[j..j+k]`
/// inside the ranges, earliest in `a` then in `b` on ties, then extended over equal items
/// (popular ones included) on both sides.
fn find_longest_match(
    a: &[char],
    b: &[char],
    b2j: &HashMap<char, Vec<usize>>,
    alo: usize,
    ahi: usize,
    blo: usize,
    bhi: usize,
) -> (usize, usize, usize) {
    let (mut besti, mut bestj, mut bestsize) = (alo, blo, 0usize);
    let mut j2len: HashMap<usize, usize> = HashMap::new();
    for (i, item) in a.iter().enumerate().take(ahi).skip(alo) {
        let mut next: HashMap<usize, usize> = HashMap::new();
        if let Some(positions) = b2j.get(item) {
            for &j in positions {
                if j < blo {
                    continue;
                }
                if j >= bhi {
                    break;
                }
                let k = j
                    .checked_sub(1)
                    .and_then(|p| j2len.get(&p))
                    .copied()
                    .unwrap_or(0)
                    + 1;
                next.insert(j, k);
                if k > bestsize {
                    besti = i + 1 - k;
                    bestj = j + 1 - k;
                    bestsize = k;
                }
            }
        }
        j2len = next;
    }
    while besti > alo && bestj > blo && a[besti - 1] == b[bestj - 1] {
        besti -= 1;
        bestj -= 1;
        bestsize += 1;
    }
    while besti + bestsize < ahi
        && bestj + bestsize < bhi
        && a[besti + bestsize] == b[bestj + bestsize]
    {
        bestsize += 1;
    }
    (besti, bestj, bestsize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratio(a: &str, b: &str) -> f64 {
        sequence_matcher_ratio(
            &a.chars().collect::<Vec<_>>(),
            &b.chars().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn known_python_values() {
        // Values printed by CPython 3.11's difflib.
        assert_eq!(ratio("abcd", "bcde"), 0.75);
        assert_eq!(ratio("", ""), 1.0);
        assert_eq!(ratio("abc", ""), 0.0);
        assert!(
            (ratio(
                "private Thread currentThread;",
                "private volatile Thread currentThread;"
            ) - 0.8656716417910447)
                .abs()
                < 1e-15
        );
    }

    #[test]
    fn autojunk_ignores_popular_characters_in_long_b() {
        // Values printed by CPython 3.11's difflib. In the third, 'a' (60 of 211) is popular
        // and cannot seed a match: only the trailing 'b' is found, where a plain LCS finds 6.
        assert!((ratio("a", &"a".repeat(200)) - 0.009950248756218905).abs() < 1e-15);
        assert!((ratio("ba", &("a".repeat(200) + "b")) - 0.009852216748768473).abs() < 1e-15);
        let b = "c".repeat(150) + &"a".repeat(60) + "b";
        assert!(
            (ratio(&("b".to_string() + &"a".repeat(5)), &b) - 0.009216589861751152).abs() < 1e-15
        );
    }
}
