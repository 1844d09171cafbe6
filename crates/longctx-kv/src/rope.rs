use candle_core::{DType, Device, Tensor};

use crate::{KvError, Result};

/// How the two halves of each rotated pair are laid out in a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)`: GGUF Llama weights, whose q/k rows were permuted at conversion.
    Interleaved,
    /// Pairs `(i, i + d/2)` ("rotate half"): Hugging Face checkpoints, GGUF Qwen2.
    Half,
}

/// Frequency rescaling that extends a model's context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Llama-3.1's piecewise rescaling of low frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_positions: usize,
    },
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Per-frequency divisors shipped with the weights (GGUF `rope_freqs.weight`).
    FreqFactors(Vec<f32>),
}

/// Everything that determines the rotation angles.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSettings {
    /// The base θ; the needle test overrides it to reach past the trained context.
    pub theta: f64,
    /// Rotated dimensions per head (the whole head for every architecture covered here).
    pub head_dim: usize,
    /// Layout of rotated pairs.
    pub style: RopeStyle,
    /// Optional frequency rescaling.
    pub scaling: Option<RopeScaling>,
    /// Positions the table covers: the model's usable context.
    pub max_positions: usize,
}

impl RopeSettings {
    /// Inverse frequencies, one per rotated pair, after scaling.
    fn inverse_frequencies(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.theta.powf(2.0 * i as f64 / d))
            .collect();
        match &self.scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::FreqFactors(factors)) => base
                .iter()
                .zip(factors.iter().chain(std::iter::repeat(&1.0)))
                .map(|(f, k)| f / *k as f64)
                .collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            }) => {
                let old = *original_max_positions as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

/// Positions whose rotations [`RopeTable::mean_rotation`] reads at once.
const MEAN_ROTATION_SLICE: usize = 4096;

/// Most positions a stream may reach (16M): only policies whose attention spans a bounded
/// window are fed past the model's context, and none needs more.
pub const MAX_STREAM_POSITIONS: usize = 1 << 24;

/// Precomputed cos/sin of every position's rotation, shared by a model and its cache.
///
/// Positions past the table (an input streamed through a windowed policy beyond the
/// model's context) are rotated with angles computed on the spot in f64: attention within
/// the window depends only on the distance between query and key, which these angles keep
/// exact where f32 angles at large positions would not.
#[derive(Debug, Clone)]
pub struct RopeTable {
    cos: Tensor,
    sin: Tensor,
    inverse_frequencies: Vec<f64>,
    style: RopeStyle,
    max_positions: usize,
}

impl RopeTable {
    /// Compute the table once, in f64 then rounded to f32 as the reference implementations do.
    pub fn new(settings: &RopeSettings, device: &Device) -> Result<Self> {
        let inv = settings.inverse_frequencies();
        let half = inv.len();
        let n = settings.max_positions;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for f in &inv {
                // Angles in f32, as transformers computes `position * inv_freq` in float32.
                let angle = (p as f32) * (*f as f32);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (n, half), device)?,
            sin: Tensor::from_vec(sin, (n, half), device)?,
            inverse_frequencies: inv,
            style: settings.style,
            max_positions: n,
        })
    }

    /// cos and sin rows (`[t, half]`) of positions `start..start + t`: the table's, or
    /// past it, computed in f64.
    fn rows(&self, start: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let end = start + t;
        if end > MAX_STREAM_POSITIONS {
            return Err(KvError::ContextExceeded {
                position: end - 1,
                limit: MAX_STREAM_POSITIONS,
            });
        }
        if end <= self.max_positions {
            return Ok((self.cos.narrow(0, start, t)?, self.sin.narrow(0, start, t)?));
        }
        let half = self.inverse_frequencies.len();
        let (mut cos, mut sin) = (Vec::with_capacity(t * half), Vec::with_capacity(t * half));
        for p in start..end {
            for f in &self.inverse_frequencies {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let device = self.cos.device();
        Ok((
            Tensor::from_vec(cos, (t, half), device)?,
            Tensor::from_vec(sin, (t, half), device)?,
        ))
    }

    /// Positions the table covers: the model's context.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Rotate `x` (`[heads, t, head_dim]`) as tokens at positions `start..start + t`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (cos, sin) = self.rows(start, x.dim(1)?)?;
        self.rotate(x, &cos, &sin)
    }

    /// Rotate every token of `x` at the one position `position`: InfLLM's and the
    /// benchmark's StreamingLLM's queries for memory kept at a fixed distance.
    pub fn apply_at(&self, x: &Tensor, position: usize) -> Result<Tensor> {
        let t = x.dim(1)?;
        let (cos, sin) = self.rows(position, 1)?;
        let spread =
            |r: Tensor| -> Result<Tensor> { Ok(r.broadcast_as((t, r.dim(1)?))?.contiguous()?) };
        self.rotate(x, &spread(cos)?, &spread(sin)?)
    }

    /// The mean of the rotation matrices of positions `start..start + count`, `head_dim²`
    /// row-major (`rotated = R · x`): Expected Attention's rotation of query statistics
    /// towards the positions queries will come from. Not itself a rotation: the average
    /// shrinks fast-turning pairs towards zero.
    pub(crate) fn mean_rotation(&self, start: usize, count: usize) -> Result<Vec<f64>> {
        let half = self.inverse_frequencies.len();
        let d = 2 * half;
        let mut matrix = vec![0f64; d * d];
        if count == 0 {
            return Ok(matrix);
        }
        // Summed a slice of positions at a time, so that no table outgrows a slice.
        let (mut cos_sum, mut sin_sum) = (vec![0f64; half], vec![0f64; half]);
        for from in (start..start + count).step_by(MEAN_ROTATION_SLICE) {
            let n = MEAN_ROTATION_SLICE.min(start + count - from);
            let (cos, sin) = self.rows(from, n)?;
            for (sum, table) in [(&mut cos_sum, cos), (&mut sin_sum, sin)] {
                let table: Vec<f32> = table.flatten_all()?.to_vec1()?;
                for row in table.chunks_exact(half) {
                    sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
                }
            }
        }
        for i in 0..half {
            let (c, s) = (cos_sum[i] / count as f64, sin_sum[i] / count as f64);
            // The pair a rotation turns: (i, i + half) or (2i, 2i + 1).
            let (a, b) = match self.style {
                RopeStyle::Half => (i, i + half),
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            };
            matrix[a * d + a] = c;
            matrix[a * d + b] = -s;
            matrix[b * d + a] = s;
            matrix[b * d + b] = c;
        }
        Ok(matrix)
    }

    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (heads, t, d) = x.dims3()?;
        let x4 = x.reshape((1, heads, t, d))?.to_dtype(DType::F32)?;
        let out = match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x4.contiguous()?, cos, sin)?,
            RopeStyle::Half => candle_nn::rotary_emb::rope(&x4.contiguous()?, cos, sin)?,
        };
        Ok(out.reshape((heads, t, d))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(style: RopeStyle) -> RopeSettings {
        RopeSettings {
            theta: 10000.0,
            head_dim: 4,
            style,
            scaling: None,
            max_positions: 8,
        }
    }

    #[test]
    fn mean_rotation_is_the_mean_of_the_rotated_vectors() {
        for style in [RopeStyle::Half, RopeStyle::Interleaved] {
            let table = RopeTable::new(&settings(style), &Device::Cpu).unwrap();
            let x = [0.3f32, -1.2, 0.7, 2.0];
            // Positions 5..11 run past the table (8): computed on the spot.
            let r = table.mean_rotation(5, 6).unwrap();
            let mut mean = [0f64; 4];
            for p in 5..11 {
                let t = Tensor::from_vec(x.to_vec(), (1, 1, 4), &Device::Cpu).unwrap();
                let y: Vec<f32> = table
                    .apply(&t, p)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                mean.iter_mut()
                    .zip(y)
                    .for_each(|(m, v)| *m += v as f64 / 6.0);
            }
            for (i, want) in mean.iter().enumerate() {
                let got: f64 = (0..4).map(|j| r[i * 4 + j] * x[j] as f64).sum();
                assert!((got - want).abs() < 1e-5, "{style:?} {i}: {got} vs {want}");
            }
            // Past one slice of positions, the mean is the slices' weighted means.
            let whole = table.mean_rotation(3, 5000).unwrap();
            let (first, rest) = (
                table.mean_rotation(3, 4096).unwrap(),
                table.mean_rotation(4099, 904).unwrap(),
            );
            for (i, w) in whole.iter().enumerate() {
                let parts = (4096.0 * first[i] + 904.0 * rest[i]) / 5000.0;
                assert!((w - parts).abs() < 1e-12, "{style:?} {i}: {w} vs {parts}");
            }
        }
    }

    #[test]
    fn half_style_rotates_pairs_i_and_i_plus_half() {
        let table = RopeTable::new(&settings(RopeStyle::Half), &Device::Cpu).unwrap();
        let x = Tensor::new(&[[[1f32, 0.0, 0.0, 0.0]]], &Device::Cpu).unwrap();
        let y: Vec<f32> = table
            .apply(&x, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Pair 0 has frequency 1: (1, 0) at angle 3 becomes (cos 3, sin 3) in slots 0 and 2.
        assert!((y[0] - 3f32.cos()).abs() < 1e-6 && (y[2] - 3f32.sin()).abs() < 1e-6);
        assert!(y[1].abs() < 1e-7 && y[3].abs() < 1e-7);
    }

    #[test]
    fn interleaved_style_rotates_adjacent_pairs() {
        let table = RopeTable::new(&settings(RopeStyle::Interleaved), &Device::Cpu).unwrap();
        let x = Tensor::new(&[[[1f32, 0.0, 0.0, 0.0]]], &Device::Cpu).unwrap();
        let y: Vec<f32> = table
            .apply(&x, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((y[0] - 3f32.cos()).abs() < 1e-6 && (y[1] - 3f32.sin()).abs() < 1e-6);
    }

    /// Past the table, rotations come from f64 angles: they match the table's where both
    /// exist (to f32 rounding of the table's angles), and keep the distance between two
    /// positions however far the stream has gone. Beyond the stream ceiling is an error.
    #[test]
    fn positions_past_the_table_keep_relative_rotations() {
        let short = RopeTable::new(&settings(RopeStyle::Half), &Device::Cpu).unwrap();
        let long = RopeTable::new(
            &RopeSettings {
                max_positions: 4096,
                ..settings(RopeStyle::Half)
            },
            &Device::Cpu,
        )
        .unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 40, 4), &Device::Cpu).unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let past = short.apply(&x, 5).unwrap();
        assert!(max_diff(&past, &long.apply(&x, 5).unwrap()) < 1e-5);
        assert!(
            max_diff(
                &short.apply_at(&x, 30).unwrap(),
                &long.apply_at(&x, 30).unwrap()
            ) < 1e-5
        );
        // q·k of a query and a key 3 apart is the same at positions 10/7 and 3_000_010/3_000_007.
        let dot = |table: &RopeTable, q_at: usize, k_at: usize| -> f32 {
            let q = table.apply_at(&x.narrow(1, 0, 1).unwrap(), q_at).unwrap();
            let k = table.apply_at(&x.narrow(1, 1, 1).unwrap(), k_at).unwrap();
            (q * k).unwrap().sum_all().unwrap().to_scalar().unwrap()
        };
        assert!((dot(&short, 10, 7) - dot(&short, 3_000_010, 3_000_007)).abs() < 1e-4);
        assert!(matches!(
            short.apply(&x, MAX_STREAM_POSITIONS - 1),
            Err(KvError::ContextExceeded { .. })
        ));
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let s = RopeSettings {
            theta: 500000.0,
            head_dim: 128,
            style: RopeStyle::Half,
            scaling: Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_positions: 8192,
            }),
            max_positions: 1,
        };
        let scaled = s.inverse_frequencies();
        let plain = RopeSettings { scaling: None, ..s }.inverse_frequencies();
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[63] - plain[63] / 8.0).abs() < 1e-15);
    }
}
