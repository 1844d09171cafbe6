#!/usr/bin/env bash
# Side-by-side speed of longctx and llama.cpp on the same GGUF and thread count.
#
#   scripts/bench_vs_llamacpp.sh [THREADS]
#
# llama.cpp is built from the source that the llama-cpp-python sdist vendors (into
# $LONGCTX_CACHE/llama.cpp), unless LLAMA_BENCH points at an existing llama-bench binary.
# Run nothing else meanwhile: both programs spin-wait on their thread pools.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
cache="${LONGCTX_CACHE:-$HOME/.cache/longctx}"
cargo build --release -q
./target/release/longctx fetch >/dev/null
model="$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"

if [ -z "${LLAMA_BENCH:-}" ]; then
  src="$cache/llama.cpp"
  LLAMA_BENCH="$src/build/bin/llama-bench"
  if [ ! -x "$LLAMA_BENCH" ]; then
    mkdir -p "$src"
    python3 -m pip download -q --no-deps --no-binary llama-cpp-python -d "$src" llama-cpp-python==0.3.36
    tar xzf "$src"/llama_cpp_python-0.3.36.tar.gz -C "$src"
    command -v cmake >/dev/null || python3 -m pip install -q cmake ninja
    vendor="$src/llama_cpp_python-0.3.36/vendor/llama.cpp"
    cmake -S "$vendor" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF >/dev/null
    cmake --build "$src/build" --target llama-bench -j "$threads" >/dev/null
  fi
fi

echo "## llama.cpp (llama-bench, $threads threads): pp = prefill, tg = decode, @ dN = after N tokens"
"$LLAMA_BENCH" -m "$model" -t "$threads" -p 512,4096 -n 0 -r 3 -o md 2>/dev/null | grep -E '^\|'
"$LLAMA_BENCH" -m "$model" -t "$threads" -p 0 -n 64 -d 0,512,4096 -r 3 -o md 2>/dev/null | grep -E '^\|' | tail -n 3
echo
echo "## longctx ($threads threads): decode after a prompt of 'context' tokens"
./target/release/longctx bench --model "$model" --threads "$threads" --contexts 1,512,4096 --decode-tokens 64
