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

Besides the kept positions, each layer records how far the last kept and first dropped
tokens' scores are apart at the cut, so that a test can tell a real disagreement from a
near-tie that float rounding may flip.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from kvpress import StreamingLLMPress, TOVAPress

RATIO = 0.75  # kvpress's compression_ratio: keep int(L * 0.25), our ratio=4
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
    return [cache.layers[l].keys[0] for l in range(len(cache.layers))]


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
    full = prefill(model, ids)
    cases = {}
    for name, press in [
        ("streamingllm", StreamingLLMPress(compression_ratio=RATIO, n_sink=4)),
        ("tova", TOVAPress(compression_ratio=RATIO)),
    ]:
        compressed = prefill(model, ids, press)
        cases[name] = [kept_positions(f, c) for f, c in zip(full, compressed)]
    fixture = {
        "model": gguf.name,
        "kvpress": __import__("kvpress").__version__ if hasattr(__import__("kvpress"), "__version__") else "0.5.5",
        "transformers": __import__("transformers").__version__,
        "ratio": 1 / (1 - RATIO),
        "ids": ids[0].tolist(),
        "kept": cases,
        "tova_scores": tova_margins(model, ids, cases["tova"]),
    }
    Path(sys.argv[2]).write_text(json.dumps(fixture))
    print(f"{len(fixture['ids'])} tokens; kept per layer:",
          {k: len(v[0][0]) for k, v in cases.items()})


if __name__ == "__main__":
    main()
