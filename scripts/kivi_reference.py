"""Outputs of the benchmark's own KIVI attention, for `crates/longctx-kv/tests/reference.rs`.

The benchmark (henryzhongsc/longctx_bench) runs KIVI as `LlamaFlashAttention_KIVI` in
`pipeline/kivi/models/llama_kivi.py`, under transformers 4.36.2 (its
`requirements/tf_4.36.txt`). Run by hand on a CPU, with that transformers and the benchmark's
`pipeline/kivi` folder:

    pip install --target /tmp/tf436 "transformers==4.36.2" "tokenizers<0.20" "huggingface-hub<1.0"
    PYTHONPATH=/tmp/tf436 python3 scripts/kivi_reference.py PATH/TO/pipeline/kivi \
        crates/longctx-kv/tests/fixtures/kivi.json

Three pieces need a GPU and are replaced by the same computation in PyTorch; everything else
(the streaming rules: what is quantized when, per channel or per token, the residual window)
is the module as is:
- flash-attn's prompt pass: PyTorch's causal `scaled_dot_product_attention`;
- `quant.new_pack.triton_quantize_and_pack_along_last_dim`: its own body with the Triton
  min/max kernel replaced by `torch.min`/`torch.max` (the commented-out version in the same
  file) and the Triton packer by the file's own `pack_tensor` (the same bit layout);
- `quant.matmul.cuda_bmm_fA_qB_outer`: the file's own `unpack_tensor`, then code · scale +
  minimum per group, then a matmul.

The module runs in float32 here (the benchmark: float16); each group's minimum and scale are
rounded to float16 before the codes are computed, as the benchmark's float16 tensors hold them
(and as we store them); a decoded token's key, and between calls the module's full-precision
keys and values, are rounded to float16 likewise, so that a run quantized while decoding starts
from 16-bit values, as there. (We hold the prompt in float32 until it is complete, then as the
benchmark does.) One layer of 4 query heads over 2 key/value
heads of 32 channels, identity output projection, seeded random projections; 80 prompt tokens,
then 56 decoding steps; groups of 16, residual 32, at 2 and 4 bits.
"""

import importlib
import sys
import types

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

Q_HEADS, KV_HEADS, DIM, TOKENS, PROMPT, THETA = 4, 2, 32, 136, 80, 10000.0
GROUP, RESIDUAL = 16, 32


def cpu_quant_modules():
    """`quant.new_pack` with Triton stubbed out, and a `quant.matmul` without the CUDA kernel."""
    triton = types.ModuleType("triton")
    triton.jit = lambda f: f
    language = types.ModuleType("triton.language")
    language.constexpr = object
    triton.language = language
    sys.modules["triton"], sys.modules["triton.language"] = triton, language
    new_pack = importlib.import_module("quant.new_pack")

    def quantize_and_pack_along_last_dim(data, group_size, bit):
        B, nh, D, T = data.shape
        assert T % group_size == 0
        num_groups = T // group_size
        scale_mn_shape = B, nh, D, num_groups
        data = data.reshape(B * nh * D, num_groups, group_size)
        mn = torch.min(data, dim=-1)[0]
        mx = torch.max(data, dim=-1)[0]
        scale = (mx - mn) / (2**bit - 1)
        # The benchmark's float16 model holds both in float16 (so do we).
        mn, scale = mn.half().to(data.dtype), scale.half().to(data.dtype)
        data = data - mn.unsqueeze(-1)
        data.div_(scale.unsqueeze(-1))
        data = data.clamp_(0, 2**bit - 1).round_().to(torch.int32)
        code = new_pack.pack_tensor(data.view(B, nh, D, T), bit, pack_dim=3)
        return code, scale.reshape(scale_mn_shape), mn.reshape(scale_mn_shape)

    new_pack.triton_quantize_and_pack_along_last_dim = quantize_and_pack_along_last_dim

    def bmm_fA_qB_outer(group_size, fA, qB, scales, zeros, bits, mqa=False):
        codes = new_pack.unpack_tensor(qB, bits, pack_dim=3).to(fA.dtype)
        B, nh, K, N = codes.shape
        codes = codes.view(B, nh, K, N // group_size, group_size)
        dequantized = codes * scales.unsqueeze(-1) + zeros.unsqueeze(-1)
        return torch.matmul(fA, dequantized.view(B, nh, K, N))

    matmul = types.ModuleType("quant.matmul")
    matmul.cuda_bmm_fA_qB_outer = bmm_fA_qB_outer
    sys.modules["quant.matmul"] = matmul


def run(llama_kivi, bits, hidden, weights):
    config = one_layer_config(Q_HEADS, KV_HEADS, DIM, THETA)
    config.k_bits, config.v_bits = bits, bits
    config.group_size, config.residual_length = GROUP, RESIDUAL
    config.use_flash = True
    attention = llama_kivi.LlamaFlashAttention_KIVI(config).eval()

    attention._flash_attention_forward = flash_stand_in
    load_projections(attention, weights)

    def sixteen_bit_window(cache):
        # The full-precision keys and values, held in 16 bits as the benchmark's float16
        # model (and we) hold them.
        return tuple(
            x.half().float() if i in (1, 5) and x is not None else x for i, x in enumerate(cache)
        )

    outputs, cache = drive(attention, hidden, PROMPT, Q_HEADS, DIM, after_call=sixteen_bit_window)
    # What the cache holds at the end: quantized key tokens, 16-bit key tokens, quantized
    # value tokens, 16-bit value tokens.
    held = [
        0 if cache[0] is None else cache[0].shape[3] * (32 // bits),
        0 if cache[1] is None else cache[1].shape[2],
        0 if cache[4] is None else cache[4].shape[2],
        cache[5].shape[2],
    ]
    return outputs, held


def main():
    kivi_dir, out_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, kivi_dir)
    cpu_quant_modules()
    llama_kivi = importlib.import_module("models.llama_kivi")
    rotary = llama_kivi.apply_rotary_pos_emb

    def rotary_16bit_decoding(q, k, cos, sin, position_ids):
        # A decoded token's key enters the 16-bit window at once.
        q, k = rotary(q, k, cos, sin, position_ids)
        return q, (k.half().float() if k.shape[2] == 1 else k)

    llama_kivi.apply_rotary_pos_emb = rotary_16bit_decoding

    # Unit-variance queries, keys and values: scores of order one, not a one-hot softmax.
    hidden, weights = seeded_layer(TOKENS, Q_HEADS, KV_HEADS, DIM, (Q_HEADS * DIM) ** 0.5)
    q, k, v = heads_first(hidden, weights, DIM)
    cases = []
    for bits in (2, 4):
        outputs, held = run(llama_kivi, bits, hidden, weights)
        cases.append(dict(bits=bits, held=held, outputs=flat(outputs)))
    write_fixture(
        out_path,
        "henryzhongsc/longctx_bench pipeline/kivi/models/llama_kivi.py LlamaFlashAttention_KIVI",
        q,
        k,
        v,
        prompt=PROMPT,
        theta=THETA,
        group=GROUP,
        residual=RESIDUAL,
        cases=cases,
    )


if __name__ == "__main__":
    main()
