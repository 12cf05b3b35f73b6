#!/usr/bin/env bash
# Configures and builds into build/ (or $BUILD_DIR), Release. Extra arguments go to CMake, e.g.
# -DKUIPER_WITH_CUDA=OFF.
# With the CUDA toolkit in /usr/local/cuda, the CUDA backend is built for sm_90 (H100/H200).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export CUDACXX=/usr/local/cuda/bin/nvcc; fi
dir=${BUILD_DIR:-build}
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)"
