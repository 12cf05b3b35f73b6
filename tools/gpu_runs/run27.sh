#!/usr/bin/env bash
# device run 27 (2026-12-02, third session): issue 17's second shape, Llama-3-8B, as Q4_K_M and Q8_0
# GGUF files (random weights), ours (fused SwiGLU default) beside llama.cpp's llama-bench on the same files
# in the same call.   carry: .pack .anchors     kind: nvidia-h200
export LD_LIBRARY_PATH=$PWD/.gpu/lib NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD/.gpu/pylib
b=.gpu/bin; D=/dev/shm; T0=$(date +%s); t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for ty in q4_k_m q8_0; do timeout 150 python3 tools/make_random_gguf.py --shape llama3-8b --type $ty --out $D/l3-$ty.gguf | tail -1 & done; wait; t
xz -dc .anchors/bin/llama-bench.xz > /tmp/llama-bench && chmod +x /tmp/llama-bench
for ty in q4_k_m q8_0; do
  echo "== ours $ty"; timeout 120 $b/llama_bench -m $D/l3-$ty.gguf --dtype bf16 -p 512 -n 128 -r 3 2>&1 | grep -E '^(model|prefill|decode|bandwidth)|rror'; t
  echo "== llama.cpp $ty"; LD_LIBRARY_PATH=/usr/local/cuda/lib64:$PWD/.anchors/lib timeout 150 /tmp/llama-bench -m $D/l3-$ty.gguf -ngl 99 -fa 1 -p 512 -n 128 -r 3 2>&1 | grep -E "^\| llama|build"; t
done
echo "== llama_infer l3 q4_k_m, greedy"; timeout 60 $b/llama_infer -m $D/l3-q4_k_m.gguf --dtype bf16 -p "Hello" -n 16 --temp 0 2>&1 | tail -1
rm -f $D/l3-*.gguf
