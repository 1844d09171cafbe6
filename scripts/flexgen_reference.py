"""Outputs of the benchmark's FlexGen attention, for `crates/longctx-kv/tests/reference.rs`.

The benchmark (henryzhongsc/longctx_bench) runs FlexGen as simulated quantization in
`LlamaFlashAttention2` of `pipeline/flexgen/models/llama_simquant.py`, under transformers
4.40.2 (its `requirements/tf_4.40.txt`): the cache holds keys and values in full precision,
and every call quantizes and dequantizes all of them per token (`AsymGroupedQuantizer`,
groups of 32 channels, `k_quant_dim = v_quant_dim = "token"`) before flash attention reads
them, the prompt's own and the new token's included. Run by hand on a CPU, with that
transformers and the benchmark's `pipeline/flexgen` folder:

    pip install --target /tmp/tf440 "transformers==4.40.2" "tokenizers<0.20" "huggingface-hub<1.0"
    PYTHONPATH=/tmp/tf440 python3 scripts/flexgen_reference.py PATH/TO/pipeline/flexgen \
        crates/longctx-kv/tests/fixtures/flexgen.json

Two pieces are replaced: flash-attn by the same causal attention in PyTorch, and
`AsymGroupedQuantizer` by its own arithmetic with each group's minimum and scale rounded to
float16 first, as the benchmark's float16 model holds them (and as we store them); the module
runs in float32. One layer of 4 query heads over 2 key/value heads of 64 channels, identity
output projection, seeded random projections; 80 prompt tokens, then 24 decoding steps, at 2
and 4 bits.
"""

import importlib
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

Q_HEADS, KV_HEADS, DIM, TOKENS, PROMPT, THETA, GROUP = 4, 2, 64, 104, 80, 10000.0, 32


class Float16Grouped:
    """`AsymGroupedQuantizer.forward` with the minimum and scale held in float16."""

    @staticmethod
    def apply(input, clip_val, num_bits, group_size):
        bs, nh, seqlen, d = input.shape
        groups = input.view(bs, nh, seqlen, d // group_size, group_size)
        mx, mn = groups.max(dim=-1)[0].unsqueeze(-1), groups.min(dim=-1)[0].unsqueeze(-1)
        scale = (mx - mn) / (2**num_bits - 1)
        mn, scale = mn.half().to(input.dtype), scale.half().to(input.dtype)
        groups = torch.nn.functional.relu((groups - mn) / scale).round_()
        return (groups * scale + mn).view(bs, nh, seqlen, -1)


def main():
    flexgen_dir, out_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, flexgen_dir)
    from transformers.cache_utils import DynamicCache

    llama_simquant = importlib.import_module("models.llama_simquant")
    hidden, weights = seeded_layer(TOKENS, Q_HEADS, KV_HEADS, DIM, (Q_HEADS * DIM) ** 0.5)
    q, k, v = heads_first(hidden, weights, DIM)
    cases = []
    for bits in (2, 4):
        config = one_layer_config(Q_HEADS, KV_HEADS, DIM, THETA)
        config.k_bits, config.v_bits, config.group_size = bits, bits, GROUP
        config.k_quant_dim, config.v_quant_dim, config.residual_length = "token", "token", 0
        attention = llama_simquant.LlamaFlashAttention2(config, layer_idx=0).eval()
        attention._flash_attention_forward = flash_stand_in
        attention.act_quantizer_k = attention.act_quantizer_v = Float16Grouped
        load_projections(attention, weights)
        outputs, _ = drive(attention, hidden, PROMPT, Q_HEADS, DIM, cache=DynamicCache())
        cases.append(dict(bits=bits, outputs=flat(outputs)))
    write_fixture(
        out_path,
        "henryzhongsc/longctx_bench pipeline/flexgen/models/llama_simquant.py LlamaFlashAttention2",
        q,
        k,
        v,
        prompt=PROMPT,
        theta=THETA,
        group=GROUP,
        cases=cases,
    )


if __name__ == "__main__":
    main()
