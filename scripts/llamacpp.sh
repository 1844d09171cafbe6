# Sourced by the comparison scripts: `llamacpp_tool NAME THREADS` prints the path of
# llama.cpp's NAME (llama-bench, llama-perplexity), building it first if needed from the
# source that the llama-cpp-python sdist vendors, into $LONGCTX_CACHE/llama.cpp.
llamacpp_tool() {
  local name="$1" threads="$2"
  local src="${LONGCTX_CACHE:-$HOME/.cache/longctx}/llama.cpp"
  local tool="$src/build/bin/$name"
  if [ ! -x "$tool" ]; then
    mkdir -p "$src"
    if [ ! -d "$src/llama_cpp_python-0.3.36" ]; then
      python3 -m pip download -q --no-deps --no-binary llama-cpp-python -d "$src" llama-cpp-python==0.3.36
      tar xzf "$src"/llama_cpp_python-0.3.36.tar.gz -C "$src"
    fi
    command -v cmake >/dev/null || python3 -m pip install -q cmake ninja
    # A CPU that advertises AMX in a VM crashed ggml's AMX matmul (SIGSEGV in
    # ggml_backend_amx_mul_mat, seen here): build without AMX wherever it is advertised.
    local flags=""
    grep -q amx_tile /proc/cpuinfo 2>/dev/null && flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    cmake -S "$src/llama_cpp_python-0.3.36/vendor/llama.cpp" -B "$src/build" -DCMAKE_BUILD_TYPE=Release \
      -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
      -DLLAMA_OPENSSL=OFF -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" >/dev/null
    cmake --build "$src/build" --target "$name" -j "$threads" >/dev/null
  fi
  echo "$tool"
}
