#!/usr/bin/env bash
# device run 35 (2026-12-02, fourth session): the final tree (4-warp rule, wqk stack of run 34) beside llama.cpp's
# llama-bench on the same two Q4_K_M files (Q8_0 files have no mixed types: unchanged since run 33) in the same call, twice each, alternating.
#   carry: .pack .anchors     kind: nvidia-h200
export LD_LIBRARY_PATH=$PWD/.gpu/lib NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD/.gpu/pylib
b=.gpu/bin; D=/dev/shm; T0=$(date +%s); t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for s in llama2-7b llama3-8b; do for ty in q4_k_m; do
  timeout 150 python3 tools/make_random_gguf.py --shape $s --type $ty --out $D/$s-$ty.gguf | tail -1 & done; done; wait; t
xz -dc .anchors/bin/llama-bench.xz > /tmp/llama-bench && chmod +x /tmp/llama-bench
for round in 1 2; do for s in llama2-7b llama3-8b; do for ty in q4_k_m; do
  [ $s = llama2-7b ] && dt=fp16 || dt=bf16
  echo "== round $round ours $s $ty"; timeout 120 $b/llama_bench -m $D/$s-$ty.gguf --dtype $dt -p 512 -n 128 -r 3 2>&1 | grep -E '^(prefill|decode|bandwidth)|rror'
  echo "== round $round llama.cpp $s $ty"; LD_LIBRARY_PATH=/usr/local/cuda/lib64:$PWD/.anchors/lib timeout 150 /tmp/llama-bench -m $D/$s-$ty.gguf -ngl 99 -fa 1 -p 512 -n 128 -r 3 2>&1 | grep -E "^\| llama|build"
done; done; done; t
echo "== llama_infer llama3-8b q4_k_m, greedy"; timeout 60 $b/llama_infer -m $D/llama3-8b-q4_k_m.gguf --dtype bf16 -p "Hello" -n 16 --temp 0 2>&1 | tail -1
rm -f $D/llama*.gguf
