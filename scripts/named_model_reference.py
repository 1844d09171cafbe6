#!/usr/bin/env python3
"""Reference logits of a named model's GGUF from Hugging Face transformers, for longctx's tests.

Run by hand (not in CI), in an environment with torch, transformers, gguf and numpy, on a model
fetched with `longctx fetch --model NAME`:

    python3 scripts/named_model_reference.py \
        --gguf ~/.cache/longctx/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        --out crates/longctx/tests/fixtures/qwen2.5-coder-0.5b_logits.json

It writes, for one chat prompt, the token ids transformers' chat template gives, the top-1 id
at every position and at every position the logits of a fixed sample of the vocabulary plus
that row's 20 largest (as `reference_logits.py` does), so that a test can compare both our
prefill and our token-by-token decoding (the quantized mat-vec kernels) position by position.
transformers dequantizes the GGUF to float32 and runs its own implementation.
"""
import argparse
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reference_logits import logit_fixture

QUESTION = "Write a Python function that returns the square of a number."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    d, f = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    chat = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(chat, add_special_tokens=False)["input_ids"]
    source = f"transformers {__import__('transformers').__version__} on {f}, dequantized to f32"
    with open(args.out, "w") as fh:
        json.dump(
            {
                "source": source,
                "question": QUESTION,
                "cases": logit_fixture(model, [(chat, ids)], len(ids)),
            },
            fh,
        )
    print(f"wrote {args.out}: {len(ids)} tokens")


if __name__ == "__main__":
    main()
