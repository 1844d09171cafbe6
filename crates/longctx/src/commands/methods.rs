use anyhow::Result;

use crate::methods::{presets, Method};

/// `longctx methods`: every preset with its school, nominal ratio and full spec.
pub fn run() -> Result<()> {
    println!("| preset | school | compresses | nominal ratio | paper ratio | spec | relation to the benchmark's code and the original |");
    println!("|---|---|---|--:|--:|---|---|");
    for p in presets() {
        let method = Method::parse(&p.name)?;
        println!(
            "| {} | {} | {} | {} | {} | `{}` | {} |",
            p.name,
            method.school(),
            match (method.compressor(), method.compresses_after_prefill()) {
                (Some(_), _) => "the prompt, before prefill",
                (None, true) => "after prefill",
                (None, false) => "during prefill",
            },
            method
                .nominal_ratio()
                .map_or("per input".into(), |r| format!("{r:.2}x")),
            p.paper_ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            method,
            p.note
        );
    }
    println!(
        "
Specs take explicit settings too; every key is required and checked:
  kivi:bits=2|4|8,group=G,residual=R          G divides the head dimension, R a multiple of G
  flexgen:bits=2|4|8,group=G,prefill=quantized|full
                                              quantized: everything attended is quantized first
                                              (the benchmark's); full: FlexLLMGen's full-precision prefill
  kvquant:keys=T,values=T,rotate=B,prefill=quantized|full
                                              T: q8_0, q4_0, q4_1, iq4_nl (llama.cpp's types) or
                                              int2, int3, int4, int8 (min-max codes, groups of 32);
                                              rotate: Walsh-Hadamard blocks before quantizing, as
                                              llama.cpp (head dimension a multiple of 64)
  chunkkv:chunk=N,press=P,<P's keys>          P (snapkv, pyramidkv, random, knorm, keydiff,
                                              expected-attention) keeps whole chunks of N tokens,
                                              the same for every head
  adakv:safeguard=A,press=P,<P's keys>        P's scores over all heads of a layer, each head's best
                                              share A of the budget safeguarded: heads keep
                                              different counts
  pyramid:beta=B,press=P,<P's keys>           PyramidKV's layer budgets (KVCache-Factory's integer
                                              steps, the last layer keeping 1/B of the budget outside
                                              P's window) over P's scores; pyramidkv is SnapKV's.
                                              press= ends a wrapper's keys: wrappers nest, e.g.
                                              chunkkv:chunk=20,press=pyramid,beta=20,press=knorm,ratio=4
  decoding:interval=N,target=T,press=P,<P's keys>
                                              kvpress's DecodingPress: every N decoding steps each
                                              head keeps the T tokens P scores highest over all it
                                              holds (P: snapkv, pyramidkv, random, knorm, keydiff,
                                              expected-attention)
  DROP+QUANT                                  dropping, then quantizing what is kept: DROP chooses
                                              once when the prompt ends (snapkv, pyramidkv, random,
                                              knorm, keydiff, expected-attention, kvzip, duo-attention),
                                              QUANT is a
                                              kvquant, flexgen or kivi method, e.g. snapkv-4x+q4_0,
                                              snapkv-4x+kivi-4bit
  streamingllm:ratio=X,sinks=F|N,reindex=B    sinks: a fraction of the budget (0.021) or a count (4);
                                              reindex: sinks at a fixed distance from every query
  h2o:ratio=X,count_prefill=B,heads=query|kv B=true: prefill attention counts (the original H2O);
                                              heads: who chooses, each query head (the benchmark's)
                                              or each key/value head for its group
  snapkv:ratio=X,window=W,kernel=K            K odd (max-pooling width)
  pyramidkv:ratio=X,window=W,kernel=K,beta=BETA
  tova:ratio=X
  kvzip:ratio=X,sinks=N,chunk=N               chunk: prompt tokens the model repeats per replay
                                              pass; the ratio holds over all layers and heads
                                              together (each keeps its own count)
  expected-attention:ratio=X,future=N,sinks=N,covariance=B,vnorm=B
                                              N future positions whose RoPE rotations are averaged;
                                              sinks: leading tokens always kept and left out of the
                                              query statistics; covariance, vnorm: kvpress's
                                              use_covariance and use_vnorm
  duo-attention:ratio=X,sinks=N,recent=N     1 - 1/X of the key/value heads (the lowest scores of
                                              the model's calibrated head pattern) keep N sinks and
                                              the last N prompt tokens, the others everything;
                                              `longctx calibrate-duo` prints the pattern
  infllm:ratio=X,sinks=F,retrieved=F,block=N,representatives=N,chunk=N,remainder=chunk|query
                                              chunk: queries per retrieval, and the smallest window;
                                              remainder: which queries of a chunk read the tokens
                                              waiting for a block (chunk: all, as the benchmark's
                                              code; query: those outside their own window)
  quest:ratio=X,page=N,dense_layers=N         X: prompt tokens / tokens a decoding query reads
                                              (nothing is dropped); N tokens per page; the first
                                              dense_layers layers read everything
  llmlingua:rate=R|tokens=N,window=W,context_budget=B,split=none|paragraphs,question=none|condition,scorer=MODEL
                                              R in (0, 1]: share of the prompt's tokens kept; W: tokens
                                              per window of the token-level stage (200); B: tokens
                                              added to the target for the context-level stage (100);
                                              split: the text as one context (the benchmark's) or its
                                              paragraphs for the context-level stage to rank;
                                              question=condition: LongLLMLingua (the question ranks
                                              the paragraphs and conditions token scores; the
                                              question part of the prompt is kept); MODEL:
                                              the scorer (default, a name from `longctx models`, or a
                                              path) on this engine
  llmlingua2:rate=R|tokens=N,model=FOLDER|default
                                              LLMLingua-2 as the benchmark ran it; R: share of the
                                              prompt's GPT-3.5 tokens kept; FOLDER: the classifier
                                              (default: the cache's, prepared by
                                              scripts/llmlingua2_prepare.py)
Token-dropping methods take ratio=X (prompt tokens / kept tokens, X >= 1) or budget=N (tokens).
Nominal ratios: token ratio for dropping; long-sequence bytes vs 16-bit for quantization. The
measured ratio (bench, run) is uncompressed bytes of every token seen / bytes held, where
uncompressed means the format the method compresses from: 16-bit for quantizers, the
engine's f32 for the baseline and token dropping."
    );
    Ok(())
}
