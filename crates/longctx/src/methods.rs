//! The method registry: spec strings such as `baseline`, `kivi-2bit`, `h2o-4x` or
//! `snapkv:ratio=4,window=32,kernel=7,pool=max`, parsed once, with an error naming any unknown method
//! or key, missing value or value out of range, never a silent default. A parsed method
//! prints back as its full spec ([`Method`]'s `Display`), which is what results record.

use std::fmt;
use std::sync::Arc;

use candle_core::Device;

use crate::compress::{
    LlmLingua, LlmLingua2Spec, LlmLinguaSettings, PromptCompressor, Split, Target,
};
use longctx_kv::{
    Budget, CacheNumerics, DecodingBudget, DropPolicy, DropSettings, DropThenQuantize,
    DroppingCache, DuoAttention, ExpectedAttention, FlexGenSettings, FullCache, HeadPattern, Heads,
    InfLlmCache, InfLlmRemainder, InfLlmSettings, KeyScorer, KiviCache, KiviSettings, KvCache,
    KvError, KvShape, KvZip, Pool, QuantizedPrefill, QuestCache, QuestSettings, RopeTable,
    RowFormat, RowQuantCache, RowQuantSettings, Schedule, Selection, Sinks, MAX_STREAM_POSITIONS,
};

/// A parsed method.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// The uncompressed cache.
    Baseline,
    /// FlexGen's group-wise quantization of keys and values.
    FlexGen(FlexGenSettings),
    /// KIVI's per-channel keys, per-token values and full-precision residual window.
    Kivi(KiviSettings),
    /// Per-token quantized rows: llama.cpp's KV cache types and min–max codes, each for
    /// keys and values, rotated or not.
    KvQuant(RowQuantSettings),
    /// A token-dropping policy that chooses once, its kept tokens then quantized per token
    /// (`DROP+QUANTIZER`, e.g. `snapkv-4x+q4_0`).
    DropThenQuantize {
        /// The dropping policy.
        drop: DropSettings,
        /// The quantizer of what it keeps: a `kvquant`, `flexgen` or `kivi` method.
        quantize: Box<Method>,
    },
    /// A token-dropping policy (StreamingLLM, H2O, SnapKV, PyramidKV, TOVA).
    Drop(DropSettings),
    /// InfLLM's sinks, local window and retrieved memory blocks.
    InfLlm(InfLlmSettings),
    /// Quest's query-aware page reads: every token kept, each decoding query reading the
    /// pages its key bounds rank highest.
    Quest(QuestSettings),
    /// A prompt compressor (LLMLingua): the prompt's text shortened before the model reads
    /// it with the full cache.
    Compressor(PromptCompressor),
}

/// A preset: a name that stands for a fully specified method (the paper's settings).
#[derive(Debug, Clone)]
pub struct Preset {
    /// The name users type.
    pub name: String,
    /// The spec it stands for.
    pub spec: String,
    /// The ratio the paper states for it, where it states one.
    pub paper_ratio: Option<f64>,
    /// How it relates to the benchmark's code and to the original method.
    pub note: &'static str,
}

/// How a pooling is spelled in a spec.
fn pool_name(pool: Pool) -> &'static str {
    match pool {
        Pool::Max => "max",
        Pool::Average => "avg",
    }
}

/// The compression ratios of the paper's token-dropping presets.
pub const DROP_RATIOS: [u32; 4] = [2, 4, 6, 8];

/// A token-dropping family with presets at every ratio of [`DROP_RATIOS`].
struct Family {
    /// Preset name prefix (`{name}-{r}x`).
    name: &'static str,
    /// The spec, with `{budget}` standing for the budget.
    spec: &'static str,
    /// The budget at 6×: the benchmark's configs give 0.17 of the input for StreamingLLM and
    /// InfLLM and heavy = recent = 0.083 for H2O there, not 1/6 (the other ratios are exact).
    six: &'static str,
    /// How the preset relates to the benchmark's code and the original.
    note: &'static str,
}

const DROPPING: [Family; 16] = [
    Family {
        name: "streamingllm",
        spec: "streamingllm:{budget},sinks=0.021,reindex=true",
        six: "fraction=0.17",
        note: "the benchmark's (InfLLM's stream_llm.py): int(0.021*T) sinks re-indexed, an exact per-query window; streams a LongBench input past max_length whole (truncation=paper); the original keeps 4 sinks (streamingllm-4sinks)",
    },
    Family {
        name: "streamingllm-4sinks",
        spec: "streamingllm:{budget},sinks=4,reindex=true",
        six: "fraction=0.17",
        note: "the original StreamingLLM's 4 sinks; otherwise as streamingllm",
    },
    Family {
        name: "h2o",
        spec: "h2o:{budget},count_prefill=false,heads=query",
        six: "fraction=0.166",
        note: "the benchmark's (h2o/utils_hh/modify_llama.py): no scores from prefill, the first decoding query starts them, heavy = recent = int(r(L+1)), chosen per query head (equal to its outputs in tests); frees what no query head reads (the benchmark only masks)",
    },
    Family {
        name: "h2o-original",
        spec: "h2o:{budget},count_prefill=true,heads=kv",
        six: "fraction=0.166",
        note: "the original FMInference/H2O (utils_real_drop): prefill attention starts the scores, cut to heavy + recent after the prompt and every step (outputs and kept sets equal to its code in tests); it has no grouped-query attention, so a KV head chooses by its group's summed attention (per query head with prefill scores is not built); not the paper's setting",
    },
    Family {
        name: "infllm",
        spec: "infllm:{budget},sinks=0.021,retrieved=0.324,block=128,representatives=4,chunk=512,remainder=chunk",
        six: "fraction=0.17",
        note: "the benchmark's (InfLLM's context_manager.py, budgets of infllm_utils.py; equal to its outputs in tests): window max(512, rest), chunks of 512, memory at a fixed distance, one block choice per layer, and its chunk-wide reading of the tokens waiting for a block (remainder=query is the exact mask); streams a LongBench input past max_length whole (truncation=paper)",
    },
    Family {
        name: "snapkv",
        spec: "snapkv:{budget},window=32,kernel=7,pool=max",
        six: "ratio=6",
        note: "SnapKV's LongBench settings (window 32, kernel 7, max pooling), chosen per KV head as KVCache-Factory's kv-head mode (kept sets equal to its code in tests, up to ties); not in the paper",
    },
    Family {
        name: "pyramidkv",
        spec: "pyramidkv:{budget},window=8,kernel=7,pool=max,beta=20",
        six: "ratio=6",
        note: "KVCache-Factory's run_longbench.py (window 8, integer budget steps, uniform below twice the budget), chosen per KV head (kept sets equal to its code in tests, up to ties); not in the paper",
    },
    Family {
        name: "tova",
        spec: "tova:{budget}",
        six: "ratio=6",
        note: "schwartz-lab-NLP/TOVA: the last query's attention averaged over heads (outputs and kept sets equal to its cache in tests); not in the paper",
    },
    Family {
        name: "random",
        spec: "random:{budget},seed=0",
        six: "ratio=6",
        note: "kvpress's RandomPress: seeded random scores per key/value head after prefill, the floor a scorer must beat (drawn by splitmix64 per token, not torch's generator); not in the paper",
    },
    Family {
        name: "knorm",
        spec: "knorm:{budget}",
        six: "ratio=6",
        note: "kvpress's KnormPress (Devoto et al., 2024): the smallest key norms keep, per key/value head after prefill, no query read (kept sets equal to kvpress's in tests); not in the paper",
    },
    Family {
        name: "keydiff",
        spec: "keydiff:{budget}",
        six: "ratio=6",
        note: "kvpress's KeyDiffPress (KeyDiff, 2025): the keys least like their head's mean direction keep, after prefill, no query read (kept sets equal to kvpress's in tests); the paper's block-wise iteration is not built; not in the paper",
    },
    Family {
        name: "expected-attention",
        spec: "expected-attention:{budget},future=512,sinks=4,covariance=true,vnorm=true",
        six: "ratio=6",
        note: "kvpress's ExpectedAttentionPress (its defaults): the prompt's queries before RoPE (sinks left out) give a mean and covariance per head, turned by the mean rotation of the next 512 positions; a key scores exp(mu.k/sqrt(d) + k'Sigma k/2d), normalized over the prompt, averaged over its query group and scaled by the value's norm; 4 sinks always kept; chosen once after prefill (kept sets equal to kvpress's in tests); not in the paper",
    },
    Family {
        name: "kvzip",
        spec: "kvzip:{budget},sinks=4,chunk=2048",
        six: "ratio=6",
        note: "KVzip (Kim et al., 2025) as kvpress's KVzipPress (its defaults, layerwise=False): after prefill the model is asked to repeat the prompt (\"Repeat the previous context exactly.\", chunks of 2,048 tokens after the chat template's opening); a token scores the most attention any repetition query pays it over the sinks, the chunk and the repetition; the lowest scores over all layers and heads are dropped at once, so layers and heads keep different counts; 4 sinks always kept; the replay, about a second prefill, is counted in prefill time (kept sets equal to kvpress's in tests); not in the paper",
    },
    Family {
        name: "duo-attention",
        spec: "duo-attention:{budget},sinks=64,recent=256",
        six: "ratio=6",
        note: "DuoAttention (Xiao et al., ICLR 2025) as kvpress's DuoAttentionPress applies it: 1 - 1/ratio of the key/value heads (the lowest scores of the model's head pattern, over all layers) stream, keeping 64 sinks and the last 256 prompt tokens (DuoAttention's released patterns' sizes); the others keep everything; full prefill, decoded tokens kept. The pattern is calibrated once per model on synthetic passkey prompts by how far each head's output moves on the answers when it streams, instead of DuoAttention's trained gates (cached under the cache directory; `longctx calibrate-duo` prints it); at short prompts the sinks and window hold much of the prompt, so the measured ratio falls below the nominal one; not in the paper",
    },
    Family {
        name: "chunkkv",
        spec: "chunkkv:chunk=20,press=snapkv,{budget},window=32,kernel=7,pool=max",
        six: "ratio=6",
        note: "ChunkKV (Liu et al., 2025) as kvpress's ChunkKVPress: SnapKV's scores (window 32, kernel 7, max pooling) summed over heads and averaged per chunk of 20 tokens (kvpress's default), the best chunks kept whole by every head (kept sets equal to kvpress's ChunkKVPress over KnormPress in tests); any policy that chooses once takes chunk= (press=knorm, ...); not in the paper",
    },
    Family {
        name: "adakv",
        spec: "adakv:safeguard=0.2,press=snapkv,{budget},window=32,kernel=7,pool=max",
        six: "ratio=6",
        note: "Ada-SnapKV (Feng et al., 2024) as kvpress's AdaKVPress (alpha_safeguard 0.2) over SnapKV's scores (window 32, kernel 7, max pooling): the layer's best scores over all its heads, each head's best 20% of the budget safeguarded, so heads keep different counts; each head stores only its own (kvpress masks the rest; kept sets equal to kvpress's AdaKVPress over KnormPress in tests); any policy that chooses once takes safeguard= (press=knorm, ...); not in the paper",
    },
];

/// llama.cpp's KV cache types as presets: name, key type, value type, rotation, note.
const KV_TYPES: [(&str, &str, &str, bool, &str); 6] = [
    ("q8_0", "q8_0", "q8_0", true, LLAMA_CPP_TYPES),
    ("q4_0", "q4_0", "q4_0", true, LLAMA_CPP_TYPES),
    ("q4_1", "q4_1", "q4_1", true, LLAMA_CPP_TYPES),
    ("iq4_nl", "iq4_nl", "iq4_nl", true, LLAMA_CPP_TYPES),
    ("q8_0-q4_0", "q8_0", "q4_0", true, "llama.cpp's -ctk q8_0 -ctv q4_0: keys at 8 bits, values at 4; otherwise as q8_0"),
    ("q4_0-unrotated", "q4_0", "q4_0", false, "q4_0 without the Walsh-Hadamard rotation (llama.cpp with LLAMA_ATTN_ROT_DISABLE=1, and before it rotated): what the rotation is worth"),
];

/// What the llama.cpp type presets reproduce.
const LLAMA_CPP_TYPES: &str = "llama.cpp's --cache-type-k/-v as the llama.cpp of llama-cpp-python 0.3.36 stores it: ggml's blocks of 32 (bytes equal to ggml_quantize_chunk's in tests), queries, keys and values rotated by Walsh-Hadamard blocks (its default for a quantized cache whose head dimension is a multiple of 64), attention reading the stored rows, prefill included; not in the paper";

/// Every preset, in listing order.
pub fn presets() -> Vec<Preset> {
    let fixed = |name: &str, spec: &str, paper_ratio, note| Preset {
        name: name.into(),
        spec: spec.into(),
        paper_ratio,
        note,
    };
    let mut all = vec![
        fixed("baseline", "baseline", Some(1.0), "no compression"),
        fixed(
            "kivi-2bit",
            "kivi:bits=2,group=32,residual=128",
            Some(5.05),
            "the benchmark's llama_kivi.py (= jy-yuan/KIVI): prompt attended in full precision, 128-token residual (equal to its outputs in tests with --decode-activations f32; int8 rounds the scaled query and probabilities to bytes)",
        ),
        fixed(
            "kivi-4bit",
            "kivi:bits=4,group=32,residual=128",
            Some(3.11),
            "as kivi-2bit, at 4 bits",
        ),
        fixed(
            "flexgen-4bit",
            "flexgen:bits=4,group=32,prefill=quantized",
            Some(3.20),
            "the benchmark's llama_simquant.py: every key and value quantized before attention reads it, prefill included (equal to its outputs in tests)",
        ),
        fixed(
            "flexgen-original-4bit",
            "flexgen:bits=4,group=64,prefill=full",
            None,
            "the original FlexLLMGen: full-precision prefill, compressed after, groups of 64; not the paper's setting",
        ),
    ];
    for (name, keys, values, rotate, note) in KV_TYPES {
        all.push(Preset {
            name: name.into(),
            spec: format!("kvquant:keys={keys},values={values},rotate={rotate},prefill=quantized"),
            paper_ratio: None,
            note,
        });
    }
    for bits in [2, 3, 4, 8] {
        all.push(Preset {
            name: format!("rotated-{bits}bit"),
            spec: format!("kvquant:keys=int{bits},values=int{bits},rotate=true,prefill=quantized"),
            paper_ratio: None,
            note: "rotated quantization: min-max codes in groups of 32 (FlexGen's quantizer) after llama.cpp's Walsh-Hadamard rotation of queries, keys and values; TurboQuant's idea with a fixed Hadamard rotation instead of a random one, and without its QJL residual; not in the paper",
        });
    }
    for r in DROP_RATIOS {
        all.push(Preset {
            name: format!("llmlingua-{r}x"),
            spec: format!(
                "llmlingua:rate={:?},window=200,context_budget=100,split=none,question=none,scorer=default",
                1.0 / r as f64
            ),
            paper_ratio: Some(r as f64),
            note: "LLMLingua-1 (llmlingua 0.2.2's compress_prompt and its defaults; kept tokens equal to its outputs in tests), scored by the default model; compresses a LongBench sample's context field, the needle's whole prompt. The benchmark ran LLMLingua-2 (llmlingua2-*): not the paper's compressor",
        });
    }
    for r in DROP_RATIOS {
        all.push(Preset {
            name: format!("longllmlingua-{r}x"),
            spec: format!(
                "llmlingua:rate={:?},window=200,context_budget=100,split=paragraphs,question=condition,scorer=default",
                1.0 / r as f64
            ),
            paper_ratio: None,
            note: "LongLLMLingua with its README's settings (llmlingua 0.2.2: paragraphs ranked by the question's perplexity after each, kept in rank order with shares from +0.3 to -0.3, tokens scored by how much the question lowers their surprisal; kept tokens equal to its outputs in tests), scored by the default model; compresses the context, the question part kept; not in the paper",
        });
    }
    for r in DROP_RATIOS {
        all.push(Preset {
            name: format!("llmlingua2-{r}x"),
            spec: format!("llmlingua2:rate={:?},model=default", 1.0 / r as f64),
            paper_ratio: Some(r as f64),
            note: "the benchmark's (pipeline/llmlingua2): LLMLingua-2 as llmlingua 0.2.2 ran it with force tokens \\n . ! ? , and drop_consecutive (word labels equal to its outputs on a tiny random classifier in tests); needs microsoft/llmlingua-2-xlm-roberta-large-meetingbank in a local folder (model=default: see the README), which cannot be fetched here",
        });
    }
    for r in DROP_RATIOS {
        all.push(Preset {
            name: format!("quest-{r}x"),
            spec: format!("quest:ratio={r},page=16,dense_layers=2"),
            paper_ratio: None,
            note: "Quest (Tang et al., 2024) as its evaluation code (evaluation/quest_attention.py): every token kept; each decoding query of each head reads the floor(budget/16) pages of 16 tokens (at least 3) whose element-wise key minimum and maximum bound q.k highest, the budget 1/X of the prompt; prefill and the first 2 layers attend in full; memory is not reduced, reads are (bytes read per decoded token reported); not in the paper",
        });
    }
    for family in DROPPING {
        for r in DROP_RATIOS {
            let budget = match r {
                6 => family.six.to_string(),
                r => format!("ratio={r}"),
            };
            all.push(Preset {
                name: format!("{}-{r}x", family.name),
                spec: family.spec.replace("{budget}", &budget),
                paper_ratio: Some(r as f64),
                note: family.note,
            });
        }
    }
    all
}

/// A spec that cannot be parsed.
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    /// The method name is unknown.
    #[error("unknown method \"{0}\"; run `longctx methods` for the list")]
    Unknown(String),
    /// A setting is malformed, unknown, missing or out of range.
    #[error("method \"{spec}\": {reason}")]
    Setting { spec: String, reason: String },
}

/// `key=value` pairs of a spec, each consumed once; leftovers are unknown keys. A wrapper's
/// `press=P` ends its own keys: everything after it is the inner method's (`P:...`), so
/// wrappers nest.
struct Settings<'a> {
    spec: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
    /// `press=`'s family and the keys after it.
    press: Option<(&'a str, &'a str)>,
}

impl<'a> Settings<'a> {
    fn parse(spec: &'a str, text: &'a str) -> Result<Self, MethodError> {
        let mut pairs = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (item, after) = rest.split_once(',').unwrap_or((rest, ""));
            rest = after;
            if item.is_empty() {
                continue;
            }
            let (k, v) = item.split_once('=').ok_or_else(|| MethodError::Setting {
                spec: spec.into(),
                reason: format!("\"{item}\" is not key=value"),
            })?;
            if k == "press" {
                return Ok(Self {
                    spec,
                    pairs,
                    press: Some((v, after)),
                });
            }
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(MethodError::Setting {
                    spec: spec.into(),
                    reason: format!("key \"{k}\" is given twice"),
                });
            }
            pairs.push((k, v));
        }
        Ok(Self {
            spec,
            pairs,
            press: None,
        })
    }

    /// A wrapper's inner method: `press=`'s family and the keys after it, as a spec.
    fn take_press(&mut self) -> Result<(&'a str, String), MethodError> {
        let (press, rest) = self
            .press
            .take()
            .ok_or_else(|| self.error("missing required key \"press\"".into()))?;
        // A preset alone (`press=snapkv-4x`) names its whole spec.
        match rest.is_empty() {
            true => Ok((press, press.to_string())),
            false => Ok((press, format!("{press}:{rest}"))),
        }
    }

    fn error(&self, reason: String) -> MethodError {
        MethodError::Setting {
            spec: self.spec.into(),
            reason,
        }
    }

    fn take_optional(&mut self, key: &str) -> Option<&'a str> {
        let at = self.pairs.iter().position(|(k, _)| *k == key)?;
        Some(self.pairs.remove(at).1)
    }

    fn take(&mut self, key: &str) -> Result<&'a str, MethodError> {
        self.take_optional(key)
            .ok_or_else(|| self.error(format!("missing required key \"{key}\"")))
    }

    fn take_u64(&mut self, key: &str) -> Result<u64, MethodError> {
        let v = self.take(key)?;
        v.parse()
            .map_err(|_| self.error(format!("{key}={v} is not a whole number")))
    }

    fn take_f64(&mut self, key: &str) -> Result<f64, MethodError> {
        let v = self.take(key)?;
        v.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| self.error(format!("{key}={v} is not a number")))
    }

    fn take_bool(&mut self, key: &str) -> Result<bool, MethodError> {
        match self.take(key)? {
            "true" => Ok(true),
            "false" => Ok(false),
            v => Err(self.error(format!("{key}={v} must be true or false"))),
        }
    }

    fn take_bits(&mut self) -> Result<u32, MethodError> {
        let bits = self.take_u64("bits")?;
        if ![2, 4, 8].contains(&bits) {
            return Err(self.error(format!("bits={bits} must be 2, 4 or 8")));
        }
        Ok(bits as u32)
    }

    /// A positive count of tokens or channels, at most what a sequence may hold.
    fn take_positive(&mut self, key: &str) -> Result<usize, MethodError> {
        let v = self.take(key)?;
        self.positive(key, v)
    }

    /// `key=v` as a positive count, at most what a sequence may hold.
    fn positive(&self, key: &str, v: &str) -> Result<usize, MethodError> {
        let n: u64 = v
            .parse()
            .map_err(|_| self.error(format!("{key}={v} is not a whole number")))?;
        match n {
            0 => Err(self.error(format!("{key} must be positive"))),
            n if n > MAX_STREAM_POSITIONS as u64 => Err(self.error(format!(
                "{key}={n} is more than any sequence holds (at most {MAX_STREAM_POSITIONS})"
            ))),
            n => Ok(n as usize),
        }
    }

    /// A compressor's target: exactly one of `rate=R` (the share of tokens kept, in (0, 1])
    /// or `tokens=N`.
    fn take_target(&mut self) -> Result<Target, MethodError> {
        match [self.take_optional("rate"), self.take_optional("tokens")] {
            [Some(r), None] => match r.parse::<f64>() {
                Ok(x) if x > 0.0 && x <= 1.0 => Ok(Target::Rate(x)),
                _ => Err(self.error(format!(
                    "rate={r} must be a number in (0, 1] (the share of the prompt's tokens kept; 0.25 for 4x)"
                ))),
            },
            [None, Some(n)] => Ok(Target::Tokens(self.positive("tokens", n)?)),
            [None, None] => Err(self.error(
                "missing required key \"rate\" (share of tokens kept) or \"tokens\" (tokens kept)"
                    .into(),
            )),
            _ => Err(self.error("give one of rate and tokens".into())),
        }
    }

    /// Exactly one of `ratio=R` (prompt tokens / kept tokens, at least 1), `fraction=F` (the
    /// share of the prompt kept, in (0, 1]) or `budget=N` tokens.
    fn take_budget(&mut self) -> Result<Budget, MethodError> {
        let given = [
            self.take_optional("ratio"),
            self.take_optional("fraction"),
            self.take_optional("budget"),
        ];
        match given {
            [Some(r), None, None] => match r.parse::<f64>() {
                Ok(x) if x >= 1.0 && x.is_finite() => Ok(Budget::Ratio(x)),
                _ => Err(self.error(format!(
                    "ratio={r} must be a number of at least 1 (ratio = prompt tokens / kept tokens)"
                ))),
            },
            [None, Some(f), None] => match f.parse::<f64>() {
                Ok(x) if x > 0.0 && x <= 1.0 => Ok(Budget::Fraction(x)),
                _ => Err(self.error(format!(
                    "fraction={f} must be a number in (0, 1] (the share of the prompt kept)"
                ))),
            },
            [None, None, Some(b)] => match b.parse::<usize>() {
                Ok(n) if n > 0 && n <= MAX_STREAM_POSITIONS => Ok(Budget::Tokens(n)),
                _ => Err(self.error(format!(
                    "budget={b} must be a whole number between 1 and {MAX_STREAM_POSITIONS}"
                ))),
            },
            [None, None, None] => Err(self.error(
                "missing required key \"ratio\" (prompt tokens / kept tokens), \"fraction\" (share kept) or \"budget\" (tokens)"
                    .into(),
            )),
            _ => Err(self.error("give one of ratio, fraction and budget".into())),
        }
    }

    /// What a quantized cache's attention reads during prefill.
    fn take_prefill(&mut self) -> Result<QuantizedPrefill, MethodError> {
        match self.take("prefill")? {
            "quantized" => Ok(QuantizedPrefill::Quantized),
            "full" => Ok(QuantizedPrefill::Full),
            v => Err(self.error(format!(
                "prefill={v} must be quantized (everything attended is quantized first: the benchmark's FlexGen, llama.cpp) or full (FlexLLMGen's full-precision prefill)"
            ))),
        }
    }

    /// A wrapper's method: the `press=` method, which `accepts` must take (else an error
    /// saying it `needs` such a policy), changed by `apply` (checked with the whole spec).
    fn wrap(
        &mut self,
        accepts: impl Fn(&DropSettings) -> bool,
        needs: &str,
        apply: impl FnOnce(DropSettings) -> DropSettings,
    ) -> Result<Method, MethodError> {
        let (press, inner) = self.take_press()?;
        match Method::parse(&inner)? {
            Method::Drop(d) if accepts(&d) => Ok(Method::Drop(apply(d))),
            other => Err(self.error(format!("press={press}: needs {needs}, not {other}"))),
        }
    }

    /// SnapKV-style observation window and odd pooling kernel.
    fn take_window_kernel(&mut self) -> Result<(usize, usize), MethodError> {
        let window = self.take_positive("window")?;
        let kernel = self.take_positive("kernel")?;
        if kernel % 2 == 0 {
            return Err(self.error(format!("kernel={kernel} must be odd")));
        }
        Ok((window, kernel))
    }

    fn finish(self) -> Result<(), MethodError> {
        match (self.pairs.first(), self.press) {
            (Some((k, _)), _) => Err(self.error(format!("unknown key \"{k}\""))),
            (None, Some(_)) => Err(self.error(
                "press= belongs to a wrapper (chunkkv, adakv, pyramid) and ends its keys".into(),
            )),
            (None, None) => Ok(()),
        }
    }
}

impl Method {
    /// Parse a spec or preset name, or two joined by `+` (dropping, then quantizing).
    pub fn parse(spec: &str) -> Result<Self, MethodError> {
        if let Some((drop, quantize)) = spec.split_once('+') {
            return Self::compose(spec, drop, quantize);
        }
        let preset = presets().into_iter().find(|p| p.name == spec);
        let expanded = preset.as_ref().map_or(spec, |p| p.spec.as_str());
        let (name, rest) = expanded.split_once(':').unwrap_or((expanded, ""));
        let mut s = Settings::parse(spec, rest)?;
        let method = match name {
            "baseline" => Method::Baseline,
            "flexgen" => Method::FlexGen(FlexGenSettings {
                bits: s.take_bits()?,
                group: s.take_positive("group")?,
                prefill: s.take_prefill()?,
            }),
            "kvquant" => {
                let mut format = |key: &str| -> Result<RowFormat, MethodError> {
                    let name = s.take(key)?;
                    RowFormat::parse(name).map_err(|e| s.error(format!("{key}={name}: {e}")))
                };
                let (keys, values) = (format("keys")?, format("values")?);
                Method::KvQuant(RowQuantSettings {
                    keys,
                    values,
                    rotate: s.take_bool("rotate")?,
                    prefill: s.take_prefill()?,
                })
            }
            "kivi" => {
                let (bits, group) = (s.take_bits()?, s.take_positive("group")?);
                let residual = s.take_positive("residual")?;
                if residual % group != 0 {
                    return Err(s.error(format!(
                        "residual={residual} must be a multiple of group={group}"
                    )));
                }
                Method::Kivi(KiviSettings {
                    bits,
                    group,
                    residual,
                })
            }
            "streamingllm" => {
                let budget = s.take_budget()?;
                let sinks = s.take("sinks")?;
                let sinks = if sinks.contains('.') {
                    match sinks.parse::<f64>() {
                        Ok(f) if (0.0..1.0).contains(&f) => Sinks::Fraction(f),
                        _ => {
                            return Err(s.error(format!(
                                "sinks={sinks} must be a fraction of the budget in [0, 1) or a whole count"
                            )))
                        }
                    }
                } else {
                    Sinks::Count(sinks.parse().map_err(|_| {
                        s.error(format!(
                            "sinks={sinks} must be a fraction of the budget in [0, 1) or a whole count"
                        ))
                    })?)
                };
                let reindex = s.take_bool("reindex")?;
                Method::Drop(DropSettings {
                    selection: Selection::PerHead,
                    schedule: Schedule::Uniform,
                    decoding: None,
                    policy: DropPolicy::StreamingLlm { sinks, reindex },
                    budget,
                })
            }
            "h2o" => {
                let budget = s.take_budget()?;
                let count_prefill = s.take_bool("count_prefill")?;
                let heads = match s.take("heads")? {
                    "query" => Heads::Query,
                    "kv" => Heads::KeyValue,
                    v => {
                        return Err(s.error(format!(
                            "heads={v} must be query (each query head chooses) or kv (each key/value head)"
                        )))
                    }
                };
                let settings = DropSettings {
                    selection: Selection::PerHead,
                    schedule: Schedule::Uniform,
                    decoding: None,
                    policy: DropPolicy::H2O {
                        count_prefill,
                        heads,
                    },
                    budget,
                };
                Method::Drop(settings)
            }
            "snapkv" | "pyramidkv" => {
                let budget = s.take_budget()?;
                let (window, kernel) = s.take_window_kernel()?;
                let pool = match s.take("pool")? {
                    "max" => Pool::Max,
                    "avg" => Pool::Average,
                    v => {
                        return Err(s.error(format!(
                            "pool={v} must be max (SnapKV's code) or avg (kvpress)"
                        )))
                    }
                };
                let schedule = match name {
                    "snapkv" => Schedule::Uniform,
                    _ => Schedule::Pyramid {
                        beta: s.take_positive("beta")?,
                    },
                };
                Method::Drop(DropSettings {
                    policy: DropPolicy::SnapKv {
                        window,
                        kernel,
                        pool,
                    },
                    budget,
                    selection: Selection::PerHead,
                    schedule,
                    decoding: None,
                })
            }
            "tova" => Method::Drop(DropSettings {
                selection: Selection::PerHead,
                schedule: Schedule::Uniform,
                decoding: None,
                policy: DropPolicy::Tova,
                budget: s.take_budget()?,
            }),
            "random" | "knorm" | "keydiff" => {
                let budget = s.take_budget()?;
                let scorer = match name {
                    "random" => KeyScorer::Random {
                        seed: s.take_u64("seed")?,
                    },
                    "knorm" => KeyScorer::Knorm,
                    _ => KeyScorer::KeyDiff,
                };
                Method::Drop(DropSettings {
                    selection: Selection::PerHead,
                    schedule: Schedule::Uniform,
                    decoding: None,
                    policy: DropPolicy::Keys(scorer),
                    budget,
                })
            }
            "expected-attention" => {
                let budget = s.take_budget()?;
                let expected = ExpectedAttention {
                    future: s.take_positive("future")?,
                    sinks: s.take_u64("sinks")? as usize,
                    covariance: s.take_bool("covariance")?,
                    vnorm: s.take_bool("vnorm")?,
                };
                Method::Drop(DropSettings {
                    selection: Selection::PerHead,
                    schedule: Schedule::Uniform,
                    decoding: None,
                    policy: DropPolicy::ExpectedAttention(expected),
                    budget,
                })
            }
            "kvzip" => Method::Drop(DropSettings {
                selection: Selection::PerHead,
                schedule: Schedule::Uniform,
                decoding: None,
                budget: s.take_budget()?,
                policy: DropPolicy::KvZip(KvZip {
                    sinks: s.take_u64("sinks")? as usize,
                    chunk: s.take_positive("chunk")?,
                }),
            }),
            "duo-attention" => Method::Drop(DropSettings {
                selection: Selection::PerHead,
                schedule: Schedule::Uniform,
                decoding: None,
                budget: s.take_budget()?,
                policy: DropPolicy::Duo(DuoAttention {
                    sinks: s.take_u64("sinks")? as usize,
                    recent: s.take_positive("recent")?,
                }),
            }),
            "decoding" => {
                let budget = DecodingBudget {
                    interval: s.take_positive("interval")?,
                    target: s.take_positive("target")?,
                };
                s.wrap(
                    |d| d.decoding.is_none(),
                    "a token-dropping policy without a decoding budget of its own (snapkv, random, knorm, keydiff, expected-attention)",
                    |d| DropSettings {
                        decoding: Some(budget),
                        ..d
                    },
                )?
            }
            "pyramid" => {
                let beta = s.take_positive("beta")?;
                s.wrap(
                    |d| d.selects_once() && d.schedule == Schedule::Uniform,
                    "a policy that chooses once, when the prompt ends, with no schedule of its own (snapkv, random, knorm, keydiff, expected-attention)",
                    |d| DropSettings {
                        schedule: Schedule::Pyramid { beta },
                        ..d
                    },
                )?
            }
            "chunkkv" | "adakv" => {
                let selection = if name == "chunkkv" {
                    Selection::Chunks(s.take_positive("chunk")?)
                } else {
                    let share = s.take_f64("safeguard")?;
                    if !(0.0..=1.0).contains(&share) {
                        return Err(s.error(format!(
                            "safeguard={share} must be in [0, 1] (the share of a head's budget it keeps whatever other heads score)"
                        )));
                    }
                    Selection::AdaKv(share)
                };
                s.wrap(
                    |d| d.selects_once() && d.selection == Selection::PerHead,
                    "a policy that chooses once, when the prompt ends (snapkv, pyramidkv, random, knorm, keydiff, expected-attention)",
                    |d| DropSettings { selection, ..d },
                )?
            }
            "infllm" => {
                let budget = s.take_budget()?;
                let settings = InfLlmSettings {
                    budget,
                    sinks: s.take_f64("sinks")?,
                    retrieved: s.take_f64("retrieved")?,
                    block: s.take_positive("block")?,
                    representatives: s.take_positive("representatives")?,
                    chunk: s.take_positive("chunk")?,
                    remainder: match s.take("remainder")? {
                        "chunk" => InfLlmRemainder::Chunk,
                        "query" => InfLlmRemainder::Query,
                        v => {
                            return Err(s.error(format!(
                                "remainder={v} must be chunk (the benchmark's) or query (exact)"
                            )))
                        }
                    },
                };
                settings.validate().map_err(|e| s.error(e.to_string()))?;
                Method::InfLlm(settings)
            }
            "quest" => {
                let settings = QuestSettings {
                    budget: s.take_budget()?,
                    page: s.take_positive("page")?,
                    dense_layers: s.take_u64("dense_layers")? as usize,
                };
                settings.validate().map_err(|e| s.error(e.to_string()))?;
                Method::Quest(settings)
            }
            "llmlingua" => {
                let target = s.take_target()?;
                let window = s.take_positive("window")?;
                let context_budget = s.take_u64("context_budget")? as usize;
                let split = match s.take("split")? {
                    "none" => Split::Whole,
                    "paragraphs" => Split::Paragraphs,
                    v => {
                        return Err(s.error(format!(
                            "split={v} must be none (the text as one context, the benchmark's) or paragraphs (blank-line parts for the coarse stage)"
                        )))
                    }
                };
                let question = match s.take("question")? {
                    "none" => false,
                    "condition" => true,
                    v => {
                        return Err(s.error(format!(
                            "question={v} must be none (LLMLingua) or condition (LongLLMLingua: the question ranks contexts and conditions the token scores)"
                        )))
                    }
                };
                let scorer = s.take("scorer")?;
                if scorer.is_empty() {
                    return Err(s.error(
                        "scorer= is empty: name a model (default, a name from `longctx models`, or a path)".into(),
                    ));
                }
                Method::Compressor(PromptCompressor::LlmLingua(LlmLingua {
                    settings: LlmLinguaSettings {
                        target,
                        window,
                        context_budget,
                    },
                    split,
                    scorer: scorer.to_string(),
                    question,
                }))
            }
            "llmlingua2" => {
                let target = s.take_target()?;
                let model = s.take("model")?;
                if model.is_empty() {
                    return Err(
                        s.error("model= is empty: give default or the classifier's folder".into())
                    );
                }
                Method::Compressor(PromptCompressor::LlmLingua2(LlmLingua2Spec {
                    target,
                    model: model.to_string(),
                }))
            }
            other => return Err(MethodError::Unknown(other.to_string())),
        };
        s.finish()?;
        // Every token-dropping spec, a wrapper's included, is checked whole here: a setting
        // no cache could run is refused before anything is planned or fetched.
        if let Method::Drop(d) = &method {
            d.validate().map_err(|e| MethodError::Setting {
                spec: spec.into(),
                reason: e.to_string(),
            })?;
        }
        Ok(method)
    }

    /// The preset this method is, by name (`snapkv-4x`), or the names of both sides of a
    /// composition (`snapkv-4x+q4_0`) where each is a preset: a short label for tables.
    pub fn preset_name(&self) -> Option<String> {
        if let Method::DropThenQuantize { drop, quantize } = self {
            let drop = Method::Drop(*drop).preset_name()?;
            return Some(format!("{drop}+{}", quantize.preset_name()?));
        }
        presets()
            .into_iter()
            .find(|p| Method::parse(&p.name).ok().as_ref() == Some(self))
            .map(|p| p.name)
    }

    /// `drop+quantize`: a dropping policy that chooses once, then a per-token quantizer of
    /// what it keeps.
    fn compose(spec: &str, drop: &str, quantize: &str) -> Result<Self, MethodError> {
        let error = |reason: String| MethodError::Setting {
            spec: spec.into(),
            reason,
        };
        let drop = match Method::parse(drop)? {
            Method::Drop(d) if d.selects_once() && d.decoding.is_none() => d,
            other => {
                return Err(error(format!(
                    "{other} cannot come first: give a token-dropping method that chooses once, when the prompt ends (snapkv, pyramidkv, random, knorm, keydiff, expected-attention, kvzip, duo-attention)"
                )))
            }
        };
        let quantize = Method::parse(quantize)?;
        if quantize.row_settings().is_none() && !matches!(quantize, Method::Kivi(_)) {
            return Err(error(format!(
                "{quantize} cannot quantize what is kept: give a quantizer (a kvquant preset such as q4_0, flexgen or kivi)"
            )));
        }
        Ok(Method::DropThenQuantize {
            drop,
            quantize: Box::new(quantize),
        })
    }

    /// The per-token row settings of a `kvquant` or `flexgen` method.
    fn row_settings(&self) -> Option<RowQuantSettings> {
        match self {
            Method::FlexGen(s) => Some(s.rows()),
            Method::KvQuant(s) => Some(*s),
            _ => None,
        }
    }

    /// Prefills' worth of work a cache adds to each prompt's: KVzip's replay, measured at
    /// 3.6 (`longctx bench --contexts 2048 --decode-tokens 4 --threads 2`: prefill 144
    /// tokens/s under kvzip-4x against 664 under snapkv-4x); none for every other method.
    pub fn extra_prefills(&self) -> f64 {
        let replays = |d: &DropSettings| matches!(d.policy, DropPolicy::KvZip(_));
        match self {
            Method::Drop(d) | Method::DropThenQuantize { drop: d, .. } if replays(d) => 3.6,
            _ => 0.0,
        }
    }

    /// The method family's name (the part of the spec before `:`).
    pub fn family(&self) -> &'static str {
        match self {
            Method::Baseline => "baseline",
            Method::FlexGen(_) => "flexgen",
            Method::Kivi(_) => "kivi",
            Method::KvQuant(_) => "kvquant",
            Method::DropThenQuantize { .. } => "drop+quantize",
            Method::Drop(d) => match (d.selection, d.schedule, d.policy) {
                (Selection::Chunks(_), ..) => "chunkkv",
                (Selection::AdaKv(_), ..) => "adakv",
                _ if d.decoding.is_some() => "decoding",
                (_, Schedule::Pyramid { .. }, DropPolicy::SnapKv { .. }) => "pyramidkv",
                (_, Schedule::Pyramid { .. }, _) => "pyramid",
                (_, _, DropPolicy::StreamingLlm { .. }) => "streamingllm",
                (_, _, DropPolicy::H2O { .. }) => "h2o",
                (_, _, DropPolicy::SnapKv { .. }) => "snapkv",
                (_, _, DropPolicy::Tova) => "tova",
                (_, _, DropPolicy::Keys(scorer)) => scorer.name(),
                (_, _, DropPolicy::ExpectedAttention(_)) => "expected-attention",
                (_, _, DropPolicy::KvZip(_)) => "kvzip",
                (_, _, DropPolicy::Duo(_)) => "duo-attention",
            },
            Method::InfLlm(_) => "infllm",
            Method::Quest(_) => "quest",
            Method::Compressor(PromptCompressor::LlmLingua(_)) => "llmlingua",
            Method::Compressor(PromptCompressor::LlmLingua2(_)) => "llmlingua2",
        }
    }

    /// The prompt compressor, for a method that is one.
    pub fn compressor(&self) -> Option<&PromptCompressor> {
        match self {
            Method::Compressor(c) => Some(c),
            _ => None,
        }
    }

    /// The method's school, as the paper groups methods.
    pub fn school(&self) -> &'static str {
        match self {
            Method::Baseline => "none",
            Method::FlexGen(_) | Method::Kivi(_) | Method::KvQuant(_) => "KV quantization",
            Method::DropThenQuantize { .. } => "dropping + quantization",
            Method::Drop(_) | Method::InfLlm(_) => "token dropping",
            Method::Quest(_) => "sparse reads",
            Method::Compressor(_) => "prompt compression",
        }
    }

    /// Whether the prompt is attended and stored uncompressed before the method compresses
    /// (the property the paper found matters most).
    pub fn compresses_after_prefill(&self) -> bool {
        match self {
            Method::Baseline | Method::Kivi(_) | Method::Quest(_) => true,
            Method::FlexGen(_) | Method::KvQuant(_) => {
                self.row_settings().map(|s| s.prefill) == Some(QuantizedPrefill::Full)
            }
            Method::DropThenQuantize { .. } => true,
            Method::InfLlm(_) | Method::Compressor(_) => false,
            Method::Drop(d) => d.prefills_in_full(),
        }
    }

    /// The compression ratio the settings promise against a 16-bit cache: the token ratio
    /// for dropping methods, the long-sequence byte ratio for quantization; `None` for a
    /// fixed token budget (its ratio depends on the prompt).
    pub fn nominal_ratio(&self) -> Option<f64> {
        let budget = match self {
            // Quest holds every token: its budget is what a query reads.
            Method::Baseline | Method::Quest(_) => return Some(1.0),
            Method::FlexGen(s) => return Some(s.nominal_ratio()),
            Method::Kivi(s) => return Some(s.nominal_ratio()),
            Method::KvQuant(s) => return Some(s.nominal_ratio()),
            Method::DropThenQuantize { drop, quantize } => {
                let quantized = quantize.nominal_ratio()?;
                return drop.budget.fraction().map(|f| quantized / f);
            }
            Method::Drop(d) => d.budget,
            Method::InfLlm(s) => s.budget,
            Method::Compressor(c) => return c.rate().map(|r| 1.0 / r),
        };
        budget.fraction().map(|f| 1.0 / f)
    }

    /// DuoAttention's settings, for a method whose cache needs the model's head pattern
    /// (calibrated with these sinks and window before [`Method::build_cache`]).
    pub fn head_pattern_settings(&self) -> Option<DuoAttention> {
        match self {
            Method::Drop(d) | Method::DropThenQuantize { drop: d, .. } => match d.policy {
                DropPolicy::Duo(duo) => Some(duo),
                _ => None,
            },
            _ => None,
        }
    }

    /// Build the method's cache for a model (settings that depend on the model, such as a
    /// group dividing the head dimension, are checked here); `heads` is the model's head
    /// pattern where [`Method::head_pattern_settings`] asks for one.
    pub fn build_cache(
        &self,
        shape: KvShape,
        rope: Arc<RopeTable>,
        numerics: CacheNumerics,
        heads: Option<&HeadPattern>,
    ) -> Result<Box<dyn KvCache>, KvError> {
        let dropping = |drop: DropSettings, rope: Arc<RopeTable>| {
            let cache = DroppingCache::new(shape, rope, &Device::Cpu, drop, numerics.precision)?;
            match (self.head_pattern_settings(), heads) {
                (None, _) => Ok(cache),
                (Some(_), Some(pattern)) => cache.with_head_pattern(pattern),
                (Some(_), None) => Err(KvError::Invalid(format!(
                    "{self} needs the model's head pattern (calibrated by `longctx calibrate-duo`, or at the start of a run)"
                ))),
            }
        };
        let (cpu, precision) = (&Device::Cpu, numerics.precision);
        Ok(match self {
            // A compressed prompt is read with the full cache.
            Method::Baseline | Method::Compressor(_) => {
                Box::new(FullCache::new(shape, rope, cpu, precision))
            }
            Method::FlexGen(s) => Box::new(RowQuantCache::new(shape, rope, cpu, s.rows())?),
            Method::KvQuant(s) => Box::new(RowQuantCache::new(shape, rope, cpu, *s)?),
            Method::DropThenQuantize { drop, quantize } => {
                let store = quantize.build_cache(shape, rope.clone(), numerics, None)?;
                Box::new(DropThenQuantize::new(dropping(*drop, rope)?, store)?)
            }
            Method::Kivi(s) => {
                Box::new(KiviCache::new(shape, rope, cpu, *s, numerics.activations)?)
            }
            Method::Drop(s) => Box::new(dropping(*s, rope)?),
            Method::InfLlm(s) => Box::new(InfLlmCache::new(shape, rope, cpu, *s)?),
            Method::Quest(s) => Box::new(QuestCache::new(shape, rope, cpu, *s, precision)?),
        })
    }
}

/// Display adapter for a budget's spec form.
struct BudgetSpec<'a>(&'a Budget);

impl fmt::Display for BudgetSpec<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Budget::Ratio(r) => write!(f, "ratio={r}"),
            Budget::Fraction(x) => write!(f, "fraction={x}"),
            Budget::Tokens(n) => write!(f, "budget={n}"),
        }
    }
}

/// The full spec, every setting spelled out: parsing it gives the same method back.
impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Baseline => write!(f, "baseline"),
            Method::FlexGen(s) => write!(
                f,
                "flexgen:bits={},group={},prefill={}",
                s.bits,
                s.group,
                s.prefill.name()
            ),
            Method::KvQuant(s) => {
                let name = |f: RowFormat| f.name().unwrap_or_else(|| format!("{f:?}"));
                write!(
                    f,
                    "kvquant:keys={},values={},rotate={},prefill={}",
                    name(s.keys),
                    name(s.values),
                    s.rotate,
                    s.prefill.name()
                )
            }
            Method::DropThenQuantize { drop, quantize } => {
                write!(f, "{}+{quantize}", Method::Drop(*drop))
            }
            Method::Kivi(s) => write!(
                f,
                "kivi:bits={},group={},residual={}",
                s.bits, s.group, s.residual
            ),
            Method::Drop(d) if d.selection != Selection::PerHead => {
                let setting = match d.selection {
                    Selection::Chunks(chunk) => format!("chunk={chunk}"),
                    Selection::AdaKv(share) => format!("safeguard={share:?}"),
                    Selection::PerHead => unreachable!("matched above"),
                };
                let each = Method::Drop(DropSettings {
                    selection: Selection::PerHead,
                    ..*d
                })
                .to_string();
                let (press, rest) = each.split_once(':').unwrap_or((&each, ""));
                write!(f, "{}:{setting},press={press},{rest}", self.family())
            }
            Method::Drop(
                d @ DropSettings {
                    decoding: Some(budget),
                    ..
                },
            ) => {
                let each = Method::Drop(DropSettings {
                    decoding: None,
                    ..*d
                })
                .to_string();
                let (press, rest) = each.split_once(':').unwrap_or((&each, ""));
                write!(
                    f,
                    "decoding:interval={},target={},press={press},{rest}",
                    budget.interval, budget.target
                )
            }
            // PyramidKV over any policy but SnapKV, whose pyramid is `pyramidkv`.
            Method::Drop(
                d @ DropSettings {
                    schedule: Schedule::Pyramid { beta },
                    ..
                },
            ) if !matches!(d.policy, DropPolicy::SnapKv { .. }) => {
                let each = Method::Drop(DropSettings {
                    schedule: Schedule::Uniform,
                    ..*d
                })
                .to_string();
                let (press, rest) = each.split_once(':').unwrap_or((&each, ""));
                write!(f, "pyramid:beta={beta},press={press},{rest}")
            }
            Method::Drop(d) => {
                write!(f, "{}:{}", self.family(), BudgetSpec(&d.budget))?;
                match d.policy {
                    DropPolicy::StreamingLlm { sinks, reindex } => {
                        match sinks {
                            Sinks::Fraction(x) => write!(f, ",sinks={x:?}")?,
                            Sinks::Count(n) => write!(f, ",sinks={n}")?,
                        }
                        write!(f, ",reindex={reindex}")
                    }
                    DropPolicy::H2O {
                        count_prefill,
                        heads,
                    } => {
                        let heads = match heads {
                            Heads::Query => "query",
                            Heads::KeyValue => "kv",
                        };
                        write!(f, ",count_prefill={count_prefill},heads={heads}")
                    }
                    DropPolicy::SnapKv {
                        window,
                        kernel,
                        pool,
                    } => {
                        write!(f, ",window={window},kernel={kernel},pool={}", pool_name(pool))?;
                        match d.schedule {
                            Schedule::Pyramid { beta } => write!(f, ",beta={beta}"),
                            Schedule::Uniform => Ok(()),
                        }
                    }
                    DropPolicy::Tova
                    | DropPolicy::Keys(KeyScorer::Knorm | KeyScorer::KeyDiff) => Ok(()),
                    DropPolicy::Keys(KeyScorer::Random { seed }) => write!(f, ",seed={seed}"),
                    DropPolicy::ExpectedAttention(e) => write!(
                        f,
                        ",future={},sinks={},covariance={},vnorm={}",
                        e.future, e.sinks, e.covariance, e.vnorm
                    ),
                    DropPolicy::KvZip(z) => write!(f, ",sinks={},chunk={}", z.sinks, z.chunk),
                    DropPolicy::Duo(duo) => write!(f, ",sinks={},recent={}", duo.sinks, duo.recent),
                }
            }
            Method::Quest(s) => write!(
                f,
                "quest:{},page={},dense_layers={}",
                BudgetSpec(&s.budget),
                s.page,
                s.dense_layers
            ),
            Method::InfLlm(s) => write!(
                f,
                "infllm:{},sinks={:?},retrieved={:?},block={},representatives={},chunk={},remainder={}",
                BudgetSpec(&s.budget),
                s.sinks,
                s.retrieved,
                s.block,
                s.representatives,
                s.chunk,
                match s.remainder {
                    InfLlmRemainder::Chunk => "chunk",
                    InfLlmRemainder::Query => "query",
                }
            ),
            Method::Compressor(c) => {
                write!(f, "{}:", self.family())?;
                match c.target() {
                    Target::Rate(r) => write!(f, "rate={r:?}")?,
                    Target::Tokens(n) => write!(f, "tokens={n}")?,
                }
                match c {
                    PromptCompressor::LlmLingua(c) => write!(
                        f,
                        ",window={},context_budget={},split={},question={},scorer={}",
                        c.settings.window,
                        c.settings.context_budget,
                        c.split.name(),
                        if c.question { "condition" } else { "none" },
                        c.scorer
                    ),
                    PromptCompressor::LlmLingua2(c) => write!(f, ",model={}", c.model),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_prints_back_to_itself() {
        for p in presets() {
            let m = Method::parse(&p.name).unwrap();
            assert_eq!(Method::parse(&p.spec).unwrap(), m, "{}", p.name);
            assert_eq!(Method::parse(&m.to_string()).unwrap(), m, "{}", p.name);
        }
        assert_eq!(presets().len(), 5 + KV_TYPES.len() + 4 + 16 * 4 + 4 * 4);
        assert_eq!(
            Method::parse("flexgen:group=64,bits=8,prefill=full").unwrap(),
            Method::FlexGen(FlexGenSettings {
                bits: 8,
                group: 64,
                prefill: QuantizedPrefill::Full
            })
        );
        // The paper's presets are the benchmark's code, the originals are second presets.
        let spec = |p: &str| Method::parse(p).unwrap().to_string();
        assert_eq!(
            spec("h2o-4x"),
            "h2o:ratio=4,count_prefill=false,heads=query"
        );
        assert_eq!(
            spec("h2o-original-4x"),
            "h2o:ratio=4,count_prefill=true,heads=kv"
        );
        assert!(spec("flexgen-4bit").ends_with("prefill=quantized"));
        assert!(spec("infllm-4x").ends_with("chunk=512,remainder=chunk"));
        assert!(spec("pyramidkv-4x").contains("window=8,"));
        assert_eq!(spec("random-4x"), "random:ratio=4,seed=0");
        assert_eq!(spec("knorm-2x"), "knorm:ratio=2");
        assert_eq!(spec("keydiff-6x"), "keydiff:ratio=6");
        assert_eq!(
            Method::parse("random:budget=64,seed=9")
                .unwrap()
                .to_string(),
            "random:budget=64,seed=9"
        );
        assert!(presets().iter().all(|p| !p.note.is_empty()));
        assert!(
            (Method::parse("flexgen-4bit")
                .unwrap()
                .nominal_ratio()
                .unwrap()
                - 3.2)
                .abs()
                < 1e-12
        );
        // The benchmark's 6x budgets are fractions of the input, as its configs give them.
        assert_eq!(
            spec("h2o-6x"),
            "h2o:fraction=0.166,count_prefill=false,heads=query"
        );
        assert!(spec("streamingllm-6x").starts_with("streamingllm:fraction=0.17,"));
        assert!(spec("infllm-6x").starts_with("infllm:fraction=0.17,"));
        assert!(spec("snapkv-6x").starts_with("snapkv:ratio=6,"));
        let ratio = |p: &str| Method::parse(p).unwrap().nominal_ratio().unwrap();
        assert!((ratio("h2o-6x") - 1.0 / 0.166).abs() < 1e-12);
        assert_eq!(ratio("snapkv-6x"), 6.0);
        // The benchmark's rate: 1/K as Python's float(1/cp_rate).
        assert_eq!(
            spec("llmlingua-6x"),
            "llmlingua:rate=0.16666666666666666,window=200,context_budget=100,split=none,question=none,scorer=default"
        );
        assert_eq!(ratio("llmlingua-4x"), 4.0);
        assert_eq!(
            Method::parse("llmlingua:tokens=300,window=100,context_budget=0,split=paragraphs,question=condition,scorer=gemma-3-270m")
                .unwrap()
                .to_string(),
            "llmlingua:tokens=300,window=100,context_budget=0,split=paragraphs,question=condition,scorer=gemma-3-270m"
        );
        assert_eq!(
            Method::parse("tova:budget=512").unwrap().nominal_ratio(),
            None
        );
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let err = |s: &str| Method::parse(s).unwrap_err().to_string();
        assert!(err("snapkv-5x").contains("unknown method \"snapkv-5x\""));
        assert!(err("flexgen:bits=4").contains("missing required key \"group\""));
        assert!(err("flexgen:bits=4,group=32").contains("missing required key \"prefill\""));
        assert!(err("flexgen:bits=4,group=32,prefill=half").contains("prefill=half must be"));
        assert!(
            err("flexgen:bits=4,group=32,prefill=full,ratio=2").contains("unknown key \"ratio\"")
        );
        assert!(err("flexgen:bits=3,group=32").contains("bits=3 must be 2, 4 or 8"));
        assert!(err("flexgen:bits=four,group=32").contains("bits=four is not a whole number"));
        assert!(err("flexgen:bits=4,bits=4,group=32").contains("given twice"));
        assert!(err("flexgen:bits").contains("not key=value"));
        assert!(err("baseline:bits=4").contains("unknown key \"bits\""));
        assert!(err("kivi:bits=2,group=32,residual=100")
            .contains("residual=100 must be a multiple of group=32"));
        assert!(err("h2o:ratio=0.5,count_prefill=true,heads=kv")
            .contains("ratio=0.5 must be a number of at least 1"));
        assert!(err("h2o:count_prefill=true,heads=kv").contains("missing required key \"ratio\""));
        assert!(
            err("h2o:fraction=1.5,count_prefill=true,heads=kv").contains("fraction=1.5 must be")
        );
        assert!(err("h2o:ratio=4,budget=9,count_prefill=true,heads=kv")
            .contains("give one of ratio, fraction and budget"));
        assert!(err("h2o:ratio=4,count_prefill=yes,heads=kv").contains("must be true or false"));
        assert!(err("h2o:ratio=4,count_prefill=false,heads=all").contains("heads=all must be"));
        assert!(err("h2o:ratio=4,count_prefill=true,heads=query").contains("needs heads=kv"));
        // The fault the digest records: a missing ratio must never mean "keep everything".
        assert!(err("streamingllm:sinks=4,reindex=true").contains("missing required key \"ratio\""));
        assert!(err("streamingllm:ratio=4,sinks=1.5,reindex=true").contains("sinks=1.5"));
        assert!(err("snapkv:ratio=4,window=32,kernel=6").contains("kernel=6 must be odd"));
        assert!(err(
            "infllm:ratio=4,sinks=0.5,retrieved=0.6,block=128,representatives=4,chunk=512,remainder=chunk"
        )
        .contains("summing below 1"));
        assert!(err(
            "infllm:ratio=4,sinks=0.02,retrieved=0.3,block=128,representatives=4,chunk=512,remainder=all"
        )
        .contains("remainder=all must be chunk"));
        let lingua = |rest: &str| {
            err(&format!(
                "llmlingua:{rest},window=200,context_budget=100,split=none,question=none,scorer=default"
            ))
        };
        assert!(lingua("rate=0").contains("rate=0 must be a number in (0, 1]"));
        assert!(lingua("rate=1.5").contains("rate=1.5 must be a number in (0, 1]"));
        assert!(lingua("rate=0.5,tokens=9").contains("give one of rate and tokens"));
        assert!(lingua("tokens=0").contains("tokens must be positive"));
        assert!(
            err("llmlingua:rate=0.5,window=200,context_budget=100,split=none,question=none")
                .contains("missing required key \"scorer\"")
        );
        assert!(err(
            "llmlingua:rate=0.5,window=200,context_budget=100,split=lines,question=none,scorer=default"
        )
        .contains("split=lines must be none"));
        assert!(err(
            "llmlingua:rate=0.5,window=200,context_budget=100,split=none,question=yes,scorer=default"
        )
        .contains("question=yes must be none"));
        let format = err("kvquant:keys=q5_0,values=q4_0,rotate=true,prefill=quantized");
        assert!(format.contains("keys=q5_0") && format.contains("use one of q8_0, q4_0"));
        assert!(err("kvquant:keys=q4_0,values=q4_0,rotate=true").contains("\"prefill\""));
        assert!(err("h2o-4x+q4_0").contains("cannot come first"));
        assert!(err("snapkv-4x+h2o-4x").contains("cannot quantize what is kept"));
        assert!(err("snapkv-4x+q9").contains("unknown method \"q9\""));
    }

    /// A wrapper's `press=` ends its keys, so wrappers nest in either order and print back
    /// one canonical spec; PyramidKV is SnapKV under the pyramid schedule.
    #[test]
    fn schedules_and_selections_wrap_any_policy_that_chooses_once() {
        let parse = |s: &str| Method::parse(s).unwrap();
        assert_eq!(
            parse("pyramid:beta=20,press=snapkv,ratio=4,window=8,kernel=7,pool=max"),
            parse("pyramidkv-4x")
        );
        assert_eq!(
            parse("pyramidkv-4x").to_string(),
            "pyramidkv:ratio=4,window=8,kernel=7,pool=max,beta=20"
        );
        let knorm = parse("pyramid:beta=10,press=knorm,ratio=4");
        assert_eq!(knorm.to_string(), "pyramid:beta=10,press=knorm,ratio=4");
        assert_eq!(knorm.family(), "pyramid");
        let nested = parse("chunkkv:chunk=20,press=pyramid,beta=10,press=knorm,ratio=4");
        assert_eq!(
            nested,
            parse("pyramid:beta=10,press=chunkkv,chunk=20,press=knorm,ratio=4")
        );
        assert_eq!(parse(&nested.to_string()), nested);
        assert_eq!(
            nested.to_string(),
            "chunkkv:chunk=20,press=pyramid,beta=10,press=knorm,ratio=4"
        );
        let err = |s: &str| Method::parse(s).unwrap_err().to_string();
        assert!(err("pyramid:beta=10,press=h2o-4x").contains("chooses once"));
        assert!(err("pyramid:beta=0,press=knorm,ratio=4").contains("beta"));
        assert!(err("pyramid:beta=10,press=kvzip-4x").contains("no per-layer schedule"));
        // DuoAttention's pattern decides per head: no schedule or selection over it, and its
        // ratio is a share of heads.
        let duo = parse("duo-attention-4x");
        assert_eq!(duo.to_string(), "duo-attention:ratio=4,sinks=64,recent=256");
        assert_eq!(
            duo.head_pattern_settings(),
            Some(DuoAttention {
                sinks: 64,
                recent: 256
            })
        );
        assert_eq!(
            parse("duo-attention-4x+kivi-4bit").head_pattern_settings(),
            duo.head_pattern_settings()
        );
        assert_eq!(parse("snapkv-4x").head_pattern_settings(), None);
        assert!(err("pyramid:beta=10,press=duo-attention-4x").contains("head pattern"));
        assert!(err("chunkkv:chunk=20,press=duo-attention-4x").contains("head pattern"));
        assert!(err("duo-attention:budget=64,sinks=4,recent=8").contains("share of streaming"));
        assert!(err("duo-attention:ratio=4,sinks=4,recent=0").contains("recent"));
        assert!(
            err("decoding:interval=16,target=128,press=duo-attention-4x")
                .contains("scores what decoding adds")
        );
        assert!(err("adakv:safeguard=0.2,press=kvzip-4x").contains("at once"));
        assert!(err("knorm:ratio=4,press=snapkv").contains("ends its keys"));
        assert!(err("pyramid:beta=10").contains("missing required key \"press\""));
        // A budget while decoding wraps SnapKV and the key scorers, under the others.
        let decoding = parse("decoding:interval=16,target=128,press=knorm-4x");
        assert_eq!(
            decoding.to_string(),
            "decoding:interval=16,target=128,press=knorm,ratio=4"
        );
        assert_eq!(decoding.family(), "decoding");
        let stacked =
            parse("chunkkv:chunk=20,press=decoding,interval=16,target=128,press=snapkv-4x");
        assert_eq!(parse(&stacked.to_string()), stacked);
        assert_eq!(
            stacked,
            parse("decoding:interval=16,target=128,press=chunkkv,chunk=20,press=snapkv-4x")
        );
        assert!(err("decoding:interval=16,target=128,press=kvzip-4x")
            .contains("scores what decoding adds"));
        assert_eq!(
            parse("decoding:interval=16,target=128,press=expected-attention-4x").family(),
            "decoding"
        );
        assert!(err("decoding:interval=0,target=128,press=knorm-4x").contains("interval"));
        assert!(err("decoding:interval=16,target=128,press=knorm-4x+q4_0")
            .contains("cannot come first"));
    }

    /// `DROP+QUANT` parses each side (presets included), prints back its full spec, and
    /// multiplies the ratios.
    #[test]
    fn dropping_then_quantizing_composes_two_specs() {
        let m = Method::parse("snapkv-4x+q4_0").unwrap();
        assert_eq!(
            m.to_string(),
            "snapkv:ratio=4,window=32,kernel=7,pool=max+kvquant:keys=q4_0,values=q4_0,rotate=true,prefill=quantized"
        );
        assert_eq!(Method::parse(&m.to_string()).unwrap(), m);
        assert!((m.nominal_ratio().unwrap() - 4.0 * 64.0 / 18.0).abs() < 1e-9);
        assert_eq!(m.school(), "dropping + quantization");
        assert!(m.compresses_after_prefill());
        let fg = Method::parse("knorm:ratio=2+flexgen-4bit").unwrap();
        assert!((fg.nominal_ratio().unwrap() - 6.4).abs() < 1e-9);
    }
}
