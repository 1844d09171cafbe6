#!/usr/bin/env python3
"""Prepare LLMLingua-2's classifier for longctx: the folder as llmlingua leaves it in memory.

`llmlingua.PromptCompressor(use_llmlingua2=True)` adds 100 tokens ([NEW0]..[NEW99]) to the
tokenizer and grows the embedding matrix for them, drawing the new rows with transformers
after seeding torch with 42; the benchmark's force tokens that the tokenizer splits (the
newline) are read through them. longctx cannot draw those rows as torch does, so it reads
them from a folder this script writes, run once by hand where llmlingua 0.2.2 and
transformers are installed (the benchmark pinned llmlingua 0.2.2 with transformers 4.40 or
4.45; the rows depend on the transformers version):

    python3 scripts/llmlingua2_prepare.py SOURCE [DEST]

SOURCE is a local copy of microsoft/llmlingua-2-xlm-roberta-large-meetingbank (config.json,
model.safetensors or pytorch_model.bin, the tokenizer files); DEST defaults to
~/.cache/longctx/models/llmlingua-2-xlm-roberta-large-meetingbank, where the presets
`llmlingua2-*` (model=default) look. tiktoken's vocabulary is not needed here.
"""
import os
import sys

import tiktoken

tiktoken.encoding_for_model = lambda _name: None  # only counts tokens; not used here

from llmlingua import PromptCompressor  # noqa: E402


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    source = os.path.abspath(sys.argv[1])
    dest = (
        sys.argv[2]
        if len(sys.argv) == 3
        else os.path.expanduser("~/.cache/longctx/models/llmlingua-2-xlm-roberta-large-meetingbank")
    )
    if "xlm-roberta-large" not in source:
        sys.exit(
            f"{source}: llmlingua chooses its word rules by the model's name, which must contain "
            "'xlm-roberta-large' (name the folder llmlingua-2-xlm-roberta-large-meetingbank)"
        )
    compressor = PromptCompressor(model_name=source, use_llmlingua2=True, device_map="cpu")
    os.makedirs(dest, exist_ok=True)
    compressor.model.save_pretrained(dest, safe_serialization=True)
    compressor.tokenizer.save_pretrained(dest)
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
