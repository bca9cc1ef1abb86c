#!/usr/bin/env bash
# Install llama-cpp-python (the reference implementation for `make bench`), built from its
# registry sdist with the machine's compiler. A second run is a no-op. Takes ~5-10 minutes
# on 2 cores the first time.
set -euo pipefail
if python3 -c "import llama_cpp" 2>/dev/null; then
    exit 0
fi
if ! command -v cmake >/dev/null; then
    python3 -m pip install --quiet cmake ninja
fi
# Native CPU flags, no BLAS, no server extras: the same kernels llama.cpp uses by default.
CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    python3 -m pip install --quiet --no-cache-dir "llama-cpp-python==0.3.16"
python3 -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
