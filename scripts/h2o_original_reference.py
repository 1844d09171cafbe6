"""Outputs and kept positions of the original H2O, for `crates/longctx-kv/tests/reference.rs`.

The original H2O (FMInference/H2O) drops for real in `H2OLlamaAttention` of
`h2o_hf/utils_real_drop/modify_llama.py`: dense attention over the prompt whose weights, summed
over queries, start the heavy-hitter scores; then after the prompt and after every decoded
token, `H2OKVCache_LayerWise` keeps the `hh_size` best-scored older tokens plus the
`recent_size` newest, per head. That is our `h2o` with `count_prefill=true`. Run by hand on a
CPU, with the transformers of its time and FMInference/H2O's `h2o_hf` folder:

    pip install --target /tmp/tf436 "transformers==4.36.2" "tokenizers<0.20" "huggingface-hub<1.0"
    PYTHONPATH=/tmp/tf436 python3 scripts/h2o_original_reference.py PATH/TO/h2o_hf \
        crates/longctx-kv/tests/fixtures/h2o_original.json

The module is used as is (it supports multi-head attention only, so 4 query heads over 4
key/value heads of 16 channels); identity output projection, seeded random projections; 80
prompt tokens, then 24 decoding steps at hh_size = recent_size = 10. The positions kept after
each call are read off the cache by matching its rows to the rows it was given.
"""

import importlib
import sys

import torch

from fixture_util import (
    drive,
    flat,
    heads_first,
    load_projections,
    one_layer_config,
    seeded_layer,
    write_fixture,
)

HEADS, DIM, TOKENS, PROMPT, THETA, HEAVY, RECENT = 4, 16, 104, 80, 10000.0, 10, 10


class KeptPositions:
    """Wraps the module's `H2OKVCache_LayerWise`, following which positions each head keeps."""

    def __init__(self, cache):
        self.cache = cache
        self.positions = [[] for _ in range(HEADS)]
        self.after_call = []

    def __getattr__(self, name):
        return getattr(self.cache, name)

    def __call__(self, past_key_values, attn_score_cache):
        kept = self.cache(past_key_values, attn_score_cache)
        given, held = past_key_values[0][0], kept[0][0]
        new = given.shape[1] - len(self.positions[0])
        start = len(self.after_call) and self.after_call[-1][1]
        for h in range(HEADS):
            candidates = self.positions[h] + list(range(start, start + new))
            rows = iter(range(given.shape[1]))
            self.positions[h] = [
                candidates[next(i for i in rows if torch.equal(given[h, i], row))]
                for row in held[h]
            ]
        self.after_call.append(([list(p) for p in self.positions], start + new))
        return kept


def main():
    h2o_dir, out_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, h2o_dir)

    modify_llama = importlib.import_module("utils_real_drop.modify_llama")
    config = one_layer_config(HEADS, HEADS, DIM, THETA)
    config.hh_size, config.recent_size = HEAVY, RECENT
    attention = modify_llama.H2OLlamaAttention(config).eval()
    attention.kv_cache = KeptPositions(attention.kv_cache)

    hidden, weights = seeded_layer(TOKENS, HEADS, HEADS, DIM, DIM**0.5)
    load_projections(attention, weights)
    q, k, v = heads_first(hidden, weights, DIM)
    outputs, _ = drive(attention, hidden, PROMPT, HEADS, DIM)
    write_fixture(
        out_path,
        "FMInference/H2O h2o_hf/utils_real_drop/modify_llama.py H2OLlamaAttention",
        q,
        k,
        v,
        prompt=PROMPT,
        theta=THETA,
        hh_size=HEAVY,
        recent_size=RECENT,
        outputs=flat(outputs),
        kept=[kept for kept, _ in attention.kv_cache.after_call],
    )


if __name__ == "__main__":
    main()
