use candle_core::{DType, Tensor};

use crate::{KvError, Result};

/// The attention geometry a cache is built for; one cache serves every layer of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    /// Number of transformer layers.
    pub layers: usize,
    /// Query heads per layer.
    pub q_heads: usize,
    /// Key/value heads per layer (grouped-query attention when fewer than `q_heads`).
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
}

impl KvShape {
    /// Bytes one token's keys and values take in every layer at 16-bit precision: the
    /// reference against which compression ratios are stated.
    pub fn fp16_bytes_per_token(&self) -> usize {
        self.bytes_per_token(KvPrecision::F16)
    }

    /// Bytes one token's keys and values take in every layer at `precision`.
    pub fn bytes_per_token(&self, precision: KvPrecision) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim * precision.bytes()
    }
}

/// The precision of the keys and values that the caches keeping them uncompressed (the
/// baseline, the token-dropping policies and Gemma-3's local windows) store; attention widens
/// them to f32 a tile at a time. 16 bits is what the reference models hold and what
/// compression ratios are stated against; f32 is the engine's arithmetic, for comparisons
/// with f32 references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvPrecision {
    #[default]
    F16,
    F32,
}

impl KvPrecision {
    /// The tensor type keys and values are held in.
    pub fn dtype(self) -> DType {
        match self {
            KvPrecision::F16 => DType::F16,
            KvPrecision::F32 => DType::F32,
        }
    }

    /// `x` as it reads back once stored at this precision.
    pub fn rounded(self, x: f32) -> f32 {
        match self {
            KvPrecision::F16 => half::f16::from_f32(x).to_f32(),
            KvPrecision::F32 => x,
        }
    }

    /// Bytes per stored element.
    pub fn bytes(self) -> usize {
        match self {
            KvPrecision::F16 => 2,
            KvPrecision::F32 => 4,
        }
    }

    /// How settings and specs spell it.
    pub fn name(self) -> &'static str {
        match self {
            KvPrecision::F16 => "f16",
            KvPrecision::F32 => "f32",
        }
    }
}

impl std::str::FromStr for KvPrecision {
    type Err = KvError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f16" => Ok(KvPrecision::F16),
            "f32" => Ok(KvPrecision::F32),
            other => Err(KvError::Invalid(format!(
                "KV precision \"{other}\": use f16 (16-bit keys and values, the reference models' precision) or f32"
            ))),
        }
    }
}

/// How decoding treats the activations that meet quantized weights and quantized caches
/// (a load option, recorded with results): the model's mat-vecs and KIVI's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeActivations {
    /// Quantized to 8 bits per block (of 32 for mat-vecs), integer dot products (as
    /// llama.cpp).
    #[default]
    Int8,
    /// Kept in f32 and multiplied with dequantized weights or codes (no activation
    /// rounding).
    F32,
}

impl DecodeActivations {
    /// The option's name, as written on the command line and in stored settings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::F32 => "f32",
        }
    }
}

impl std::str::FromStr for DecodeActivations {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "int8" => Ok(Self::Int8),
            "f32" => Ok(Self::F32),
            other => Err(format!(
                "decode activations \"{other}\": use int8 (8-bit activations, integer dot products, as llama.cpp) or f32 (exact f32 activations)"
            )),
        }
    }
}

/// The numeric choices a model hands to every cache it builds (load options, recorded with
/// results).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheNumerics {
    /// Precision of keys and values held uncompressed.
    pub precision: KvPrecision,
    /// Whether decoding over packed codes quantizes its other operand (KIVI).
    pub activations: DecodeActivations,
}

/// One sequence's key/value state across all layers, and the attention over it.
///
/// The model calls [`KvCache::attend`] for layer 0, 1, … of a chunk, all with the same
/// `pos`, then moves on to the next chunk. Queries and keys arrive *before* RoPE, so a
/// policy can cache keys rotated at their absolute positions (the usual case) or re-index
/// positions inside the cache.
pub trait KvCache: Send {
    /// The geometry this cache was built for.
    fn shape(&self) -> KvShape;

    /// Start a sequence as `reservation` describes it.
    ///
    /// Policies size their storage here so that no growth happens while it runs (exceeding
    /// the total still works), and token-dropping policies derive their per-input budget
    /// (prompt tokens / ratio) from its prompt.
    fn reserve(&mut self, reservation: Reservation) -> Result<()>;

    /// Store this chunk's keys and values for `layer` and return the attention output.
    ///
    /// `q` is `[q_heads, t, head_dim]`, `k` and `v` are `[kv_heads, t, head_dim]`, none
    /// rotated yet; `pos` is the absolute position of the chunk's first token. Returns
    /// `[q_heads, t, head_dim]`; token `i` of the chunk attends causally to everything
    /// the policy exposes up to and including itself.
    fn attend(
        &mut self,
        layer: usize,
        pos: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor>;

    /// Whether every query attends only within a bounded distance (a window, and memory
    /// read at a fixed distance), so that an input longer than the model's context can be
    /// streamed through: the benchmark's StreamingLLM and InfLLM. Attention then never spans
    /// more positions than the model was trained on, whatever the input's length.
    fn streams(&self) -> bool {
        false
    }

    /// Told once the whole prompt has been processed; post-prefill policies evict here.
    fn end_prefill(&mut self) -> Result<()>;

    /// Bytes really held by the storage attention reads from (allocated capacity included).
    fn stored_bytes(&self) -> usize;

    /// [`KvCache::stored_bytes`] per named group of layers, where layers are grouped (a
    /// hybrid model's local and global layers); empty for a cache serving every layer alike.
    fn stored_bytes_by_group(&self) -> Vec<(&'static str, usize)> {
        Vec::new()
    }

    /// Bytes of evicted context a retrieval policy keeps in a cheaper store to bring back
    /// later (InfLLM's offloaded blocks); zero for every policy that truly forgets.
    fn offloaded_bytes(&self) -> usize {
        0
    }

    /// Bytes one token's keys and values take across all layers in the format this policy
    /// compresses from: what "uncompressed" means for its measured compression ratio (tokens
    /// seen × this / [`KvCache::stored_bytes`]). The engine's f32 by default; quantizers are
    /// defined against 16-bit keys and values, as in their papers.
    fn uncompressed_bytes_per_token(&self) -> usize {
        let s = self.shape();
        2 * s.layers * s.kv_heads * s.head_dim * 4
    }

    /// Tokens whose keys/values `layer` currently keeps.
    fn kept_tokens(&self, layer: usize) -> usize;

    /// Positions of the tokens `layer` keeps for key/value head `kv_head`, ascending, where
    /// the policy chooses tokens (token dropping); `None` for policies that keep every token
    /// or retrieve them. What a comparison with another library's kept sets reads.
    fn kept_positions(&self, _layer: usize, _kv_head: usize) -> Option<Vec<usize>> {
        None
    }

    /// Kept tokens averaged over layers: what a row reports, since layers differ
    /// (PyramidKV's budgets fall by layer).
    fn mean_kept_tokens(&self) -> f64 {
        let layers = self.shape().layers.max(1);
        (0..layers).map(|l| self.kept_tokens(l)).sum::<usize>() as f64 / layers as f64
    }

    /// Forget the sequence, keeping allocations for reuse.
    fn reset(&mut self);

    /// Bytes of keys, values and their metadata that decoding steps have read in this
    /// sequence, with the steps: what a policy that reads part of what it holds (Quest)
    /// saves in memory traffic. `None` where every step reads all the cache holds.
    fn decode_reads(&self) -> Option<DecodeReads> {
        None
    }

    /// Take a token-dropping policy's kept rows of `layer` (per key/value head: keys rotated
    /// at their positions and values, f32 row-major) as this cache's own prompt of `prompt`
    /// tokens, already attended, with room for `after` more: what composing dropping with a
    /// quantizer needs (`DROP+QUANT`). [`KvCache::end_prefill`] follows once every layer has
    /// adopted. A cache that cannot hold rows chosen elsewhere refuses.
    fn adopt(
        &mut self,
        layer: usize,
        _kept: Vec<(Vec<f32>, Vec<f32>)>,
        _prompt: usize,
        _after: usize,
    ) -> Result<()> {
        Err(crate::KvError::Invalid(format!(
            "this cache policy cannot take the rows a dropping policy kept (layer {layer}): compose dropping with a quantizer (kvquant, flexgen, kivi)"
        )))
    }

    /// Context tokens per replay pass, when the policy scores the prompt by having the
    /// model repeat it (KVzip) before [`KvCache::end_prefill`]; `None` for every other.
    fn replay_chunk(&self) -> Option<usize> {
        None
    }

    /// The chunks that follow, until [`KvCache::end_replay`], repeat the prompt's tokens at
    /// `span`: they are attended as usual and score the span, then are forgotten.
    fn begin_replay(&mut self, span: std::ops::Range<usize>) -> Result<()> {
        Err(crate::KvError::Invalid(format!(
            "this cache policy does not replay its prompt (asked to repeat {span:?})"
        )))
    }

    /// The replay pass is over: its tokens are dropped, the prompt is as it was.
    fn end_replay(&mut self) -> Result<()> {
        Err(crate::KvError::Invalid(
            "this cache policy does not replay its prompt".into(),
        ))
    }

    /// Drop the cached tokens at `range` of every layer, moving those after it down (their
    /// keys keep the rotation of the position they were computed at); the next chunk then
    /// starts at the new length. What a scorer rewinding to a compressed prefix needs
    /// (LLMLingua). Only a cache that keeps every token in order can do it.
    fn forget(&mut self, range: std::ops::Range<usize>) -> Result<()> {
        Err(crate::KvError::Invalid(format!(
            "this cache policy cannot forget tokens {range:?}: only the uncompressed cache (baseline) can rewind"
        )))
    }
}

/// What decoding steps have read from a cache that reads part of what it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeReads {
    /// Decoding steps (one token through every layer).
    pub steps: usize,
    /// Bytes read over those steps, every layer together.
    pub bytes: u64,
}

impl DecodeReads {
    /// Mean bytes read per decoded token; `None` before the first step.
    pub fn per_step(&self) -> Option<f64> {
        (self.steps > 0).then(|| self.bytes as f64 / self.steps as f64)
    }
}

/// What a sequence will hold, told to a cache before its first chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    /// Tokens of the prefill: a token-dropping policy's budget derives from them.
    pub prompt: usize,
    /// Tokens fed after the prefill before any is generated (the question, under the
    /// query-agnostic protocol): storage is set aside for all of them.
    pub appended: usize,
    /// Most tokens generated: storage is set aside for up to [`DECODE_RESERVE`] of them.
    pub new_tokens: usize,
    /// The input length a token-dropping policy's budget derives from, when it is not the
    /// prompt's: the benchmark streams a long input through StreamingLLM and InfLLM with the
    /// budget of the truncated input, `min(L, max_length)`.
    pub budget_input: Option<usize>,
}

impl Reservation {
    /// A prompt followed by up to `new_tokens` generated tokens.
    pub fn prompt(prompt: usize, new_tokens: usize) -> Self {
        Self {
            prompt,
            new_tokens,
            ..Self::default()
        }
    }

    /// The input length budgets derive from.
    pub fn budget_input(&self) -> usize {
        self.budget_input.unwrap_or(self.prompt)
    }

    /// Rows to set aside after the prompt: every appended token, and generated ones up to
    /// [`DECODE_RESERVE`].
    pub fn after_prompt(&self) -> usize {
        self.appended + self.new_tokens.min(DECODE_RESERVE)
    }

    /// Every token the sequence may hold.
    pub fn total(&self) -> usize {
        self.prompt + self.appended + self.new_tokens
    }
}

/// Tokens of generation that `reserve` sets storage aside for. Beyond them storage grows in
/// steps of this size or 1/16 of what is held, whichever is larger, so that an answer far
/// shorter than its `max_new_tokens` does not inflate the bytes a cache is measured to hold.
pub const DECODE_RESERVE: usize = 64;

/// How many more tokens to make room for when storage holding `held` tokens is full.
pub(crate) fn growth_step(held: usize) -> usize {
    DECODE_RESERVE.max(held / 16)
}

/// The calling contract every policy enforces in `attend`: a layer the cache has, and chunks
/// in order (`pos` equals the tokens the layer holds).
pub(crate) fn check_chunk(shape: &KvShape, layer: usize, pos: usize, held: usize) -> Result<()> {
    if layer >= shape.layers {
        return Err(KvError::Invalid(format!(
            "layer {layer} of a {}-layer cache",
            shape.layers
        )));
    }
    if pos != held {
        return Err(KvError::Invalid(format!(
            "layer {layer} holds {held} tokens but the chunk starts at {pos}"
        )));
    }
    Ok(())
}

/// The refusal of a chunk of several tokens over key/value heads that keep different
/// numbers of tokens (AdaKV's, KVzip's): its causal attention needs heads of one length, and
/// decoding one token at a time reads each head alone.
pub(crate) fn uneven_heads() -> KvError {
    KvError::Invalid(
        "the key/value heads keep different numbers of tokens (adakv, kvzip): feed the tokens after the prompt one at a time".into(),
    )
}
