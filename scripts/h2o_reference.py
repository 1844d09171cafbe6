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

import json
import sys

import torch

Q_HEADS, KV_HEADS, DIM, TOKENS, PROMPT, THETA, RATIO = 4, 2, 16, 104, 80, 10000.0, 0.125


def flat(x):
    """Values as the shortest decimals that read back as the same float32."""
    return [float(str(f)) for f in x.detach().reshape(-1).numpy()]


def main():
    h2o_dir, out_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, h2o_dir)
    import transformers
    from transformers import LlamaConfig
    from transformers.cache_utils import DynamicCache
    from utils_hh import modify_llama

    config = LlamaConfig(
        hidden_size=Q_HEADS * DIM,
        num_attention_heads=Q_HEADS,
        num_key_value_heads=KV_HEADS,
        num_hidden_layers=1,
        intermediate_size=4 * Q_HEADS * DIM,
        max_position_embeddings=512,
        rope_theta=THETA,
    )
    config.heavy_ratio = RATIO
    config.recent_ratio = RATIO
    attention = modify_llama.LlamaFlashAttention2_h2o(config, layer_idx=0).eval()

    def causal(q, k, v, mask, length, dropout=0.0, softmax_scale=None):
        # flash-attn's layout [batch, tokens, heads, dim], key/value heads shared by groups.
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        groups = q.shape[1] // k.shape[1]
        k, v = (x.repeat_interleave(groups, dim=1) for x in (k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return out.transpose(1, 2)

    attention._flash_attention_forward = causal

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, TOKENS, Q_HEADS * DIM, generator=generator)
    with torch.no_grad():
        for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
            proj.weight.copy_(torch.randn(proj.weight.shape, generator=generator) / DIM**0.5)
        attention.o_proj.weight.copy_(torch.eye(Q_HEADS * DIM))
        q = attention.q_proj(hidden)[0].reshape(TOKENS, Q_HEADS, DIM).permute(1, 0, 2)
        k = attention.k_proj(hidden)[0].reshape(TOKENS, KV_HEADS, DIM).permute(1, 0, 2)
        v = attention.v_proj(hidden)[0].reshape(TOKENS, KV_HEADS, DIM).permute(1, 0, 2)

        modify_llama.phase_toggle = 1
        cache = DynamicCache()
        spans = [(0, PROMPT)] + [(p, 1) for p in range(PROMPT, TOKENS)]
        outs = []
        for start, length in spans:
            positions = torch.arange(start, start + length)[None]
            out, _, cache = attention(
                hidden[:, start : start + length],
                position_ids=positions,
                past_key_value=cache,
                use_cache=True,
            )
            outs.append(out[0].reshape(length, Q_HEADS, DIM).permute(1, 0, 2))
        outputs = torch.cat(outs, dim=1)

    fixture = dict(
        source="henryzhongsc/longctx_bench pipeline/h2o/utils_hh/modify_llama.py LlamaFlashAttention2_h2o",
        transformers=transformers.__version__,
        torch=torch.__version__,
        q_heads=Q_HEADS,
        kv_heads=KV_HEADS,
        head_dim=DIM,
        tokens=TOKENS,
        prompt=PROMPT,
        theta=THETA,
        heavy_ratio=RATIO,
        recent_ratio=RATIO,
        q=flat(q),
        k=flat(k),
        v=flat(v),
        outputs=flat(outputs),
    )
    with open(out_path, "w") as f:
        json.dump(fixture, f)
    print(f"wrote {out_path}: transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
