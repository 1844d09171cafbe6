#!/usr/bin/env python3
"""Tiny random-weight linear-time and hybrid models (transformers' MambaForCausalLM,
Mamba2ForCausalLM and RecurrentGemmaForCausalLM) and their logits, for longctx's tests: no
real weights of these families can be fetched here.

Run by hand (not in CI), with torch and transformers (the version used is recorded in the
fixture; Mamba with 4.45, Mamba-2 and RecurrentGemma with 4.57, whose Mamba-2 clamps Δ to
`time_step_limit` as mamba_ssm does):

    python3 scripts/linear_reference.py --arch mamba \
        --tokenizer crates/longctx/tests/fixtures/tiny_llama3 \
        --out crates/longctx/tests/fixtures/tiny_mamba

    (likewise --arch mamba2 → tiny_mamba2, --arch recurrent_gemma → tiny_recurrent_gemma)

For Mamba and Mamba-2 it also converts the folder with llama.cpp's own converter into
OUT/<folder name>.gguf (llama.cpp's `mamba`/`mamba2` layout; see llamacpp_util.py, which needs
scripts/llamacpp.sh's build) and prints how far llama.cpp's logits for it are from the
reference: the same reference then checks longctx reading the GGUF layout.

It writes config.json, model.safetensors and the tokenizer (tiny_llama3's, 512 tokens) into
--out, and reference_logits.json: a fixed prompt's token ids, the logits of every position
of `prefill_tokens` of them from one forward pass (prefill), and the logits of feeding the
ids one at a time with the model's cache after a prefill of `decode_from` (decoding).

Two choices per architecture, stated:
- Mamba-2: transformers normalizes the gated output over the whole width; mamba_ssm (the
  code the paper ran) normalizes per group of `intermediate / n_groups` channels. The
  fixture has two groups and replaces transformers' gated norm by mamba_ssm's reference
  formula (`rms_norm_ref` in mamba_ssm/ops/triton/layernorm_gated.py, norm_before_gate=False).
- RecurrentGemma: transformers' local attention is right only within the window. Without
  a cache its prefill masks only the future (the whole prompt is attended); with a cache, a
  prompt longer than the window keeps its last `window` keys but masks them as if they were
  the first ones; and decoding after a shorter prompt attends, from position window − 1 on,
  to one zeroed slot in place of the oldest key (its ring shifts before it first fills).
  The reference is therefore transformers' cacheless forward with Griffin's local mask added
  (a key is seen by the `window` queries from its position on), over all 40 tokens, the
  window being 16: the decoding reference is the same logits (decoding must reproduce
  prefill), and the script checks that transformers' own decoding agrees with them up to
  position window − 2, where it is still right.
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
import transformers
from fixture_util import flat


def grouped_gated_norm(group_size):
    """mamba_ssm's gated RMS norm with groups (norm_before_gate=False), in f32."""

    def forward(self, hidden_states, gate=None):
        x = hidden_states.float()
        if gate is not None:
            x = x * torch.nn.functional.silu(gate.float())
        shape = x.shape
        x = x.reshape(*shape[:-1], -1, group_size)
        x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.variance_epsilon)
        return (x.reshape(shape) * self.weight.float()).to(hidden_states.dtype)

    return forward


def build(arch):
    """The model, the parameters its random draw leaves alone, and its prompt split."""
    common = dict(vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "mamba":
        config = transformers.MambaConfig(
            hidden_size=64,
            state_size=16,
            num_hidden_layers=2,
            expand=2,
            conv_kernel=4,
            time_step_rank="auto",
            use_bias=False,
            use_conv_bias=True,
            residual_in_fp32=True,
            layer_norm_epsilon=1e-5,
            tie_word_embeddings=True,
            **common,
        )
        return transformers.MambaForCausalLM(config), ("A_log", "D", "norm"), 40, 24
    if arch == "mamba2":
        config = transformers.Mamba2Config(
            hidden_size=64,
            expand=2,
            num_heads=8,
            head_dim=16,
            n_groups=2,
            state_size=16,
            num_hidden_layers=2,
            conv_kernel=4,
            chunk_size=16,
            use_bias=False,
            use_conv_bias=True,
            layer_norm_epsilon=1e-5,
            tie_word_embeddings=False,
            **common,
        )
        model = transformers.Mamba2ForCausalLM(config)
        from transformers.models.mamba2 import modeling_mamba2

        modeling_mamba2.MambaRMSNormGated.forward = grouped_gated_norm(128 // 2)
        return model, ("A_log", "D", "dt_bias", "norm"), 40, 24
    if arch == "recurrent_gemma":
        config = transformers.RecurrentGemmaConfig(
            hidden_size=48,
            intermediate_size=192,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=1,
            lru_width=48,
            attention_window_size=16,
            conv1d_width=4,
            logits_soft_cap=30.0,
            rms_norm_eps=1e-6,
            partial_rotary_factor=0.5,
            rope_theta=10000.0,
            block_types=("recurrent", "recurrent", "attention"),
            **common,
        )
        from transformers.models.recurrent_gemma import modeling_recurrent_gemma as rg

        causal = rg.RecurrentGemmaModel._update_causal_mask

        def local(self, attention_mask, input_tensor, cache_position):
            mask = causal(self, attention_mask, input_tensor, cache_position)
            if input_tensor.shape[1] == 1:
                return mask  # decoding: the keys are ring slots, not positions
            keys = torch.arange(mask.shape[-1])
            old = keys[None, :] <= cache_position[:, None] - self.config.attention_window_size
            return mask.masked_fill(old, torch.finfo(mask.dtype).min)

        rg.RecurrentGemmaModel._update_causal_mask = local
        return transformers.RecurrentGemmaForCausalLM(config), ("recurrent_param",), 40, 8
    raise SystemExit(f"unknown --arch {arch}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True, choices=["mamba", "mamba2", "recurrent_gemma"])
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(args.tokenizer, name), os.path.join(args.out, name))
    torch.manual_seed(0)
    model, kept, prefill_tokens, decode_from = build(args.arch)
    model = model.eval()
    with torch.no_grad():
        # Larger than the default init, so that every part of the block moves the logits.
        for name, w in model.named_parameters():
            if any(name.endswith(k) or k in name for k in kept):
                continue
            w.normal_(0.0, 0.2)
    model.save_pretrained(args.out, safe_serialization=True)

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 512, (1, 40), generator=generator)
    with torch.no_grad():
        prefill = model(ids[:, :prefill_tokens], use_cache=False).logits[0]
        step_args = {}
        out = model(
            ids[:, :decode_from],
            use_cache=True,
            cache_position=torch.arange(decode_from),
        )
        steps = [out.logits[0, -1]]
        for t in range(decode_from, 40):
            if args.arch != "recurrent_gemma":
                step_args = dict(cache_params=out.cache_params)
            out = model(
                ids[:, t : t + 1],
                use_cache=True,
                cache_position=torch.tensor([t]),
                **step_args,
            )
            steps.append(out.logits[0, -1])
    steps = torch.stack(steps)
    if args.arch == "recurrent_gemma":
        right = model.config.attention_window_size - 1 - decode_from
        own = float((steps[:right] - prefill[decode_from - 1 : decode_from - 1 + right]).abs().max())
        print(f"transformers' own decoding within the window, worst difference: {own}")
        assert own < 1e-4
        steps = prefill[decode_from - 1 :]
    with open(os.path.join(args.out, "reference_logits.json"), "w") as f:
        json.dump(
            dict(
                source=f"scripts/linear_reference.py --arch {args.arch}",
                transformers=transformers.__version__,
                torch=torch.__version__,
                ids=ids[0].tolist(),
                prefill_tokens=prefill_tokens,
                prefill=flat(prefill),
                decode_from=decode_from,
                decode=flat(steps),
            ),
            f,
        )
    if args.arch in ("mamba", "mamba2"):
        import llamacpp_util

        gguf_path = os.path.join(args.out, os.path.basename(os.path.normpath(args.out)) + ".gguf")
        llamacpp_util.convert(args.out, gguf_path, "llama-bpe")
        theirs = llamacpp_util.logits(gguf_path, decode_from, ids[0].tolist())
        vocab = prefill.shape[-1]
        for name, ours in (("prefill", prefill), ("decode", steps)):
            rows = np.array(theirs[name]).reshape(-1, vocab)
            diff = np.abs(rows - ours.numpy()[: len(rows)]).max()
            print(f"llama.cpp ({llamacpp_util.version()}) on the converted GGUF, {name}: {diff}")
    last = prefill_tokens - 1
    if last >= decode_from - 1:
        diff = float((prefill[last] - steps[last - decode_from + 1]).abs().max())
        print(f"prefill vs decode at position {last}: {diff}")


if __name__ == "__main__":
    main()
