#!/usr/bin/env python3
"""Reference logits and tokenizations from Hugging Face transformers, for longctx's tests.

Run by hand (not in CI), in an environment with torch, transformers, gguf and numpy:

    python3 scripts/reference_logits.py --gguf ~/.cache/longctx/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --haystack ~/.cache/longctx/haystack/PaulGrahamEssays --out crates/longctx-models/tests/fixtures

It writes:
  smollm2_logits.json     for fixed prompts (one of >= 2,000 tokens): token ids, and for a
                          spread of positions the top-1 id and the full logit row (f32)
  smollm2_tokenizer.json  tricky strings with their reference token ids
  smollm2_perplexity.json perplexity of an essay at ctx 512 (windows as longctx defines them)
  tiny_<arch>/            tiny random-weight Hugging Face models (config.json, safetensors,
                          tokenizer.json) and their reference logits, for the HF-directory path
                          (`--tiny gemma3` writes only that one)

transformers dequantizes the GGUF to float32 and runs its own Llama implementation: an
implementation independent of longctx.
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

TRICKY = [
    "Hello, world!",
    "  leading spaces and   runs   of spaces  ",
    "tabs\tand\nnewlines\n\n\nand \r\n windows",
    "digits 1234567890 and 3.14159 and 1,000,000",
    "unicode: naïve café, 東京, Привет, 🙂🚀, ﬁ ligature",
    "def f(x):\n    return x**2  # square\n\tif x: pass",
    "<|im_start|>user\nhi<|im_end|>",
    "it's they're I'll we've 'quoted' ''",
    "",
    "a" * 300,
]


def window_nll(model, ids, ctx):
    windows = [ids] if len(ids) < ctx else [ids[i:i + ctx] for i in range(0, len(ids) - ctx + 1, ctx)]
    nll, count = 0.0, 0
    for w in windows:
        with torch.no_grad():
            logits = model(torch.tensor([w])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        for i in range(len(w) - 1):
            nll -= logp[i, w[i + 1]].item()
        count += len(w) - 1
    return nll, count, len(windows)


def logit_fixture(model, prompts, keep_rows, last_rows=1):
    """Top-1 at every position; at a spread of positions and the last `last_rows`, the logits
    of a fixed sample of the vocabulary (every 97th id) plus that row's 20 largest, which is
    what the tolerance test needs without storing whole rows."""
    cases = []
    for text, ids in prompts:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        n, vocab = logits.shape
        spread = list(range(0, n, max(1, n // keep_rows)))
        rows = sorted(set([0] + spread + list(range(max(0, n - last_rows), n))))
        kept = {}
        for r in rows:
            top = torch.topk(logits[r], 20).indices.tolist()
            cols = sorted(set(range(0, vocab, 97)) | set(top))
            kept[str(r)] = {"ids": cols, "values": [round(float(logits[r, c]), 5) for c in cols]}
        cases.append({"text": text, "ids": ids, "top1": logits.argmax(-1).tolist(), "rows": kept})
    return cases


def gguf_reference(args):
    d, f = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    essays = sorted(os.listdir(args.haystack))
    essay = open(os.path.join(args.haystack, essays[0]), encoding="utf-8").read()
    long_text = "".join(open(os.path.join(args.haystack, e), encoding="utf-8").read() for e in essays[:4])
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True)
    prompts = [
        ("chat", chat),
        ("short", "The quick brown fox jumps over the lazy dog. 12345"),
        ("long", long_text),
    ]
    encoded = []
    for name, text in prompts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if name == "long":
            ids = ids[:2300]
            text = tok.decode(ids)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        encoded.append((text, ids))
    assert len(encoded[2][1]) >= 2000
    out = args.out
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "smollm2_logits.json"), "w") as fh:
        json.dump({"source": "transformers " + __import__("transformers").__version__ + " on the Q4_1 GGUF, dequantized to f32",
                   "cases": logit_fixture(model, encoded, 24)}, fh)
    with open(os.path.join(out, "smollm2_tokenizer.json"), "w") as fh:
        json.dump([{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in TRICKY], fh, ensure_ascii=False, indent=0)
    ids = tok(essay, add_special_tokens=False)["input_ids"]
    nll, count, windows = window_nll(model, ids, 512)
    with open(os.path.join(out, "smollm2_perplexity.json"), "w") as fh:
        json.dump({"essay": essays[0], "ctx": 512, "tokens": len(ids), "windows": windows, "scored": count,
                   "nll": nll / count, "perplexity": float(np.exp(nll / count))}, fh, indent=1)
    print("perplexity", essays[0], np.exp(nll / count))


TINY = {
    # Llama-3 layout with llama3 rope scaling.
    "llama3": dict(model_type="llama", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, rope_theta=500000.0,
                   num_key_value_heads=2, tie_word_embeddings=False),
    # Mistral layout (GQA, no bias).
    "mistral": dict(model_type="mistral", rope_theta=1000000.0, num_key_value_heads=1, tie_word_embeddings=False),
    # Qwen2: biases on q/k/v, tied embeddings.
    "qwen2": dict(model_type="qwen2", rope_theta=1000000.0, num_key_value_heads=2, tie_word_embeddings=True),
    # Gemma-3: 7 layers (the 6th global, the others in an 8-token window, so the prompt runs
    # past it), a head dimension that is not hidden / heads, a query scale that is not the
    # head dimension's.
    "gemma3": dict(model_type="gemma3_text", num_hidden_layers=7, num_key_value_heads=2, head_dim=32,
                   sliding_window=8, query_pre_attn_scalar=24),
}


def small_tokenizer(tok, out, size=512):
    """The reference tokenizer cut to its first `size` ids (specials, bytes, first merges), so
    tiny models stay small; merges whose parts or result fall outside are dropped."""
    from tokenizers import Tokenizer
    full = json.loads(tok.backend_tokenizer.to_str())
    vocab = {t: i for t, i in full["model"]["vocab"].items() if i < size}
    merges = []
    for m in full["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append([a, b])
    full["model"]["vocab"] = vocab
    full["model"]["merges"] = merges
    full["added_tokens"] = [t for t in full["added_tokens"] if t["id"] < size]
    small = Tokenizer.from_str(json.dumps(full))
    small.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as fh:
        json.dump({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}, fh)
    return small


def tiny_models(args, gguf_dir, gguf_file, names):
    from transformers import AutoConfig
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    for name in names:
        torch.manual_seed(0)
        settings = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5)
        settings.update(TINY[name])
        model_type = settings.pop("model_type")
        cfg = AutoConfig.for_model(model_type, **settings)
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.3)
        model.eval()
        out = os.path.join(args.out, f"tiny_{name}")
        shutil.rmtree(out, ignore_errors=True)
        model.save_pretrained(out, safe_serialization=True)
        small = small_tokenizer(tok, out)
        text = "Tiny models check the Hugging Face loading path: 0123456789 and more words to make a longer prompt."
        ids = small.encode(text, add_special_tokens=False).ids
        with open(os.path.join(out, "reference_logits.json"), "w") as fh:
            json.dump({"source": f"transformers {__import__('transformers').__version__}, random weights seed 0",
                       "cases": logit_fixture(model, [(text, ids)], 8)}, fh)
        for extra_file in os.listdir(out):
            if extra_file not in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "reference_logits.json"):
                os.remove(os.path.join(out, extra_file))
        print("wrote", out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--haystack", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", help="only these tiny models (comma-separated names of TINY)")
    args = ap.parse_args()
    if args.tiny is None:
        gguf_reference(args)
    d, f = os.path.split(os.path.abspath(args.gguf))
    tiny_models(args, d, f, args.tiny.split(",") if args.tiny else list(TINY))


if __name__ == "__main__":
    main()
