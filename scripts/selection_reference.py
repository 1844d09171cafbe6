"""Tokens kept by KVCache-Factory's SnapKV and PyramidKV (their own `update_kv`), for
`crates/longctx-kv/tests/selection_reference.rs`.

Run by hand with torch and transformers installed (CPU is enough), given a checkout of
Zefan-Cai/KVCache-Factory:

    python3 scripts/selection_reference.py PATH/TO/KVCache-Factory \
        crates/longctx-kv/tests/fixtures/selection.json

It draws seeded random queries, keys and values (before RoPE) for 3 layers of 4 query heads
over 2 key/value heads, rotates queries and keys as Llama does (half rotation, theta 10000,
float32 angles), calls `SnapKVCluster.update_kv` and `PyramidKVCluster.update_kv` with
unrepeated key/value heads (KVCache-Factory's kv-head mode, scores averaged over each group)
and max pooling (the LongBench settings of SnapKV's and PyramidKV's scripts), and stores
which positions each layer's key/value heads keep. Two prompt lengths: one long enough for
PyramidKV's layer schedule, one short enough for its uniform branch.
"""

import json
import sys

import torch

from fixture_util import flat

Q_HEADS, KV_HEADS, DIM, LAYERS, THETA = 4, 2, 16, 3, 10000.0
WINDOW, KERNEL, CAPACITY, BETA = 8, 7, 40, 20


def rotate(x):
    """Llama's RoPE at positions 0..n (half rotation), angles in float32."""
    n = x.shape[1]
    inv_freq = (1.0 / (THETA ** (torch.arange(0, DIM, 2, dtype=torch.float64) / DIM))).float()
    angles = torch.arange(n, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    half = DIM // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated_half * sin


def kept_positions(keys, compressed):
    """For each key/value head, the positions whose rotated key rows were kept, ascending."""
    out = []
    for head, rows in zip(keys, compressed):
        matches = (rows[:, None, :] == head[None, :, :]).all(-1)
        out.append(sorted(int(matches[r].nonzero()[0, 0]) for r in range(rows.shape[0])))
    return out



def main():
    factory, out_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, factory)
    from pyramidkv.pyramidkv_utils import PyramidKVCluster, SnapKVCluster, _grouped_window_attn_cache

    generator = torch.Generator().manual_seed(0)
    cases = []
    for tokens in [100, 50]:
        layers = []
        for layer in range(LAYERS):
            q = torch.randn(Q_HEADS, tokens, DIM, generator=generator)
            k = torch.randn(KV_HEADS, tokens, DIM, generator=generator)
            v = torch.randn(KV_HEADS, tokens, DIM, generator=generator)
            rq, rk = rotate(q), rotate(k)
            snap = SnapKVCluster(
                window_size=WINDOW, max_capacity_prompt=CAPACITY, kernel_size=KERNEL, pooling="maxpool"
            )
            pyramid = PyramidKVCluster(
                num_hidden_layers=LAYERS,
                window_size=WINDOW,
                max_capacity_prompt=CAPACITY,
                kernel_size=KERNEL,
                pooling="maxpool",
                beta=BETA,
                layer_idx=layer,
            )
            # The pooled window scores both rank by: where the budget cuts through a run of
            # equal (max-pooled) scores, torch.topk's choice among the ties is arbitrary.
            pooled = _grouped_window_attn_cache(
                rq[None], rk[None], Q_HEADS // KV_HEADS, WINDOW, KERNEL, "maxpool", "mean"
            )[0]
            kept = {}
            for name, cluster in [("snapkv", snap), ("pyramidkv", pyramid)]:
                keys, _ = cluster.update_kv(rk[None], rq[None], v[None], None, Q_HEADS // KV_HEADS)
                kept[name] = kept_positions(rk, keys[0])
            layers.append(
                dict(q=flat(q), k=flat(k), v=flat(v), kept=kept, pooled=flat(pooled))
            )
        cases.append(dict(tokens=tokens, layers=layers))
    fixture = dict(
        source="Zefan-Cai/KVCache-Factory pyramidkv/pyramidkv_utils.py (kv-head mode, maxpool)",
        torch=torch.__version__,
        q_heads=Q_HEADS,
        kv_heads=KV_HEADS,
        head_dim=DIM,
        layers=LAYERS,
        theta=THETA,
        window=WINDOW,
        kernel=KERNEL,
        capacity=CAPACITY,
        beta=BETA,
        cases=cases,
    )
    with open(out_path, "w") as f:
        json.dump(fixture, f)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
