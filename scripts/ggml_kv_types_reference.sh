#!/usr/bin/env bash
# The fixture of llama.cpp's KV cache block types (q8_0, q4_0, q4_1, iq4_nl): bytes and
# read-back values of ggml_quantize_chunk on fixed rows, from scripts/ggml_kv_types.c linked
# against the ggml of the llama.cpp source that scripts/llamacpp.sh builds.
#
#   scripts/ggml_kv_types_reference.sh > crates/longctx-kv/tests/fixtures/ggml_kv_types.json
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/llamacpp.sh
src="${LONGCTX_CACHE:-$HOME/.cache/longctx}/llama.cpp"
# Downloads and configures the source where needed, then builds the ggml-base library (its
# path is not the tool path the function prints).
llamacpp_tool ggml-base 2 >/dev/null
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
gcc -O2 -o "$out/ggml_kv_types" scripts/ggml_kv_types.c \
  -I "$src/llama_cpp_python-0.3.36/vendor/llama.cpp/ggml/include" \
  -L "$src/build/bin" -lggml-base -Wl,-rpath,"$src/build/bin" -lm
"$out/ggml_kv_types"
