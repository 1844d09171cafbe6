//! A weight matrix kept as quantized blocks for mat-vec (decode reads the fewest bytes),
//! dequantized a slice at a time for the GEMMs of prefill, or also held as dense f32 when
//! asked (four bytes per weight held for the run, to save that dequantization).

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::q8::DecodeActivations;
use crate::quant::{QuantKind, QuantMatrix};
use crate::Result;

/// Rows at or above which a dense f32 GEMM beats one quantized mat-vec per row.
const DENSE_MIN_ROWS: usize = 8;

/// Weight values dequantized at a time for a GEMM (16 MiB of f32): a layer's matrices
/// whole, a large vocabulary's output matrix in slices.
const DEQUANTIZED_VALUES: usize = 1 << 22;

/// `y = x Wᵀ (+ b)` for `x` of shape `[rows, in]`.
pub struct Linear {
    quantized: Option<QuantMatrix>,
    dense: Option<Tensor>,
    bias: Option<Tensor>,
}

impl Linear {
    /// From a GGUF tensor. `keep_dense` also keeps an f32 copy for prefill; types without a
    /// quantized kernel are always held dense. `activations` chooses decoding's kernels.
    pub fn from_qtensor(
        q: QTensor,
        keep_dense: bool,
        activations: DecodeActivations,
        bias: Option<Tensor>,
    ) -> Result<Self> {
        let dims = q.shape().dims().to_vec();
        let quantized = match QuantKind::from_ggml(q.dtype()) {
            Some(kind) if dims.len() == 2 => {
                QuantMatrix::new(kind, dims[0], dims[1], &q.data()?, activations)
            }
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

    /// Apply to `x` (`[rows, in]`), choosing the kernel by the number of rows.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dim(0)?;
        let y = match (&self.quantized, &self.dense) {
            (Some(q), _) if rows < DENSE_MIN_ROWS => {
                let input: Vec<Vec<f32>> = x.to_vec2()?;
                let mut out = vec![0f32; rows * q.rows()];
                for (row, o) in input.iter().zip(out.chunks_exact_mut(q.rows())) {
                    q.matvec(row, o);
                }
                Tensor::from_vec(out, (rows, q.rows()), x.device())?
            }
            (_, Some(w)) => x.matmul(&w.t()?)?,
            (Some(q), None) => {
                // Output columns a weight slice at a time, each slice dequantized for its GEMM.
                let slice = (DEQUANTIZED_VALUES / q.cols()).max(1);
                let parts = (0..q.rows())
                    .step_by(slice)
                    .map(|first| {
                        let n = slice.min(q.rows() - first);
                        let mut values = vec![0f32; n * q.cols()];
                        q.dequantize_rows(first, &mut values);
                        let w = Tensor::from_vec(values, (n, q.cols()), x.device())?;
                        Ok(x.matmul(&w.t()?)?)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 1)?
            }
            (None, None) => unreachable!("a Linear always holds a weight"),
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Rows `ids` of the weight, `[ids.len(), in]`: an embedding table's lookup.
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor> {
        match (&self.dense, &self.quantized) {
            (Some(w), _) => Ok(w.index_select(&Tensor::new(ids, w.device())?, 0)?),
            (None, Some(q)) => {
                let (mut values, mut scratch) = (vec![0f32; ids.len() * q.cols()], Vec::new());
                for (&id, row) in ids.iter().zip(values.chunks_exact_mut(q.cols())) {
                    q.dequantize_row(id as usize, row, &mut scratch);
                }
                Ok(Tensor::from_vec(
                    values,
                    (ids.len(), q.cols()),
                    &Device::Cpu,
                )?)
            }
            (None, None) => unreachable!("a Linear always holds a weight"),
        }
    }

    /// Output rows of the weight (an embedding table's vocabulary).
    pub fn outputs(&self) -> usize {
        match (&self.dense, &self.quantized) {
            (Some(w), _) => w.dims()[0],
            (None, Some(q)) => q.rows(),
            (None, None) => unreachable!("a Linear always holds a weight"),
        }
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
