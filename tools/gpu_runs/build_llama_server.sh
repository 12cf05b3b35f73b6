#!/usr/bin/env bash
# On the GPU machine: builds llama.cpp's llama-server (and nothing else of it) from .llamacpp/src.tar.xz
# (tools/llamacpp_source.sh) into .llamacpp-build/, for the side by side of run9_server_vs_llamacpp.sh.
# Release, CUDA of the machine, sm_90 SASS only (90-real), flash attention (FA_ALL_QUANTS off), CUDA
# graphs on (llama.cpp's default), NCCL off (one GPU), static llama / ggml. Resumable: .llamacpp-build/
# stays on a warm machine between calls, so a build cut by BUILD_BUDGET_S (default 540 s) goes on in the
# next call. Prints the wall time; exit 0 once .llamacpp-build/llama-server exists.
#   carry: .llamacpp     kind: nvidia-h200
set -u
cd "$(dirname "$0")/../.."
out=.llamacpp-build
[ -x $out/llama-server ] && { echo "llama-server already built"; exit 0; }
[ -f .llamacpp/src.tar.xz ] || { echo "no .llamacpp/src.tar.xz (tools/llamacpp_source.sh, and carry .llamacpp)"; exit 1; }
T0=$(date +%s)
mkdir -p $out
[ -d $out/llama.cpp ] || tar -xJf .llamacpp/src.tar.xz -C $out
cd $out/llama.cpp
gen=(); command -v ninja > /dev/null && gen=(-G Ninja)
if [ ! -f build/CMakeCache.txt ]; then
  cmake -B build "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real \
    -DGGML_CUDA_FA_ALL_QUANTS=OFF -DGGML_CUDA_NCCL=OFF -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DCMAKE_CUDA_COMPILER=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc) \
    > ../configure.log 2>&1 || { echo "llama.cpp: configure failed"; tail -20 ../configure.log; exit 1; }
fi
timeout "${BUILD_BUDGET_S:-540}" cmake --build build --target llama-server -j "$(nproc)" > ../build.log 2>&1
rc=$?
echo "llama-server build: rc $rc after $(( $(date +%s) - T0 )) s on $(nproc) cores; $(grep -c 'Building' ../build.log) objects this call"
[ $rc -eq 0 ] || { tail -5 ../build.log; exit 1; }
cp build/bin/llama-server ../llama-server
