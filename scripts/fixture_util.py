"""What the reference scripts beside this file share: how tensors are written into fixtures,
and the seeded one-layer attention they drive (imported as `fixture_util`; Python puts the
running script's folder on the path)."""

import json

import torch


def flat(x):
    """Values as the shortest decimals that read back as the same float32."""
    return [float(str(f)) for f in x.detach().float().cpu().reshape(-1).numpy()]


def seeded_layer(tokens, q_heads, kv_heads, dim, weight_scale):
    """Hidden states and query/key/value projection weights, drawn in that order from seed 0;
    each weight is a standard normal divided by `weight_scale`."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, tokens, q_heads * dim, generator=generator)
    shapes = [(q_heads * dim, q_heads * dim)] + [(kv_heads * dim, q_heads * dim)] * 2
    weights = [torch.randn(s, generator=generator) / weight_scale for s in shapes]
    return hidden, weights


def load_projections(attention, weights):
    """The seeded weights into a Llama-style attention module, with an identity output
    projection so that its output is the attention itself."""
    with torch.no_grad():
        for proj, w in zip((attention.q_proj, attention.k_proj, attention.v_proj), weights):
            proj.weight.copy_(w)
        attention.o_proj.weight.copy_(torch.eye(attention.o_proj.weight.shape[0]))


def heads_first(hidden, weights, dim):
    """Queries, keys and values before RoPE as [heads, tokens, dim]."""
    with torch.no_grad():
        return [
            (hidden[0] @ w.T).reshape(hidden.shape[1], w.shape[0] // dim, dim).permute(1, 0, 2)
            for w in weights
        ]


def drive(attention, hidden, prompt, heads, dim, cache=None, after_call=lambda cache: cache):
    """The prompt in one call, then one token a call, through a Llama-style attention module
    of the transformers of its time (tuple or `Cache` past key values); its outputs as
    [heads, tokens, dim]. `after_call` may rewrite the cache between calls."""
    tokens = hidden.shape[1]
    spans = [(0, prompt)] + [(p, 1) for p in range(prompt, tokens)]
    outs = []
    with torch.no_grad():
        for start, length in spans:
            out, _, cache = attention(
                hidden[:, start : start + length],
                position_ids=torch.arange(start, start + length)[None],
                past_key_value=cache,
                use_cache=True,
            )
            outs.append(out[0].reshape(length, heads, dim).permute(1, 0, 2))
            cache = after_call(cache)
    return torch.cat(outs, dim=1), cache


def write_fixture(path, source, q, k, v, **fields):
    """One fixture: where it came from, the library versions, the layer's shape, its queries,
    keys and values before RoPE, and the script's own fields."""
    import transformers

    fixture = dict(
        source=source,
        transformers=transformers.__version__,
        torch=torch.__version__,
        q_heads=q.shape[0],
        kv_heads=k.shape[0],
        head_dim=q.shape[2],
        tokens=q.shape[1],
        q=flat(q),
        k=flat(k),
        v=flat(v),
        **fields,
    )
    with open(path, "w") as f:
        json.dump(fixture, f)
    print(f"wrote {path}: transformers {transformers.__version__}")


def one_layer_config(q_heads, kv_heads, dim, theta):
    """A one-layer Llama configuration of the given attention shape."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=q_heads * dim,
        num_attention_heads=q_heads,
        num_key_value_heads=kv_heads,
        num_hidden_layers=1,
        intermediate_size=4 * q_heads * dim,
        max_position_embeddings=512,
        rope_theta=theta,
    )


def flash_stand_in(q, k, v, mask, length, dropout=0.0, softmax_scale=None):
    """flash-attn's causal attention (its `_flash_attention_forward` in these modules) in
    PyTorch, on its layout [batch, tokens, heads, dim]: key/value heads shared by groups of
    query heads, and the causal mask aligned to the last key (flash-attn >= 2.1), so that a
    single decoding query sees every key."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    groups = q.shape[1] // k.shape[1]
    k, v = (x.repeat_interleave(groups, dim=1) for x in (k, v))
    queries, keys = q.shape[2], k.shape[2]
    visible = torch.arange(keys)[None, :] <= torch.arange(queries)[:, None] + (keys - queries)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=visible)
    return out.transpose(1, 2)
