#!/usr/bin/env python3
"""Reference logits of a named model's GGUF from Hugging Face transformers, for longctx's tests.

Run by hand (not in CI), in an environment with torch, transformers, gguf and numpy, on a model
fetched with `longctx fetch --model NAME`:

    python3 scripts/named_model_reference.py \
        --gguf ~/.cache/longctx/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        --haystack ~/.cache/longctx/haystack/PaulGrahamEssays \
        --out crates/longctx/tests/fixtures/qwen2.5-coder-0.5b_logits.json

It writes two prompts: a question (inside the chat template when the model ships one, else
as raw text) and the start of an essay (1,300 tokens of raw text: past a 512-token sliding
window), each after BOS where the file asks for it. For each, the token ids, the top-1 id at every position,
and at a spread of positions and the last 8 the logits of a fixed sample of the vocabulary
plus that row's 20 largest (`reference_logits.logit_fixture`), so that a test can compare our
prefill and, for the last 8 tokens, our token-by-token decoding (the quantized mat-vec
kernels). Also the token ids of `reference_logits.py`'s tricky strings. transformers
dequantizes the GGUF to float32 and runs its own implementation. With `--llama-tokenize
PATH` (llama.cpp's tool, as `scripts/llamacpp.sh` builds it) the token ids come from
llama.cpp instead, the GGUF's own tokenizer: Gemma's fixture is written so.
"""
import argparse
import json
import os
import subprocess

import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer

from reference_logits import TRICKY, logit_fixture

QUESTION = "Write a Python function that returns the square of a number."
ESSAY_TOKENS = 1300


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--haystack", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--llama-tokenize", help="llama.cpp's llama-tokenize: token ids from it")
    args = ap.parse_args()
    d, f = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    # The file says whether a sequence starts with BOS (llama.cpp follows it; transformers'
    # GGUF tokenizers do not always add it, so it is added here as the file asks).
    add_bos = bool(GGUFReader(args.gguf).fields["tokenizer.ggml.add_bos_token"].contents())

    def tokenize(text, bos):
        if args.llama_tokenize and not text:
            return [tok.bos_token_id] if bos else []
        if args.llama_tokenize:
            # llama.cpp's tokenizer, the GGUF's own (transformers reads some vocabularies,
            # Gemma's, as a unigram model that splits words differently).
            command = [args.llama_tokenize, "-m", args.gguf, "-p", text, "--ids", "--log-disable"]
            out = subprocess.run(command + ([] if bos else ["--no-bos"]), capture_output=True,
                                 text=True, check=True).stdout
            return json.loads(out.strip().splitlines()[-1])
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return [tok.bos_token_id] + ids if bos and ids[:1] != [tok.bos_token_id] else ids

    def encode(text):
        return tokenize(text, add_bos)

    chat = tok.chat_template is not None
    if chat:
        text = tok.apply_chat_template(
            [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = QUESTION
    question_ids = encode(text)
    essays = sorted(os.listdir(args.haystack))
    essay = open(os.path.join(args.haystack, essays[0]), encoding="utf-8").read()
    essay_ids = encode(essay)[:ESSAY_TOKENS]
    essay_text = tok.decode(essay_ids, skip_special_tokens=True)
    assert encode(essay_text) == essay_ids, "the cut essay re-tokenizes differently"
    source = f"transformers {__import__('transformers').__version__} on {f}, dequantized to f32"
    if args.llama_tokenize:
        source += "; token ids from llama.cpp's llama-tokenize"
    prompts = [(text, question_ids), (essay_text, essay_ids)]
    with open(args.out, "w") as fh:
        json.dump(
            {
                "source": source,
                "question": QUESTION,
                "chat": chat,
                "cases": logit_fixture(model, prompts, 24, last_rows=8),
                "tokenizer": [{"text": t, "ids": tokenize(t, False)} for t in TRICKY],
            },
            fh,
        )
    print(f"wrote {args.out}: {[len(ids) for _, ids in prompts]} tokens")


if __name__ == "__main__":
    main()
