#!/usr/bin/env bash
# Build tools the llama.cpp teacher backend (llama-cpp-sys-2) needs beyond Rust and a C++
# compiler: cmake (builds the vendored llama.cpp) and libclang (bindgen). Installed from
# Debian's packages when missing; a second run is a no-op. Arguments name more commands to
# install the same way (`make test` adds chromium, for the span viewer's browser check).
set -euo pipefail
have_libclang() {
    [ -n "${LIBCLANG_PATH:-}" ] && return 0
    ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1
}
missing=()
command -v cmake >/dev/null || missing+=(cmake)
have_libclang || missing+=(libclang-dev)
command -v c++ >/dev/null || missing+=(g++)
for tool in "$@"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing build tools: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    echo "error: ${missing[*]} missing and not root; install them (Debian: apt-get install ${missing[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
