#!/usr/bin/env python3
"""A tiny random-weight Mamba (transformers' MambaForCausalLM) and its logits, for longctx's
tests: no real Mamba weights can be fetched here.

Run by hand (not in CI), with torch and transformers 4.45:

    python3 scripts/mamba_reference.py --tokenizer crates/longctx/tests/fixtures/tiny_llama3 \
        --out crates/longctx/tests/fixtures/tiny_mamba

It writes config.json, model.safetensors and the tokenizer (tiny_llama3's, 512 tokens) into
--out, and reference_logits.json: a fixed prompt's token ids, the logits of every position
from one forward pass (prefill), and the logits of feeding the same ids one at a time with
the model's cache (decoding), which transformers computes by its recurrent step.
"""
import argparse
import json
import os
import shutil

import torch
from fixture_util import flat
from transformers import MambaConfig, MambaForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(args.tokenizer, name), os.path.join(args.out, name))
    config = MambaConfig(
        vocab_size=512,
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
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = MambaForCausalLM(config).eval()
    with torch.no_grad():
        # Larger than the default init, so that every part of the block moves the logits.
        for name, w in model.named_parameters():
            if name.endswith("A_log") or name.endswith("D") or "norm" in name:
                continue
            w.normal_(0.0, 0.2)
    model.save_pretrained(args.out, safe_serialization=True)

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 512, (1, 40), generator=generator)
    with torch.no_grad():
        prefill = model(ids).logits[0]
        out = model(ids[:, :24], use_cache=True)
        cache = out.cache_params
        steps = [out.logits[0, -1]]
        for t in range(24, 40):
            out = model(
                ids[:, t : t + 1],
                cache_params=cache,
                use_cache=True,
                cache_position=torch.tensor([t]),
            )
            cache = out.cache_params
            steps.append(out.logits[0, -1])
    import transformers

    with open(os.path.join(args.out, "reference_logits.json"), "w") as f:
        json.dump(
            dict(
                source="scripts/mamba_reference.py",
                transformers=transformers.__version__,
                torch=torch.__version__,
                ids=ids[0].tolist(),
                prefill=flat(prefill),
                decode_from=24,
                decode=flat(torch.stack(steps)),
            ),
            f,
        )
    print("prefill vs decode, last position:", float((prefill[-1] - steps[-1]).abs().max()))


if __name__ == "__main__":
    main()
