"""What the reference scripts that run llama.cpp share (imported as `llamacpp_util`): where
scripts/llamacpp.sh builds it, its vendored `gguf` package, its converter, and its logits for
token ids through scripts/llamacpp_logits.c."""

import json
import os
import runpy
import subprocess
import sys

CACHE = os.environ.get("LONGCTX_CACHE", os.path.expanduser("~/.cache/longctx"))
LLAMA = os.path.join(CACHE, "llama.cpp")
VENDOR = os.path.join(LLAMA, "llama_cpp_python-0.3.36", "vendor", "llama.cpp")
BIN = os.path.join(LLAMA, "build", "bin")
sys.path.insert(0, os.path.join(VENDOR, "gguf-py"))
import gguf  # noqa: E402,F401  (re-exported: the gguf package llama.cpp vendors)


def version():
    """The llama-cpp-python release whose llama.cpp this is."""
    with open(os.path.join(VENDOR, "..", "..", "PKG-INFO")) as f:
        release = next(line.split()[1] for line in f if line.startswith("Version: "))
    return "vendored by llama-cpp-python " + release


def logits(model, decode_from, ids):
    """llama.cpp's logits for `ids` on one thread: every position from one batch (`prefill`),
    and a fresh sequence fed `decode_from` ids in one batch, then one id per batch
    (`decode`, from position decode_from − 1 to the second last). Builds the helper first."""
    tool = os.path.join(BIN, "llamacpp_logits")
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run(
        ["cc", "-O2", "-o", tool, os.path.join(here, "llamacpp_logits.c"),
         "-I", os.path.join(VENDOR, "include"), "-I", os.path.join(VENDOR, "ggml", "include"),
         "-L", BIN, "-lllama", "-lggml", "-lggml-base", "-Wl,-rpath," + BIN],
        check=True,
    )
    out = subprocess.run([tool, model, str(decode_from), ",".join(map(str, ids))],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def tokenize(model, text):
    """llama-tokenize's ids for `text`."""
    listed = subprocess.run(
        [os.path.join(BIN, "llama-tokenize"), "-m", model, "-p", text, "--ids", "--log-disable"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(listed.strip().splitlines()[-1])


def convert(folder, out, pre_tokenizer):
    """A Hugging Face folder converted to an f32 GGUF by llama.cpp's own converter. The
    converter names a BPE pre-tokenizer only for the hub tokenizers it knows by hash; a tiny
    fixture's is given here (it changes the vocabulary's metadata, not the weights)."""
    sys.path.insert(0, VENDOR)
    import conversion.base as base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre_tokenizer
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", folder, "--outfile", out, "--outtype", "f32"]
    try:
        runpy.run_path(os.path.join(VENDOR, "convert_hf_to_gguf.py"), run_name="__main__")
    finally:
        sys.argv = argv
