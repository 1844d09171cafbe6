#!/usr/bin/env python3
"""Greedy answers of Hugging Face transformers to needle prompts, to check longctx's baseline
against an independent implementation on the same prompt.

Run by hand, in an environment with torch, transformers and gguf:

    longctx tasks --needle-prompt 2048:0.5 > prompt.txt
    python3 scripts/needle_reference.py --gguf ~/.cache/longctx/models/<model>.gguf prompt.txt

and compare with `longctx generate --prompt "$(cat prompt.txt)" --max-new-tokens 32`.
The prompt is wrapped in the model's chat template, as `longctx run` does.
"""
import argparse
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("prompts", nargs="+")
    args = ap.parse_args()
    folder, name = os.path.split(args.gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    for path in args.prompts:
        text = open(path, encoding="utf-8").read()
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt")
        if not isinstance(ids, torch.Tensor):
            ids = ids["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
        answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        print(f"{path}: {ids.shape[1]} prompt tokens -> {answer!r}")


if __name__ == "__main__":
    main()
