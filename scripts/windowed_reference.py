"""Reference outputs of the benchmark's own InfLLM and StreamingLLM attention, for
`crates/longctx-kv/tests/benchmark_reference.rs`.

The benchmark (henryzhongsc/longctx_bench) vendors InfLLM's code in
`pipeline/inf_stream_llm/inf_llm/`; its `ContextManager` (InfLLM) and `stream_llm_forward`
(StreamingLLM) assert CUDA, so this runs on a CUDA machine (any GPU; float32, TF32 off).
Run by hand, with the path of that `inf_llm` folder:

    python3 scripts/windowed_reference.py PATH/TO/pipeline/inf_stream_llm/inf_llm \
        crates/longctx-kv/tests/fixtures/benchmark_windowed.json

It draws seeded random queries, keys and values (before RoPE) for one layer of 4 query heads
over 2 key/value heads, feeds the prompt in one call (as the benchmark's forward does) and then
decodes token by token, and stores every output. The Rust test feeds the same tensors to
`InfLlmCache` and `DroppingCache` and compares.
"""

import json
import sys

import torch

from fixture_util import flat

Q_HEADS, KV_HEADS, DIM, TOKENS, PROMPT, THETA = 4, 2, 32, 104, 80, 10000.0


def spans():
    return [(0, PROMPT)] + [(p, 1) for p in range(PROMPT, TOKENS)]


def infllm_outputs(attention, q, k, v, n_init, n_local, topk, block, chunk, representatives):
    """`context_manager.py` as `inf_llm_forward` drives it (local and global q/k/v are the
    same projections), with the benchmark's settings: max_cached_block = topk, no faiss."""
    rope = attention.rope.RotaryEmbeddingESM(DIM, THETA)
    manager = attention.context_manager.ContextManager(
        rope,
        n_init=n_init,
        n_local=n_local,
        block_size=block,
        max_cached_block=topk,
        topk=topk,
        exc_block_size=chunk,
        score_decay=None,
        fattn=False,
        repr_topk=representatives,
        cache_strategy="lru",
        chunk_topk_calc=None,
        async_global_stream=False,
        pin_memory=False,
        faiss=False,
        perhead=False,
    )
    outs = []
    for start, length in spans():
        qs, ks, vs = (x[None, :, start : start + length].contiguous() for x in (q, k, v))
        outs.append(manager.append(qs, ks, vs, qs, ks, vs)[0])
    return torch.cat(outs, dim=1)


def streaming_outputs(attention, q, k, v, n_init, n_local):
    """`stream_llm.py`'s forward with identity projections: the query is `[1, t, heads·d]`,
    key_value carries keys then values."""
    forward = attention.stream_llm.stream_llm_forward(n_local, n_init, fattn=False)
    rope = attention.rope.RotaryEmbeddingESM(DIM, THETA)
    kv_width = KV_HEADS * DIM
    past, outs = None, []
    for start, length in spans():
        query = q[:, start : start + length].permute(1, 0, 2).reshape(1, length, Q_HEADS * DIM)
        keys = k[:, start : start + length].permute(1, 0, 2).reshape(1, length, kv_width)
        values = v[:, start : start + length].permute(1, 0, 2).reshape(1, length, kv_width)
        out, past = forward(
            None,
            query,
            torch.cat([keys, values], dim=-1),
            rope,
            True,
            past,
            lambda x: x,
            lambda x: x[..., :kv_width],
            lambda x: x[..., kv_width:],
            lambda x: x,
            DIM,
            Q_HEADS,
            KV_HEADS,
        )
        outs.append(out.reshape(length, Q_HEADS, DIM).permute(1, 0, 2))
    return torch.cat(outs, dim=1)



def main():
    inf_llm_dir, out_path = sys.argv[1], sys.argv[2]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sys.path.insert(0, inf_llm_dir)
    import attention  # the vendored inf_llm/attention package
    import attention.context_manager
    import attention.rope
    import attention.stream_llm

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(Q_HEADS, TOKENS, DIM, generator=generator)
    k = torch.randn(KV_HEADS, TOKENS, DIM, generator=generator)
    v = torch.randn(KV_HEADS, TOKENS, DIM, generator=generator)
    q_, k_, v_ = (x.cuda() for x in (q, k, v))
    cases = []
    # InfLLM with retrieval (2 blocks of 8 among many), and with topk = 0 as a small budget
    # gives the benchmark's InfLLM (int(0.324 T) < 128): blocks form but are never read.
    for n_init, n_local, topk in [(2, 24, 2), (2, 40, 0)]:
        settings = dict(n_init=n_init, n_local=n_local, topk=topk, block=8, chunk=8, representatives=2)
        out = infllm_outputs(attention, q_, k_, v_, **settings)
        cases.append(dict(method="infllm", outputs=flat(out), **settings))
    out = streaming_outputs(attention, q_, k_, v_, n_init=2, n_local=22)
    cases.append(dict(method="streamingllm", n_init=2, n_local=22, outputs=flat(out)))
    fixture = dict(
        source="henryzhongsc/longctx_bench pipeline/inf_stream_llm/inf_llm/attention (torch_impl)",
        torch=torch.__version__,
        device=torch.cuda.get_device_name(),
        q_heads=Q_HEADS,
        kv_heads=KV_HEADS,
        head_dim=DIM,
        tokens=TOKENS,
        prompt=PROMPT,
        theta=THETA,
        q=flat(q),
        k=flat(k),
        v=flat(v),
        cases=cases,
    )
    with open(out_path, "w") as f:
        json.dump(fixture, f)
    print(f"wrote {out_path}: {len(cases)} cases, torch {torch.__version__}")


if __name__ == "__main__":
    main()
