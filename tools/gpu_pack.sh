#!/usr/bin/env bash
# Here (no GPU): builds for sm_90 into build/ and packs what tools/gpu_run.sh needs into .gpu/:
# the programs and the libraries the GPU machine lacks (../shared/device/bundle.sh), the test data
# from ../shared/models it reads, and the Hugging Face fixture exports. Keep .gpu/ out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/build.sh -DCMAKE_CUDA_ARCHITECTURES=90
rm -rf .gpu && mkdir -p .gpu/shared/models
../shared/device/bundle.sh .gpu build/bin
cp -r ../shared/models/stories260K ../shared/models/llama3 .gpu/shared/models/ 2>/dev/null || true
rm -f .gpu/shared/models/llama3/tokenizer.json  # 9 MB, not needed there
python3 test/export_hf_fixtures.py .gpu/hf_exports --shared ../shared >/dev/null
du -sh .gpu
