"""Tokens kept by NVIDIA kvpress's presses on the default model, for
`crates/longctx/tests/kvpress_reference.rs`.

Run by hand (not in CI), with torch, transformers (<5.3), gguf and kvpress 0.5.5 installed
(CPU is enough):

    python3 scripts/kvpress_reference.py ~/.cache/longctx/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        crates/longctx/tests/fixtures/kvpress.json

transformers dequantizes the GGUF to float32, the weights our engine runs. A fixed passage
with a pass key (tokenized here; the ids are stored) is prefilled once per press, as kvpress's
pipeline prefills a context; each press compresses at the end of every layer's prefill. The
positions each layer and key/value head keeps are recovered by matching the compressed cache's
keys against an uncompressed prefill's. The presses and their counterparts here:

- StreamingLLMPress(n_sink=4): 4 sinks and the most recent tokens, chosen once after the
  prefill; our `streamingllm` with `sinks=4` slides its window through the prefill, ending on
  the same tokens.
- TOVAPress: the last prompt token's attention, averaged over all heads, chosen once; kvpress
  always keeps the last token (TOVA's own cache does not).
- SnapKVPress(window_size=64, kernel_size=5): what the last 64 queries attend to,
  average-pooled, averaged over each key/value head's group; our `snapkv` with `pool=avg`.
  Its scores are recorded too. Then kvpress's pipeline step, the query-agnostic protocol: the
  question is fed after the compressed context (positions continuing from the context's
  end) and 8 tokens are generated greedily; the question's last logits (top 20) and the
  tokens are stored, with the same for no press.

- KnormPress and KeyDiffPress: each key/value head's keys alone (the cache's, rotated),
  scored by minus their norm and minus their cosine to the head's mean key direction; our
  `knorm` and `keydiff`. Their scores are recorded too.
- ExpectedAttentionPress (its defaults: 512 future positions, 4 sinks, covariance and value
  norms): the prompt's pre-RoPE query statistics, turned by the mean rotation of the next 512
  positions, give each key its expected attention, scaled by its value's norm; our
  `expected-attention-4x`. Its scores are recorded too.
- ChunkKVPress(KnormPress, chunk_length=20): Knorm's scores summed over heads, averaged per
  chunk of 20 tokens, the best chunks kept whole by every head; our
  `chunkkv:chunk=20,press=knorm`.
- AdaKVPress(KnormPress, alpha_safeguard=0.2): each head's best 20% of the kept share
  safeguarded, then the best scores over all heads of a layer kept, so heads keep different
  counts; kvpress masks the rest (read from each attention module's `masked_key_indices`).
  Our `adakv:safeguard=0.2,press=knorm`.

- KVzipPress (its defaults: 4 sinks, chunks of 2,048, one budget over all layers and
  heads): on the passage inside the chat template's user turn, as kvpress's pipeline
  formats a context (`kvzip_ids`); the model is asked to repeat it after its opening, and
  each token scores the most attention the repetition pays it. Read from
  `masked_key_indices`; its scores (`score_val`, before the sinks are lifted) are recorded
  too. Our `kvzip-4x`. Again with chunks of 100 tokens (`kvzip_chunked`), so that later
  passes quote the previous chunk's last 8 tokens: our `kvzip:ratio=4,sinks=4,chunk=100`.

- DuoAttentionPress(head_compression_ratio=0.75): the lowest-scoring 75% of all layers' key/value
  heads keep their sinks and recent window, the others everything. kvpress loads the head
  pattern and both sizes from DuoAttention's released files over the network; its loader is
  handed instead a pattern drawn from torch's generator with seed 0 (scores in [0, 1), as the
  released ones after clipping), 16 sinks and a window of 64, all stored (`duo_pattern`).
  Read from `masked_key_indices`. Our `duo-attention:ratio=4,sinks=16,recent=64` with that
  pattern.

Besides the kept positions, each layer records how far the last kept and first dropped
tokens' scores are apart at the cut, so that a test can tell a real disagreement from a
near-tie that float rounding may flip.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from kvpress import (
    AdaKVPress,
    ChunkKVPress,
    DuoAttentionPress,
    ExpectedAttentionPress,
    KeyDiffPress,
    KnormPress,
    KVzipPress,
    SnapKVPress,
    StreamingLLMPress,
    TOVAPress,
)

RATIO = 0.75  # kvpress's compression_ratio: keep int(L * 0.25), our ratio=4
QUESTION = "\nWhat is the pass key? The pass key is"
NEW_TOKENS = 8


def recording(press_class):
    """`press_class` keeping the scores it ranks by, one list per layer."""

    class Recording(press_class):
        def score(self, *args, **kwargs):
            scores = super().score(*args, **kwargs)
            self.recorded.append(scores[0].tolist())
            return scores

    return Recording
FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
PASSAGE = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it.\n"
    + FILLER * 6
    + "The pass key is 68341. Remember it. 68341 is the pass key. "
    + FILLER * 6
)


def kept_positions(full, compressed):
    """Positions of `full`'s keys ([kv_heads, T, d]) found in `compressed` ([kv_heads, n, d])."""
    out = []
    for h in range(full.shape[0]):
        d = torch.cdist(compressed[h].double(), full[h].double())
        out.append(sorted(int(i) for i in d.argmin(dim=1)))
    return out


def prefill(model, ids, press=None):
    cache = DynamicCache()
    with torch.no_grad():
        if press is None:
            model(ids, past_key_values=cache)
        else:
            with press(model):
                model(ids, past_key_values=cache)
    return cache


def keys(cache):
    return [cache.layers[l].keys[0] for l in range(len(cache.layers))]


def answer(model, cache, context_length, question_ids):
    """kvpress's pipeline after the context: the question at positions continuing from the
    context's end, then greedy tokens (`KVPressTextGenerationPipeline.generate_answer`)."""
    with torch.no_grad():
        position_ids = torch.arange(context_length, context_length + question_ids.shape[1]).unsqueeze(0)
        out = model(input_ids=question_ids, past_key_values=cache, position_ids=position_ids)
        logits = out.logits[0, -1]
        top = torch.topk(logits, 20)
        tokens = [int(logits.argmax())]
        position = position_ids[:, -1:] + 1
        for i in range(NEW_TOKENS - 1):
            out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache, position_ids=position + i)
            tokens.append(int(out.logits[0, -1].argmax()))
    return {"top_ids": top.indices.tolist(), "top_logits": top.values.tolist(), "tokens": tokens}


def tova_margins(model, ids, kept_by_layer):
    """Per layer: the last prompt token's mean attention (over all heads) at every position,
    as TOVAPress scores, so the test can measure how close a disputed position is to the cut."""
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    scores = []
    for attn in out.attentions:
        scores.append(attn[0, :, -1, :].mean(0).tolist())
    return scores


def main():
    gguf = Path(sys.argv[1])
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = tokenizer(PASSAGE, return_tensors="pt").input_ids
    question_ids = tokenizer(QUESTION, return_tensors="pt", add_special_tokens=False).input_ids
    full = keys(prefill(model, ids))
    cases = {}
    snapkv = recording(SnapKVPress)(compression_ratio=RATIO, window_size=64, kernel_size=5)
    knorm = recording(KnormPress)(compression_ratio=RATIO)
    keydiff = recording(KeyDiffPress)(compression_ratio=RATIO)
    expected = recording(ExpectedAttentionPress)(compression_ratio=RATIO)
    for press in (snapkv, knorm, keydiff, expected):
        press.recorded = []
    answers = {"baseline": answer(model, prefill(model, ids), ids.shape[1], question_ids)}
    for name, press in [
        ("streamingllm", StreamingLLMPress(compression_ratio=RATIO, n_sink=4)),
        ("tova", TOVAPress(compression_ratio=RATIO)),
        ("snapkv", snapkv),
        ("knorm", knorm),
        ("keydiff", keydiff),
        ("expected_attention", expected),
    ]:
        cache = prefill(model, ids, press)
        cases[name] = [kept_positions(f, c) for f, c in zip(full, keys(cache))]
        if name == "snapkv":
            answers[name] = answer(model, cache, ids.shape[1], question_ids)
    # ChunkKVPress refuses a model that returns attention weights: the same weights loaded
    # with PyTorch's fused attention.
    fused = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="sdpa"
    )
    chunkkv = ChunkKVPress(press=KnormPress(compression_ratio=RATIO), chunk_length=20)
    cases["chunkkv"] = [kept_positions(f, c) for f, c in zip(full, keys(prefill(fused, ids, chunkkv)))]
    adakv = AdaKVPress(press=KnormPress(compression_ratio=RATIO), alpha_safeguard=0.2)
    prefill(fused, ids, adakv)
    cases["adakv"] = []
    for layer in fused.model.layers:
        _, heads, positions = layer.self_attn.masked_key_indices
        masked = [set(positions[heads == h].tolist()) for h in range(fused.config.num_key_value_heads)]
        cases["adakv"].append([[p for p in range(ids.shape[1]) if p not in m] for m in masked])
    # KVzipPress on the passage as kvpress's pipeline feeds a context: inside the chat
    # template's user turn, the question's part cut off. It loads the tokenizer by the model's
    # name, which a GGUF-loaded model lacks: it is handed the one loaded here.
    separator = "#" * (len(PASSAGE) + 10)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": PASSAGE + separator}], add_generation_prompt=True, tokenize=False
    )
    kvzip_ids = tokenizer.encode(rendered.split(separator)[0], return_tensors="pt", add_special_tokens=False)
    import kvpress.presses.kvzip_press as kvzip_module

    kvzip_module.AutoTokenizer = type("Given", (), {"from_pretrained": staticmethod(lambda *a, **k: tokenizer)})
    kvzip_scores = {}
    for name, chunk_size in [("kvzip", 2048), ("kvzip_chunked", 100)]:
        kvzip = KVzipPress(compression_ratio=RATIO, chunk_size=chunk_size)
        recorded = kvzip_scores[name] = []

        def recording_compress_post(model, press=kvzip, compress_post=kvzip.compress_post, recorded=recorded):
            recorded.extend(press.score_val[:, 0].tolist())
            compress_post(model)

        kvzip.compress_post = recording_compress_post
        prefill(fused, kvzip_ids, kvzip)
        cases[name] = []
        for layer in fused.model.layers:
            _, heads, positions = layer.self_attn.masked_key_indices
            masked = [set(positions[heads == h].tolist()) for h in range(fused.config.num_key_value_heads)]
            cases[name].append([[p for p in range(kvzip_ids.shape[1]) if p not in m] for m in masked])
    # DuoAttentionPress with a given pattern (its loader fetches DuoAttention's files).
    import kvpress.presses.duo_attention_press as duo_module

    duo_pattern = torch.rand(
        fused.config.num_hidden_layers,
        fused.config.num_key_value_heads,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    ).numpy()
    duo_module.DuoAttentionPress.load_attention_pattern = staticmethod(lambda model: (16, 64, duo_pattern))
    prefill(fused, ids, DuoAttentionPress(head_compression_ratio=RATIO))
    cases["duo_attention"] = []
    for layer in fused.model.layers:
        _, heads, positions = layer.self_attn.masked_key_indices
        masked = [set(positions[heads == h].tolist()) for h in range(fused.config.num_key_value_heads)]
        cases["duo_attention"].append([[p for p in range(ids.shape[1]) if p not in m] for m in masked])
    fixture = {
        "model": gguf.name,
        "kvpress": __import__("kvpress").__version__ if hasattr(__import__("kvpress"), "__version__") else "0.5.5",
        "transformers": __import__("transformers").__version__,
        "ratio": 1 / (1 - RATIO),
        "ids": ids[0].tolist(),
        "kept": cases,
        "tova_scores": tova_margins(model, ids, cases["tova"]),
        "snapkv_scores": snapkv.recorded,
        "knorm_scores": knorm.recorded,
        "keydiff_scores": keydiff.recorded,
        "expected_attention_scores": expected.recorded,
        "question_ids": question_ids[0].tolist(),
        "kvzip_ids": kvzip_ids[0].tolist(),
        "kvzip_scores": kvzip_scores["kvzip"],
        "kvzip_chunked_scores": kvzip_scores["kvzip_chunked"],
        "duo_pattern": duo_pattern.tolist(),
        "answers": answers,
    }
    Path(sys.argv[2]).write_text(json.dumps(fixture))
    print(f"{len(fixture['ids'])} tokens; kept per layer:",
          {k: len(v[0][0]) for k, v in cases.items()})


if __name__ == "__main__":
    main()
