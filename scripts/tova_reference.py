"""Tokens kept and outputs of TOVA's own cache, for `crates/longctx-kv/tests/reference.rs`.

TOVA's repository (schwartz-lab-NLP/TOVA) implements the method as `TOVACache.reduce` in
`src/tova_cache.py`, called by its patched Llama attention (`src/convert_models/llama_custom.py`)
after the usual float32 softmax attention of each forward pass. This script drives that cache
the same way on seeded random queries, keys and values: store, attend (causal over the prompt,
then one query per step), reduce. Run by hand with a transformers that has `DynamicCache` with
`key_cache` lists (4.36 to 4.4x; TOVA pins 4.36.2):

    pip install --target /tmp/tf440 "transformers==4.40.2" "tokenizers<0.20" "huggingface-hub<1.0"
    PYTHONPATH=/tmp/tf440 python3 scripts/tova_reference.py PATH/TO/TOVA \
        crates/longctx-kv/tests/fixtures/tova.json

One layer of 4 query heads over 2 key/value heads of 16 channels (RoPE as Llama, theta 10000),
a cache of 24 tokens, 60 prompt tokens then 20 decoding steps.
"""

import json
import math
import sys

import torch

from fixture_util import flat

Q_HEADS, KV_HEADS, DIM, TOKENS, PROMPT, THETA, CACHE = 4, 2, 16, 80, 60, 10000.0, 24


def rotate(x, start):
    """Llama's RoPE at positions start.. (half rotation), angles in float32."""
    n = x.shape[1]
    inv_freq = (1.0 / (THETA ** (torch.arange(0, DIM, 2, dtype=torch.float64) / DIM))).float()
    angles = torch.arange(start, start + n, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    half = DIM // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin



def main():
    tova_dir, out_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, tova_dir)
    from src.tova_cache import TOVACache

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(Q_HEADS, TOKENS, DIM, generator=generator)
    k = torch.randn(KV_HEADS, TOKENS, DIM, generator=generator)
    v = torch.randn(KV_HEADS, TOKENS, DIM, generator=generator)
    rq, rk = rotate(q, 0), rotate(k, 0)
    cache = TOVACache(CACHE)
    groups = Q_HEADS // KV_HEADS
    outs, kept = [], []
    for start, length in [(0, PROMPT)] + [(p, 1) for p in range(PROMPT, TOKENS)]:
        keys, values = cache.update(
            rk[None, :, start : start + length], v[None, :, start : start + length], 0
        )
        keys_rep, values_rep = (x.repeat_interleave(groups, dim=1) for x in (keys, values))
        weights = torch.matmul(rq[None, :, start : start + length], keys_rep.transpose(2, 3))
        weights = weights / math.sqrt(DIM)
        if length > 1:
            causal = torch.full((length, length), float("-inf")).triu(1)
            weights = weights + causal
        weights = torch.softmax(weights, dim=-1, dtype=torch.float32)
        outs.append(torch.matmul(weights, values_rep)[0])
        cache.reduce(0, weights)
        # Which positions survive: match the kept key rows to the rotated keys.
        rows = cache.key_cache[0][0]
        kept.append(
            [
                sorted(int((head[:, None, :] == rk[g][None]).all(-1)[r].nonzero()[0, 0]) for r in range(head.shape[0]))
                for g, head in enumerate(rows)
            ]
        )
    fixture = dict(
        source="schwartz-lab-NLP/TOVA src/tova_cache.py TOVACache.reduce",
        torch=torch.__version__,
        q_heads=Q_HEADS,
        kv_heads=KV_HEADS,
        head_dim=DIM,
        tokens=TOKENS,
        prompt=PROMPT,
        theta=THETA,
        cache_size=CACHE,
        q=flat(q),
        k=flat(k),
        v=flat(v),
        outputs=flat(torch.cat(outs, dim=1)),
        kept=kept,
    )
    with open(out_path, "w") as f:
        json.dump(fixture, f)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
