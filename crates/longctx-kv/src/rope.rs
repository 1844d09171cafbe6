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

/// Precomputed cos/sin of every position's rotation, shared by a model and its cache.
#[derive(Debug, Clone)]
pub struct RopeTable {
    cos: Tensor,
    sin: Tensor,
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
            style: settings.style,
            max_positions: n,
        })
    }

    /// Positions this table covers.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Rotate `x` (`[heads, t, head_dim]`) as tokens at positions `start..start + t`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let t = x.dim(1)?;
        self.check(start + t)?;
        self.rotate(
            x,
            &self.cos.narrow(0, start, t)?,
            &self.sin.narrow(0, start, t)?,
        )
    }

    /// Rotate every token of `x` at the one position `position`: InfLLM's and the
    /// benchmark's StreamingLLM's queries for memory kept at a fixed distance.
    pub fn apply_at(&self, x: &Tensor, position: usize) -> Result<Tensor> {
        let t = x.dim(1)?;
        self.check(position + 1)?;
        let row = |table: &Tensor| -> Result<Tensor> {
            let r = table.narrow(0, position, 1)?;
            Ok(r.broadcast_as((t, r.dim(1)?))?.contiguous()?)
        };
        self.rotate(x, &row(&self.cos)?, &row(&self.sin)?)
    }

    fn check(&self, end: usize) -> Result<()> {
        if end > self.max_positions {
            return Err(KvError::ContextExceeded {
                position: end - 1,
                limit: self.max_positions,
            });
        }
        Ok(())
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

    #[test]
    fn positions_past_the_table_are_an_error() {
        let table = RopeTable::new(&settings(RopeStyle::Half), &Device::Cpu).unwrap();
        let x = Tensor::zeros((1, 2, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            table.apply(&x, 7),
            Err(KvError::ContextExceeded {
                position: 8,
                limit: 8
            })
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
