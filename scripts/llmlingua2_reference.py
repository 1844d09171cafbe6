#!/usr/bin/env python3
"""A tiny random-weight LLMLingua-2 compressor and Microsoft's `llmlingua` 0.2.2 outputs on
it, for longctx's tests (LLMLingua-2's real weights cannot be fetched here).

Run by hand (not in CI), in an environment with torch, transformers 4.45, llmlingua 0.2.2
and bpe-openai (an offline cl100k_base, for the GPT token counts llmlingua weighs words by):

    python3 scripts/llmlingua2_reference.py \
        --haystack ~/.cache/longctx/haystack/PaulGrahamEssays \
        --out crates/longctx/tests/fixtures/llmlingua2

It writes, under --out:
  tiny-xlm-roberta-large/   an XLM-RoBERTa token classifier (2 layers, width 64) with a
                            Unigram tokenizer of 1,000 pieces trained on the essays, as
                            `PromptCompressor(use_llmlingua2=True)` leaves it: with its 100
                            added tokens [NEW0]..[NEW99] and their embedding rows (drawn by
                            transformers after llmlingua seeds torch with 42). The folder's
                            name must contain "xlm-roberta-large": llmlingua chooses its word
                            rules by the model's name.
  cases.json                texts, rates, and per case the compressed prompt and the word
                            labels (`return_word_label`), from `compress_prompt_llmlingua2`
                            called as the benchmark calls it (pipeline/llmlingua2/inference.py:
                            force tokens \\n . ! ? , ; chunk end tokens . \\n; drop_consecutive).

llmlingua builds a tiktoken encoder for `gpt-3.5-turbo`, which downloads cl100k_base; the
same vocabulary from the `bpe-openai` package stands in for it (identical ids).
"""
import argparse
import json
import os

import bpe_openai
import tiktoken

tiktoken.encoding_for_model = lambda _name: bpe_openai.get_encoding("cl100k_base")

import torch  # noqa: E402
from llmlingua import PromptCompressor  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    XLMRobertaConfig,
    XLMRobertaForTokenClassification,
    XLMRobertaTokenizerFast,
)

FORCE_TOKENS = ["\n", ".", "!", "?", ","]
CHUNK_END_TOKENS = [".", "\n"]


def essays(haystack, names):
    return [open(os.path.join(haystack, n), encoding="utf-8").read() for n in names]


def tiny_tokenizer(texts):
    """A Unigram tokenizer in XLM-RoBERTa's layout: <s> <pad> </s> <unk> <mask> first,
    Metaspace pieces, <s> A </s> around a text."""
    tk = Tokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=1000,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        unk_token="<unk>",
    )
    tk.train_from_iterator(texts, trainer)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--haystack", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    names = sorted(f for f in os.listdir(args.haystack) if f.endswith(".txt"))
    texts = essays(args.haystack, names)
    tok = tiny_tokenizer(texts[:40])
    config = XLMRobertaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=2,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = XLMRobertaForTokenClassification(config)
    with torch.no_grad():
        # Spread the keep probabilities, so that thresholds fall between distinct values.
        model.classifier.weight.normal_(0.0, 0.15)
    folder = os.path.join(args.out, "tiny-xlm-roberta-large")
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)

    compressor = PromptCompressor(model_name=folder, use_llmlingua2=True, device_map="cpu")
    # What longctx loads: the classifier with llmlingua's added tokens and their rows.
    compressor.model.save_pretrained(folder, safe_serialization=True)
    compressor.tokenizer.save_pretrained(folder)

    words = " ".join(texts[40:42]).split(" ")
    cases = [
        ("essay-4x", " ".join(words[:700]), 0.25),
        ("essays-2x", " ".join(words[:2500]), 0.5),
        ("short-8x", "Hello, world! How are you? Fine.\nThe end.", 0.125),
        ("lines-4x", "\n".join(texts[42].split("\n")[:60]), 0.25),
    ]
    out = []
    for name, text, rate in cases:
        result = compressor.compress_prompt_llmlingua2(
            text,
            rate=rate,
            force_tokens=FORCE_TOKENS,
            chunk_end_tokens=CHUNK_END_TOKENS,
            return_word_label=True,
            drop_consecutive=True,
        )
        labels = [
            int(item.rsplit(" ", 1)[1])
            for item in result["fn_labeled_original_prompt"].split("\t\t|\t\t")
        ]
        out.append(
            dict(
                name=name,
                text=text,
                rate=rate,
                compressed=result["compressed_prompt"],
                labels=labels,
                origin_tokens=result["origin_tokens"],
            )
        )
        print(f"{name}: {result['origin_tokens']} -> {result['compressed_tokens']} GPT tokens")

    import llmlingua
    import transformers

    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(
            dict(
                source="scripts/llmlingua2_reference.py",
                llmlingua=getattr(llmlingua, "__version__", "0.2.2"),
                transformers=transformers.__version__,
                torch=torch.__version__,
                force_tokens=FORCE_TOKENS,
                chunk_end_tokens=CHUNK_END_TOKENS,
                cases=out,
            ),
            f,
            ensure_ascii=False,
            indent=1,
        )
        f.write("\n")


if __name__ == "__main__":
    main()
