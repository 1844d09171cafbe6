#!/usr/bin/env python3
"""Greedy answers of Hugging Face transformers to needle prompts, to check longctx's baseline
against an independent implementation on the same prompt.

Run by hand, in an environment with torch, transformers and gguf:

    longctx plan --spec experiments/needle-table.toml --dump-prompts prompts/
    python3 scripts/needle_reference.py --gguf ~/.cache/longctx/models/<model>.gguf prompts/needle_passkey_max_new_tokens_32/*.txt

and compare with the predictions `longctx run` stored (or `longctx generate --no-chat
--prompt "$(cat FILE)"`). Needle prompts are fed raw, as the benchmark does; pass --chat to
wrap them in the model's chat template instead.
"""
import argparse
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template")
    ap.add_argument("prompts", nargs="+")
    args = ap.parse_args()
    folder, name = os.path.split(args.gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    for path in args.prompts:
        text = open(path, encoding="utf-8").read()
        if args.chat:
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt")
            if not isinstance(ids, torch.Tensor):
                ids = ids["input_ids"]
        else:
            ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
        answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        print(f"{path}: {ids.shape[1]} prompt tokens -> {answer!r}")


if __name__ == "__main__":
    main()
