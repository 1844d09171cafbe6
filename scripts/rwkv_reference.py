#!/usr/bin/env python3
"""Tiny random-weight RWKV-6 ("Finch") and RWKV-7 ("Goose") GGUF files and llama.cpp's
logits for them, for longctx's tests. transformers has no RWKV-6/7, so the independent
reference is llama.cpp's own graph (src/models/rwkv6*.cpp, rwkv7*.cpp), run on one thread
by scripts/llamacpp_logits.c.

Run by hand (not in CI), with numpy, after scripts/llamacpp.sh has built llama.cpp's library and
llama-tokenize (`source scripts/llamacpp.sh; llamacpp_tool llama-tokenize 2`):

    python3 scripts/rwkv_reference.py --arch rwkv6 --out crates/longctx/tests/fixtures/tiny_rwkv6
    python3 scripts/rwkv_reference.py --arch rwkv7 --out crates/longctx/tests/fixtures/tiny_rwkv7

It writes OUT/<folder name>.gguf (f32 weights, the layout llama.cpp's converter writes, and an RWKV
"world"-style vocabulary: `<s>`, the 256 bytes and some words, escaped as the converter
escapes them) and reference_logits.json: a fixed prompt's ids, every position's logits from
one batch (prefill), and the logits of 24 ids in one batch followed by one id per batch
(decoding), and llama-tokenize's ids for a text. It also writes OUT/<folder name>-q8_0.gguf,
the same model with every matrix whose rows split into 32-value blocks in Q8_0, and
reference_logits-q8_0.json: llama.cpp's logits for the values those blocks hold (computed on
an f32 file of the dequantized matrices, since llama.cpp's Q8_0 kernels also round the
activations to 8 bits). The GGUF is written with the gguf package llama.cpp vendors, so that both read
the same layout. Heads are 64 wide, as in the released models: llama.cpp's AVX-512 WKV-7
kernel reads 64 values per step and gives wrong results for narrower heads.
"""
import argparse
import json
import os

import numpy as np
import llamacpp_util
from llamacpp_util import gguf

EMBD, HEAD, LAYERS, FFN = 128, 64, 2, 256
WORDS = [" the", " of", " and", " to", " in", "ing", "ed", " a", " is", " that", "er", "on",
         "The", " was", " for", "es", " with", " it", " as", " be", "\n\n", " he", " on", "re",
         " at", " by", "ly", " this", " have", " from", " or", " not", " you", " are", "al",
         " his", " an", " they", " which", " one", " we", " but", " had", " were", " all",
         " there", " can", " when", " her", " been", " will", " who", " more", " their", " if",
         " would", " so", " no", " what", " up", " out", " about", " into"]


def vocabulary():
    """`<s>`, the 256 bytes, then words: as the converter writes RWKV-world tokens."""
    tokens = [b"<s>"]
    types = [gguf.TokenType.CONTROL]
    for piece in [bytes([b]) for b in range(256)] + [w.encode() for w in WORDS]:
        tokens.append(repr(piece)[2:-1].encode("utf-8"))
        types.append(gguf.TokenType.NORMAL)
    return tokens, types


def write(path, arch, meta, tensors, file_type):
    """A GGUF of `tensors` (f32 arrays, or (Q8_0 bytes, dequantized values) pairs)."""
    w = gguf.GGUFWriter(path, arch)
    for call, value in meta:
        getattr(w, call)(value)
    w.add_file_type(file_type)
    for name, value in tensors.items():
        if isinstance(value, tuple):
            w.add_tensor(name, value[0], raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def to_q8_0(value):
    """A matrix whose rows split into 32-value blocks, as (Q8_0 bytes, the values they hold);
    anything else unchanged."""
    if value.ndim != 2 or value.shape[1] % 32:
        return value
    q = gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0)
    return q, gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(value.shape)


def save(path, arch, ids, decode_from, logits, **extra):
    with open(path, "w") as f:
        json.dump(
            dict(
                source=f"scripts/rwkv_reference.py --arch {arch}",
                llama_cpp=llamacpp_util.version(),
                ids=ids,
                prefill_tokens=len(ids),
                prefill=logits["prefill"],
                decode_from=decode_from,
                decode=logits["decode"],
                **extra,
            ),
            f,
        )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True, choices=["rwkv6", "rwkv7"])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(0)
    normal = lambda *shape, s=0.2: rng.normal(0.0, s, shape).astype(np.float32)
    uniform = lambda *shape: rng.uniform(0.0, 1.0, shape).astype(np.float32)
    tokens, types = vocabulary()
    vocab = len(tokens)

    # Metadata as writer calls, replayed for each file written.
    meta = [
        ("add_context_length", 1048576),
        ("add_embedding_length", EMBD),
        ("add_block_count", LAYERS),
        ("add_layer_norm_eps", 1e-5),
        ("add_wkv_head_size", HEAD),
        ("add_feed_forward_length", FFN),
        ("add_head_count", 0),
        ("add_tokenizer_model", "rwkv"),
        ("add_token_list", tokens),
        ("add_token_types", types),
        ("add_bos_token_id", 0),
        ("add_eos_token_id", 0),
        ("add_add_bos_token", False),
    ]

    t = {}
    t["token_embd.weight"] = normal(vocab, EMBD, s=0.5)
    t["token_embd_norm.weight"] = 1 + normal(EMBD, s=0.1)
    t["token_embd_norm.bias"] = normal(EMBD, s=0.1)
    t["output_norm.weight"] = 1 + normal(EMBD, s=0.1)
    t["output_norm.bias"] = normal(EMBD, s=0.1)
    t["output.weight"] = normal(vocab, EMBD)
    if args.arch == "rwkv6":
        mix, decay_rank = 8, 16
        meta += [("add_time_mix_extra_dim", mix), ("add_time_decay_extra_dim", decay_rank),
                 ("add_rescale_every_n_layers", 1)]
    else:
        ranks = dict(decay=8, iclr=8, value=8, gate=16)
        meta += [("add_decay_lora_rank", ranks["decay"]), ("add_iclr_lora_rank", ranks["iclr"]),
                 ("add_value_residual_mix_lora_rank", ranks["value"]),
                 ("add_gate_lora_rank", ranks["gate"])]
    for b in range(LAYERS):
        blk = lambda name: f"blk.{b}.{name}"
        for norm in ("attn_norm", "attn_norm_2", "time_mix_ln"):
            t[blk(f"{norm}.weight")] = 1 + normal(EMBD, s=0.1)
            t[blk(f"{norm}.bias")] = normal(EMBD, s=0.1)
        for name in ("time_mix_key", "time_mix_value", "time_mix_receptance", "time_mix_output"):
            t[blk(f"{name}.weight")] = normal(EMBD, EMBD)
        t[blk("channel_mix_lerp_k.weight")] = uniform(1, 1, EMBD)
        t[blk("channel_mix_key.weight")] = normal(FFN, EMBD)
        t[blk("channel_mix_value.weight")] = normal(EMBD, FFN)
        if args.arch == "rwkv6":
            t[blk("time_mix_w1.weight")] = normal(5 * mix, EMBD)
            t[blk("time_mix_w2.weight")] = normal(5, EMBD, mix)
            t[blk("time_mix_lerp_x.weight")] = uniform(1, 1, EMBD)
            t[blk("time_mix_lerp_fused.weight")] = uniform(5, 1, 1, EMBD)
            t[blk("time_mix_first.weight")] = normal(EMBD // HEAD, HEAD)
            t[blk("time_mix_decay.weight")] = normal(EMBD, s=0.5)
            t[blk("time_mix_decay_w1.weight")] = normal(decay_rank, EMBD)
            t[blk("time_mix_decay_w2.weight")] = normal(EMBD, decay_rank)
            t[blk("time_mix_gate.weight")] = normal(EMBD, EMBD)
            t[blk("channel_mix_lerp_r.weight")] = uniform(1, 1, EMBD)
            t[blk("channel_mix_receptance.weight")] = normal(EMBD, EMBD)
        else:
            value_rank = ranks["iclr"] if b == 0 else ranks["value"]
            for name, rank in (("w", ranks["decay"]), ("a", ranks["iclr"]), ("v", value_rank),
                               ("g", ranks["gate"])):
                t[blk(f"time_mix_{name}1.weight")] = normal(rank, EMBD)
                t[blk(f"time_mix_{name}2.weight")] = normal(EMBD, rank)
            for name in ("w0", "a0", "v0"):
                t[blk(f"time_mix_{name}.weight")] = normal(EMBD, s=0.5)
            t[blk("time_mix_lerp_fused.weight")] = uniform(6, 1, 1, EMBD)
            for name in ("k_k", "k_a", "r_k"):
                t[blk(f"time_mix_{name}.weight")] = uniform(EMBD)
    # Named after the folder, as longctx names a model after its file.
    stem = os.path.join(args.out, os.path.basename(os.path.normpath(args.out)))
    path = stem + ".gguf"
    write(path, args.arch, meta, t, gguf.LlamaFileType.ALL_F32)
    ids = np.random.default_rng(1).integers(1, vocab, 40).tolist()
    decode_from = 24
    logits = llamacpp_util.logits(path, decode_from, ids)
    # llama.cpp's tokenization of a text with multi-byte characters and a doubled newline.
    text = "The cat was in the house.\n\nWhen they came, it was all there: na\u00efve \u2211 42!"
    text_ids = llamacpp_util.tokenize(path, text)
    save(os.path.join(args.out, "reference_logits.json"), args.arch, ids, decode_from, logits,
         text=text, text_ids=text_ids)
    # The same model with its matrices in Q8_0, and llama.cpp's logits for the values those
    # blocks hold (an f32 file of the dequantized matrices): what reading Q8_0 exactly gives.
    quantized = {name: to_q8_0(value) for name, value in t.items()}
    write(stem + "-q8_0.gguf", args.arch, meta, quantized, gguf.LlamaFileType.MOSTLY_Q8_0)
    exact = {name: value if isinstance(value, np.ndarray) else value[1] for name, value in quantized.items()}
    exact_path = stem + "-q8_0-dequantized.gguf"
    write(exact_path, args.arch, meta, exact, gguf.LlamaFileType.ALL_F32)
    save(os.path.join(args.out, "reference_logits-q8_0.json"), args.arch, ids, decode_from,
         llamacpp_util.logits(exact_path, decode_from, ids))
    os.remove(exact_path)
    prefill = np.array(logits["prefill"]).reshape(len(ids), vocab)
    decode = np.array(logits["decode"]).reshape(-1, vocab)
    print("prefill vs decode at position 38:", float(np.abs(prefill[38] - decode[-1]).max()))


if __name__ == "__main__":
    main()
