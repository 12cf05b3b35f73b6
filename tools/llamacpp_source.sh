#!/usr/bin/env bash
# Here (the dev machine, which reaches PyPI): llama.cpp's source for the llama-server side by side of
# docs/benchmarks.md, packed to travel to the GPU machine, where tools/gpu_runs/build_llama_server.sh
# builds it. The source is the vendor/llama.cpp of the llama_cpp_python 0.3.36 source distribution on
# PyPI: llama.cpp commit 0c1e570, the commit of ../shared/anchors (its SOURCES.txt). Left out, to keep
# the carry small (8 MB): the model vocabularies, docs, benches and the backends other than CPU and CUDA.
# Writes .llamacpp/src.tar.xz (git-ignored). Only for measuring: nothing of it enters the project.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: llama_cpp_python==0.3.36 -d "$work"
tar -xzf "$work"/llama_cpp_python-0.3.36.tar.gz -C "$work"
mkdir -p .llamacpp
ex=(models docs benches build)
for b in sycl vulkan opencl hexagon cann musa metal webgpu; do ex+=("ggml/src/ggml-$b"); done
tar -C "$work"/llama_cpp_python-0.3.36/vendor "${ex[@]/#/--exclude=llama.cpp/}" -cf - llama.cpp |
  xz -T2 -6 > .llamacpp/src.tar.xz
echo "llama.cpp 0c1e570 (llama_cpp_python 0.3.36 sdist): .llamacpp/src.tar.xz, $(du -h .llamacpp/src.tar.xz | cut -f1)"
