"""Outputs of the benchmark's own H2O attention, for `crates/longctx-kv/tests/reference.rs`.

The benchmark (henryzhongsc/longctx_bench) runs H2O as `LlamaFlashAttention2_h2o` in
`pipeline/h2o/utils_hh/modify_llama.py`, under transformers 4.40.2 (its
`requirements/tf_4.40.txt`): flash attention for the prompt (no scores), then its heavy-hitter
block for every decoded token (scores and masks per query head). Run by hand on a CPU, with
that transformers and the benchmark's `pipeline/h2o` folder:

    pip install --target /tmp/tf440 "transformers==4.40.2" "tokenizers<0.20" "huggingface-hub<1.0"
    PYTHONPATH=/tmp/tf440 python3 scripts/h2o_reference.py PATH/TO/pipeline/h2o \
        crates/longctx-kv/tests/fixtures/h2o.json

flash-attn needs CUDA, so its prompt pass is replaced by PyTorch's causal
`scaled_dot_product_attention`, the same computation; everything else is the module as is.
One layer of 4 query heads over 2 key/value heads of 16 channels, identity output projection,
seeded random projections; 80 prompt tokens, then 24 decoding steps at heavy = recent = 0.125
(the benchmark's 4x).
"""

import sys

import torch

from fixture_util import (
    drive,
    flash_stand_in,
    flat,
    heads_first,
    load_projections,
    one_layer_config,
    seeded_layer,
    write_fixture,
)

Q_HEADS, KV_HEADS, DIM, TOKENS, PROMPT, THETA, RATIO = 4, 2, 16, 104, 80, 10000.0, 0.125


def main():
    h2o_dir, out_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, h2o_dir)
    from transformers.cache_utils import DynamicCache
    from utils_hh import modify_llama

    config = one_layer_config(Q_HEADS, KV_HEADS, DIM, THETA)
    config.heavy_ratio = RATIO
    config.recent_ratio = RATIO
    attention = modify_llama.LlamaFlashAttention2_h2o(config, layer_idx=0).eval()

    attention._flash_attention_forward = flash_stand_in

    hidden, weights = seeded_layer(TOKENS, Q_HEADS, KV_HEADS, DIM, DIM**0.5)
    load_projections(attention, weights)
    q, k, v = heads_first(hidden, weights, DIM)
    modify_llama.phase_toggle = 1
    outputs, _ = drive(attention, hidden, PROMPT, Q_HEADS, DIM, cache=DynamicCache())
    write_fixture(
        out_path,
        "henryzhongsc/longctx_bench pipeline/h2o/utils_hh/modify_llama.py LlamaFlashAttention2_h2o",
        q,
        k,
        v,
        prompt=PROMPT,
        theta=THETA,
        heavy_ratio=RATIO,
        recent_ratio=RATIO,
        outputs=flat(outputs),
    )


if __name__ == "__main__":
    main()
