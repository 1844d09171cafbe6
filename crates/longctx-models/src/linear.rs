//! A weight matrix kept in two forms: quantized blocks for mat-vec (decode reads the fewest
//! bytes) and, when memory allows, dense f32 for the GEMMs of prefill.

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::quant::{QuantKind, QuantMatrix};
use crate::Result;

/// Rows at or above which a dense f32 GEMM beats one quantized mat-vec per row.
const DENSE_MIN_ROWS: usize = 8;

/// `y = x Wᵀ (+ b)` for `x` of shape `[rows, in]`.
pub struct Linear {
    quantized: Option<QuantMatrix>,
    dense: Option<Tensor>,
    bias: Option<Tensor>,
}

impl Linear {
    /// From a GGUF tensor. `keep_dense` also keeps an f32 copy for prefill; types without a
    /// quantized kernel are always held dense.
    pub fn from_qtensor(q: QTensor, keep_dense: bool, bias: Option<Tensor>) -> Result<Self> {
        let dims = q.shape().dims().to_vec();
        let quantized = match QuantKind::from_ggml(q.dtype()) {
            Some(kind) if dims.len() == 2 => QuantMatrix::new(kind, dims[0], dims[1], &q.data()?),
            _ => None,
        };
        let dense = if keep_dense || quantized.is_none() {
            Some(q.dequantize(&Device::Cpu)?)
        } else {
            None
        };
        Ok(Self {
            quantized,
            dense,
            bias,
        })
    }

    /// From an unquantized `[out, in]` weight (Hugging Face checkpoints).
    pub fn from_dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            quantized: None,
            dense: Some(weight),
            bias,
        }
    }

    /// Use `dense` (an `[out, in]` f32 tensor, possibly shared) for the GEMM path.
    pub fn with_dense(self, dense: Tensor) -> Self {
        Self {
            dense: Some(dense),
            ..self
        }
    }

    /// Apply to `x` (`[rows, in]`), choosing the kernel by the number of rows.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dim(0)?;
        let y = match (&self.quantized, &self.dense) {
            (_, Some(w)) if rows >= DENSE_MIN_ROWS || self.quantized.is_none() => {
                x.matmul(&w.t()?)?
            }
            (Some(q), _) => {
                let input: Vec<Vec<f32>> = x.to_vec2()?;
                let mut out = vec![0f32; rows * q.rows()];
                for (row, o) in input.iter().zip(out.chunks_exact_mut(q.rows())) {
                    q.matvec(row, o);
                }
                Tensor::from_vec(out, (rows, q.rows()), x.device())?
            }
            (None, _) => unreachable!("a Linear always holds a weight"),
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Bytes of weight storage held (quantized and dense forms together).
    pub fn bytes(&self) -> usize {
        self.quantized.as_ref().map_or(0, QuantMatrix::bytes)
            + self
                .dense
                .as_ref()
                .map_or(0, |t| t.elem_count() * t.dtype().size_in_bytes())
    }
}
