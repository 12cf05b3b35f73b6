#!/usr/bin/env bash
# Here (no GPU): builds for sm_90 into build-gpu/ and packs what tools/gpu_run.sh needs into .gpu/:
# the programs and the libraries the GPU machine lacks (../shared/device/bundle.sh), the test data
# from ../shared/models it reads (the Hugging Face fixtures are exported there). Keep .gpu/ out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
# Shared libraries: the kernels' device code is then in one libkuiper_core.so, not in every program.
BUILD_DIR=build-gpu tools/build.sh -DKUIPER_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DBUILD_SHARED_LIBS=ON
rm -rf .gpu && mkdir -p .gpu/shared/models
progs=(llama_infer llama_bench llama_server test_cuda_kernels test_gpu_model test_gpu_paged test_batch test_gguf test_multi_gpu
       test_peer_comm test_hf_fixtures test_out_of_memory)
../shared/device/bundle.sh .gpu "${progs[@]/#/build-gpu/bin/}"
# kernel_bench (per-kernel timings, not in the CMake build) against the same libkuiper_core.so.
/usr/local/cuda/bin/nvcc -std=c++17 -O2 -arch=sm_90 -DKUIPER_WITH_CUDA -Ikuiper/include tools/kernel_bench.cu \
  -Lbuild-gpu/kuiper -lkuiper_core -lglog -o .gpu/bin/kernel_bench
strip .gpu/bin/* .gpu/lib/libkuiper*  # keeps the pack well under the 64 MiB a run may carry
cp -r ../shared/models/stories260K ../shared/models/llama2 ../shared/models/llama3 .gpu/shared/models/ 2>/dev/null || true
# The gguf package (pure Python) for test/export_gguf_fixtures.py and tools/make_random_gguf.py there.
gguf_dir=$(python3 -c 'import gguf, os; print(os.path.dirname(gguf.__file__))' 2>/dev/null) &&
  mkdir -p .gpu/pylib && cp -r "$gguf_dir" .gpu/pylib/ && rm -rf .gpu/pylib/gguf/__pycache__
du -sh .gpu
# Compressed for the run's carry (.gpu is ~46 MB, .pack/gpu.tar.xz ~13 MB): tar -xJf .pack/gpu.tar.xz there.
mkdir -p .pack && rm -f .pack/gpu.tar.xz && tar -cf - .gpu | xz -T2 -6 > .pack/gpu.tar.xz && du -sh .pack/gpu.tar.xz
