#!/usr/bin/env python3
"""Reference LLMLingua compressions from Microsoft's `llmlingua` package, for longctx's tests.

Run by hand (not in CI), in an environment with torch, transformers 4.45, gguf and
llmlingua 0.2.2 (the version the benchmark pinned in requirements/tf_4.45.txt):

    python3 scripts/llmlingua_reference.py \
        --gguf ~/.cache/longctx/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --haystack ~/.cache/longctx/haystack/PaulGrahamEssays \
        --tiny crates/longctx/tests/fixtures/tiny_llama3 \
        --out crates/longctx/tests/fixtures/llmlingua.json

transformers dequantizes the GGUF to float32 and saves it as a Hugging Face directory, which
`llmlingua.PromptCompressor` loads as its scorer (LLMLingua-1: token surprisal of a causal
LM). Each case is one `compress_prompt` call as longctx's `llmlingua` presets make it: the
compressible text as the only context, no instruction and no question (the benchmark keeps
those outside the compressor), a rate, the default iterative size of 200 and context budget
"+100". A second group of cases passes several contexts, to exercise the coarse
(context-level) filter. A third is LongLLMLingua: a question, with the settings its README
recommends (condition_in_question="after_condition", reorder_context="sort",
dynamic_context_compression_ratio=0.3, condition_compare=True, rank_method="longllmlingua"),
and the question not appended to the output (longctx keeps it in the prompt's template).

The package builds a tiktoken encoder for `gpt-3.5-turbo` at start-up, which downloads its
vocabulary; it is used only to report GPT token counts (never to choose tokens), so it is
replaced here by a whitespace counter, and those counts are not written.

The fixture holds, per case: the input contexts, the rate, the text's token ids and the ids
the fine stage kept (the scorer's tokenizer, without special tokens), the compressed text, plus the scorer's per-token
losses of the first whole-text pass, so a test can tell a difference in the scorer's numbers
from one in the algorithm.
"""
import argparse
import json
import os
import tempfile

import tiktoken
import torch


class WhitespaceCounter:
    """Stands in for the GPT tokenizer llmlingua only counts with."""

    def encode(self, text):
        return text.split()


tiktoken.encoding_for_model = lambda _name: WhitespaceCounter()

from llmlingua import PromptCompressor  # noqa: E402  (after the stand-in above)
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def essay_text(haystack, files, words):
    """The first `words` words of the named essays, joined with blank lines."""
    parts = []
    for name in files:
        with open(os.path.join(haystack, name), encoding="utf-8") as f:
            parts.append(f.read().strip())
    text = "\n\n".join(parts)
    return " ".join(text.split(" ")[:words])


def first_pass_losses(compressor, ids):
    """Per-token cross-entropy of the whole text in one pass, as llmlingua's first window
    computes it (loss j belongs to token j + 1)."""
    with torch.no_grad():
        logits = compressor.model(torch.tensor([ids])).logits[0]
    loss = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
    return [float(str(x)) for x in loss.float().numpy()]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--haystack", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--tiny",
        help="a tiny random Llama folder (crates/longctx/tests/fixtures/tiny_llama3, 256 positions) "
        "to score a text longer than its context with: the scorer's cache slides",
    )
    args = p.parse_args()

    gguf_dir, gguf_file = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # The GGUF says tokenizer.ggml.add_bos_token = false (SmolLM2 adds no start token);
    # transformers 4.45's GGUF conversion ignores it, and llmlingua counts with it.
    tok.add_bos_token = False
    # Nor does anything in the GGUF ask for transformers' clean-up of spaces before
    # punctuation when decoding (llama.cpp does none), which this conversion turns on.
    tok.clean_up_tokenization_spaces = False
    assert tok("Hello").input_ids == tok("Hello", add_special_tokens=False).input_ids
    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_file, torch_dtype=torch.float32
    )
    # SmolLM2 ties its output matrix to the token table (the GGUF has no output.weight);
    # transformers 4.45 leaves lm_head freshly initialized when reading it from GGUF.
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    hf_dir = tempfile.mkdtemp(prefix="smollm2_hf_")
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    compressor = PromptCompressor(model_name=hf_dir, device_map="cpu")
    # The token ids the iterative (fine) stage keeps, before they are decoded to text.
    kept = []
    iterative = compressor.iterative_compress_prompt

    def capture(*a, **k):
        result = iterative(*a, **k)
        kept.append(result[0][0].tolist())
        return result

    compressor.iterative_compress_prompt = capture
    assert compressor.tokenizer("Hello").input_ids == tok("Hello", add_special_tokens=False).input_ids
    assert torch.equal(compressor.model.lm_head.weight, compressor.model.model.embed_tokens.weight)

    files = sorted(f for f in os.listdir(args.haystack) if f.endswith(".txt"))
    single = [
        ("needle-like", essay_text(args.haystack, files[:1], 700), 0.25),
        ("two-essays", essay_text(args.haystack, files[1:3], 1500), 0.5),
        ("short", "The quick brown fox jumps over the lazy dog. " * 6, 0.5),
        ("eighth", essay_text(args.haystack, files[3:4], 900), 0.125),
    ]
    cases = []
    for name, text, rate in single:
        cases.append((name, [text], rate))
    paragraphs = [p for p in essay_text(args.haystack, files[4:6], 1200).split("\n\n") if p.strip()]
    cases.append(("paragraphs", paragraphs[:8], 0.25))

    # LongLLMLingua: the settings its README recommends, the question kept apart.
    question = "What does the author say about how startups should spend money?"
    question_cases = [
        ("question-paragraphs", paragraphs[:8], 0.3),
        ("question-essay", [essay_text(args.haystack, files[6:7], 800)], 0.3),
    ]

    out = []
    for name, contexts, rate in question_cases:
        result = compressor.compress_prompt(
            contexts,
            question=question,
            rate=rate,
            condition_in_question="after_condition",
            reorder_context="sort",
            dynamic_context_compression_ratio=0.3,
            condition_compare=True,
            context_budget="+100",
            rank_method="longllmlingua",
            concate_question=False,
        )
        out.append(
            dict(
                name=name,
                contexts=contexts,
                question=question,
                rate=rate,
                input_ids=[],
                kept_ids=kept[-1],
                compressed=result["compressed_prompt"],
                first_pass_losses=[],
            )
        )
        print(f"{name}: -> {len(kept[-1])}")
    for name, contexts, rate in cases:
        result = compressor.compress_prompt(contexts, rate=rate)
        text = result["compressed_prompt"]
        joined = "\n\n".join(contexts)
        ids = tok(joined, add_special_tokens=False).input_ids
        out.append(
            dict(
                name=name,
                contexts=contexts,
                question="",
                rate=rate,
                input_ids=ids,
                kept_ids=kept[-1],
                compressed=text,
                first_pass_losses=first_pass_losses(compressor, ids) if len(contexts) == 1 else [],
            )
        )
        print(f"{name}: {len(ids)} tokens -> {len(kept[-1])}")

    if args.tiny:
        tiny = PromptCompressor(model_name=os.path.abspath(args.tiny), device_map="cpu")
        # llmlingua 0.2.2 fails when its cache slides (the kept prefix and a window pass the
        # scorer's context): the losses it computes no longer fit where it writes them. The
        # case records the failure; longctx must refuse the same input.
        text = essay_text(args.haystack, files[7:8], 220)
        ids = tiny.tokenizer(text, add_special_tokens=False).input_ids
        assert len(ids) > 2 * tiny.max_position_embeddings, len(ids)
        try:
            tiny.compress_prompt([text], rate=0.9)
            error = ""
        except RuntimeError as e:
            error = str(e)
        out.append(
            dict(
                name="tiny-slide",
                contexts=[text],
                question="",
                rate=0.9,
                input_ids=ids,
                kept_ids=[],
                compressed="",
                first_pass_losses=[],
                scorer="tiny_llama3",
                error=error,
            )
        )
        print(f"tiny-slide: {len(ids)} tokens: {error or 'no error'}")

    import llmlingua
    import transformers

    fixture = dict(
        source="scripts/llmlingua_reference.py",
        llmlingua=getattr(llmlingua, "__version__", "0.2.2"),
        transformers=transformers.__version__,
        torch=torch.__version__,
        scorer=os.path.basename(args.gguf),
        iterative_size=200,
        context_budget="+100",
        cases=out,
    )
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
