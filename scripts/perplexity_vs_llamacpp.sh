#!/usr/bin/env bash
# Perplexity of longctx and llama.cpp's llama-perplexity on the same GGUF, text, window and
# threads: longctx under `--protocol llama.cpp` (windows of CTX tokens, each starting with BOS
# where the model uses one, the second half scored) against `llama-perplexity -c CTX`.
#
#   scripts/perplexity_vs_llamacpp.sh [THREADS] [CTX] [MODEL NAME...]   (default: every named model)
#
# With KV_TYPE=T (q8_0, q4_0, q4_1, iq4_nl) both sides hold a quantized cache: llama.cpp
# `-ctk T -ctv T -fa on` (flash attention, which a quantized V needs; the Hadamard rotation
# on, its default) against longctx's preset T.
#
# The text is the first four haystack essays. llama.cpp is built by scripts/llamacpp.sh,
# unless LLAMA_PERPLEXITY points at a binary.
# Run nothing else meanwhile: both programs spin-wait on their thread pools.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
ctx="${2:-512}"
models=("${@:3}")
[ "${#models[@]}" -eq 0 ] && models=(smollm2-135m qwen2.5-coder-0.5b gemma-3-270m qwen2.5-coder-1.5b)
cargo build --release -q
haystack="$(./target/release/longctx fetch | awk '/^haystack/ {print $2}')"
text="$(mktemp)"
trap 'rm -f "$text"' EXIT
ls "$haystack"/*.txt | sort | head -4 | xargs cat > "$text"

cache=() method=()
if [ -n "${KV_TYPE:-}" ]; then
  cache=(-ctk "$KV_TYPE" -ctv "$KV_TYPE" -fa on)
  method=(--method "$KV_TYPE")
fi

source scripts/llamacpp.sh
LLAMA_PERPLEXITY="${LLAMA_PERPLEXITY:-$(llamacpp_tool llama-perplexity "$threads")}"

echo "| model | llama.cpp | longctx | ratio |"
echo "|---|--:|--:|--:|"
for name in "${models[@]}"; do
  gguf="$(./target/release/longctx fetch --model "$name")"
  theirs="$("$LLAMA_PERPLEXITY" -m "$gguf" -f "$text" -c "$ctx" -b "$ctx" -t "$threads" "${cache[@]}" 2>&1 \
    | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')"
  ours="$(./target/release/longctx perplexity --model "$name" --text "$text" --ctx "$ctx" \
    --protocol llama.cpp --threads "$threads" "${method[@]}" | sed -n 's/.*perplexity \([0-9.]*\).*/\1/p')"
  echo "| $name | $theirs | $ours | $(python3 -c "print(f'{$ours / $theirs:.4f}')") |"
done
