//! Scorers that rank a prompt's tokens by their keys alone, once the prompt is cached
//! (kvpress's query-agnostic scorers). No query enters, so the kept cache serves any later
//! question; each key/value head keeps its own top scores.

/// How a key-only scorer ranks one head's keys: a higher score keeps the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScorer {
    /// Seeded random scores: the floor any scorer must beat. kvpress's RandomPress draws
    /// from torch's generator; this draws from splitmix64 of (seed, layer, head, position),
    /// so a token's score does not depend on the prompt around it.
    Random {
        /// Seed of the draw.
        seed: u64,
    },
    /// The smallest key norms keep (Devoto et al., 2024; kvpress's KnormPress): `−‖k‖`.
    Knorm,
    /// The keys least like the head's mean key direction keep (KeyDiff, Park et al., 2025;
    /// kvpress's KeyDiffPress): `−cos(k, mean_j k_j/‖k_j‖)`.
    KeyDiff,
}

impl KeyScorer {
    /// The method family's name.
    pub fn name(&self) -> &'static str {
        match self {
            KeyScorer::Random { .. } => "random",
            KeyScorer::Knorm => "knorm",
            KeyScorer::KeyDiff => "keydiff",
        }
    }

    /// Scores of one head's keys: `keys` holds them row after row, `width` each, rotated at
    /// their `positions` (as kvpress's cache holds them).
    pub fn scores(
        &self,
        keys: &[f32],
        width: usize,
        positions: &[usize],
        (layer, head): (usize, usize),
    ) -> Vec<f32> {
        let rows = keys.chunks_exact(width);
        match *self {
            KeyScorer::Random { seed } => positions
                .iter()
                .map(|&p| {
                    let draw = splitmix64(
                        seed ^ splitmix64(
                            ((layer as u64) << 40) ^ ((head as u64) << 32) ^ p as u64,
                        ),
                    );
                    // The top 24 bits as a fraction in [0, 1), exact in f32.
                    (draw >> 40) as f32 / (1u64 << 24) as f32
                })
                .collect(),
            KeyScorer::Knorm => rows.map(|k| -norm(k)).collect(),
            KeyScorer::KeyDiff => {
                // torch's F.normalize (eps 1e-12) then the mean over tokens.
                let mut anchor = vec![0f64; width];
                for k in rows.clone() {
                    let n = norm(k).max(1e-12) as f64;
                    anchor
                        .iter_mut()
                        .zip(k)
                        .for_each(|(a, &x)| *a += x as f64 / n);
                }
                let count = positions.len().max(1) as f64;
                let anchor: Vec<f32> = anchor.iter().map(|a| (a / count) as f32).collect();
                let anchor_norm = norm(&anchor);
                // torch's F.cosine_similarity: x·y / (max(‖x‖, eps) · max(‖y‖, eps)), eps 1e-8.
                rows.map(|k| {
                    let dot: f64 = k
                        .iter()
                        .zip(&anchor)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    -(dot / (norm(k).max(1e-8) as f64 * anchor_norm.max(1e-8) as f64)) as f32
                })
                .collect()
            }
        }
    }
}

/// The Euclidean norm, accumulated in f64.
fn norm(row: &[f32]) -> f32 {
    row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32
}

/// One splitmix64 step: a well-mixed 64-bit value of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knorm_prefers_small_keys_and_keydiff_the_odd_one_out() {
        // Three keys along x (one long), one along y.
        let keys = [1.0, 0.0, 3.0, 0.0, 1.0, 0.1, 0.0, 1.0];
        let positions = [0, 1, 2, 3];
        let knorm = KeyScorer::Knorm.scores(&keys, 2, &positions, (0, 0));
        assert_eq!(knorm[1], -3.0);
        assert!(knorm[0] > knorm[1] && knorm[3] > knorm[1]);
        let keydiff = KeyScorer::KeyDiff.scores(&keys, 2, &positions, (0, 0));
        let best = (0..4)
            .max_by(|&a, &b| keydiff[a].total_cmp(&keydiff[b]))
            .unwrap();
        assert_eq!(best, 3, "{keydiff:?}");
        // Direction, not length: the long key scores as its short twin.
        assert!((keydiff[0] - keydiff[1]).abs() < 1e-6);
    }

    #[test]
    fn random_scores_are_seeded_per_token_and_spread() {
        let keys = vec![0.0; 2 * 1000];
        let positions: Vec<usize> = (0..1000).collect();
        let a = KeyScorer::Random { seed: 1 }.scores(&keys, 2, &positions, (0, 0));
        assert_eq!(
            a,
            KeyScorer::Random { seed: 1 }.scores(&keys, 2, &positions, (0, 0))
        );
        assert_ne!(
            a,
            KeyScorer::Random { seed: 2 }.scores(&keys, 2, &positions, (0, 0))
        );
        assert_ne!(
            a,
            KeyScorer::Random { seed: 1 }.scores(&keys, 2, &positions, (0, 1))
        );
        // A token keeps its score when the tokens around it change.
        let tail = KeyScorer::Random { seed: 1 }.scores(&keys[..20], 2, &positions[990..], (0, 0));
        assert_eq!(tail, a[990..]);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!((0.45..0.55).contains(&mean), "{mean}");
        assert!(a.iter().all(|s| (0.0..1.0).contains(s)));
    }
}
