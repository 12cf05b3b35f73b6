#!/usr/bin/env bash
# device run 20 (2026-12-02): quant_gemv_mma.cu with two row tiles a block for q4_k (one token, large
# matrices): GGUF CUDA tests (also with the two tiles forced), per-kernel times with 1 and 2 tiles,
# Llama-2-7B Q4_K_M / Q8_0 decode beside llama.cpp, and the GPU model tests.
export LD_LIBRARY_PATH=$PWD/.gpu/lib:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0
export KUIPER_SHARED_DIR=$PWD/.gpu/shared KUIPER_SOURCE_DIR=$PWD KUIPER_BIN_DIR=$PWD/.gpu/bin KUIPER_GGUF_EXPORTS=$PWD/.gpu/gguf_exports PYTHONPATH=$PWD/.gpu/pylib
b=.gpu/bin; D=/dev/shm; T0=$(date +%s)
t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
timeout 60 python3 test/export_gguf_fixtures.py "$KUIPER_GGUF_EXPORTS" > /tmp/gg.log 2>&1 || { echo "gguf fixtures: some failed"; tail -1 /tmp/gg.log; }
echo "== test_gguf cuda"; timeout 120 $b/test_gguf --gtest_brief=1 --gtest_filter='*Cuda*' 2>&1 | grep -vE "^\[cuda" | tail -6; t
echo "== test_gguf cuda, KUIPER_QUANT_GEMV_TILES=2"; KUIPER_QUANT_GEMV_TILES=2 timeout 120 $b/test_gguf --gtest_brief=1 --gtest_filter='*Cuda*' 2>&1 | grep -vE "^\[cuda" | tail -6; t
echo "== kernel_bench quant"; timeout 90 $b/kernel_bench quant 2>&1 | tail -20; t
echo "== kernel_bench quant, KUIPER_QUANT_GEMV_TILES=1"; KUIPER_QUANT_GEMV_TILES=1 timeout 90 $b/kernel_bench quant 2>&1 | grep q4_k; t
for ty in q4_k_m q8_0; do timeout 120 python3 tools/make_random_gguf.py --shape llama2-7b --type $ty --out $D/l2-$ty.gguf | tail -1; done; t
f='^(model|prefill|decode|bandwidth)|rror'
for ty in q4_k_m q8_0; do
  echo "== ours $ty"; timeout 120 $b/llama_bench -m $D/l2-$ty.gguf --dtype fp16 -p 512 -n 128 -r 3 2>&1 | grep -E "$f"; t
done
xz -dc .anchors/bin/llama-bench.xz > /tmp/llama-bench && chmod +x /tmp/llama-bench
for ty in q4_k_m q8_0; do
  echo "== llama.cpp $ty"; LD_LIBRARY_PATH=/usr/local/cuda/lib64:$PWD/.anchors/lib timeout 150 /tmp/llama-bench -m $D/l2-$ty.gguf -ngl 99 -fa 1 -p 512 -n 128 -r 3 2>&1 | grep -E "^\| llama"; t
done
rm -f $D/l2-*.gguf
for x in test_gpu_model test_batch; do echo "== $x"; timeout 150 $b/$x --gtest_brief=1 2>&1 | grep -vE "^\[ *(OK|RUN) " | tail -3; t; done
