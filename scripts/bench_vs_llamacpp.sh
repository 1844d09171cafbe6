#!/usr/bin/env bash
# Side-by-side speed of longctx and llama.cpp on the same GGUF and thread count.
#
#   scripts/bench_vs_llamacpp.sh [THREADS] [MODEL NAME]   (default: the default model)
#
# llama.cpp is built from the source that the llama-cpp-python sdist vendors (into
# $LONGCTX_CACHE/llama.cpp, scripts/llamacpp.sh), unless LLAMA_BENCH points at an existing
# llama-bench binary.
# Run nothing else meanwhile: both programs spin-wait on their thread pools.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
cargo build --release -q
model="$(./target/release/longctx fetch --model "${2:-smollm2-135m}")"

source scripts/llamacpp.sh
LLAMA_BENCH="${LLAMA_BENCH:-$(llamacpp_tool llama-bench "$threads")}"

echo "## llama.cpp (llama-bench, $threads threads): pp = prefill, tg = decode, @ dN = after N tokens"
# Both attention paths: flash attention (llama-bench's `auto` picks it on CPU) decodes
# slower at depth on this machine than the plain one; compare with the faster of the two.
"$LLAMA_BENCH" -m "$model" -t "$threads" -fa on,off -p 512,4096,8000 -n 0 -r 3 -o md 2>/dev/null | grep -E '^\|'
"$LLAMA_BENCH" -m "$model" -t "$threads" -fa on,off -p 0 -n 64 -d 0,512,4096,8000 -r 3 -o md 2>/dev/null | grep -E '^\|' | tail -n 8
echo
echo "## longctx ($threads threads): decode after a prompt of 'context' tokens"
./target/release/longctx bench --model "$model" --threads "$threads" --contexts 1,512,4096,8000 --decode-tokens 64
