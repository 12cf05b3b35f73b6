#!/usr/bin/env bash
# device run 23 (2026-12-02, second session): the final quant_gemv_mma.cu (commit 08651a2's refactor,
# compiled but never run before): every GGUF test on the GPU with the Hugging Face and GGUF fixtures
# exported there (run 20 lacked the Llama 2 tokenizer and the HF exports, so one case skipped), also with
# the two tiles forced (and the new SwiGLU-fused GEMV, GgufDequant.CudaGemvSwiglu*); per-kernel times;
# Llama-2-7B Q4_K_M / Q8_0 decode beside llama.cpp, and with KUIPER_QUANT_SWIGLU=fused; the GPU model
# tests (test_cuda_kernels: the scalar GEMV fallbacks now on gemv_scalar.cuh).   carry: .pack .anchors     kind: nvidia-h200
export LD_LIBRARY_PATH=$PWD/.gpu/lib:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0
export KUIPER_SHARED_DIR=$PWD/.gpu/shared KUIPER_SOURCE_DIR=$PWD KUIPER_BIN_DIR=$PWD/.gpu/bin PYTHONPATH=$PWD/.gpu/pylib
export KUIPER_GGUF_EXPORTS=/dev/shm/gguf_exports KUIPER_HF_EXPORTS=/dev/shm/hf_exports
b=.gpu/bin; D=/dev/shm; T0=$(date +%s)
t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 90 python3 test/export_hf_fixtures.py $KUIPER_HF_EXPORTS 2>&1 | tail -2
timeout 90 python3 test/export_gguf_fixtures.py $KUIPER_GGUF_EXPORTS 2>&1 | tail -2; t
echo "== test_gguf"; timeout 150 $b/test_gguf --gtest_brief=1 2>&1 | grep -vE "^\[cuda" | tail -8; t
echo "== test_gguf cuda, KUIPER_QUANT_GEMV_TILES=2"; KUIPER_QUANT_GEMV_TILES=2 timeout 120 $b/test_gguf --gtest_brief=1 --gtest_filter='*Cuda*' 2>&1 | grep -vE "^\[cuda" | tail -6; t
echo "== test_hf_fixtures"; timeout 120 $b/test_hf_fixtures --gtest_brief=1 2>&1 | tail -4; t
echo "== kernel_bench quant"; timeout 90 $b/kernel_bench quant 2>&1 | tail -20; t
for ty in q4_k_m q8_0; do timeout 120 python3 tools/make_random_gguf.py --shape llama2-7b --type $ty --out $D/l2-$ty.gguf | tail -1; done; t
f='^(model|prefill|decode|bandwidth)|rror'
for ty in q4_k_m q8_0; do
  echo "== ours $ty"; timeout 120 $b/llama_bench -m $D/l2-$ty.gguf --dtype fp16 -p 512 -n 128 -r 3 2>&1 | grep -E "$f"; t
  echo "== ours $ty, KUIPER_QUANT_SWIGLU=fused"
  KUIPER_QUANT_SWIGLU=fused timeout 120 $b/llama_bench -m $D/l2-$ty.gguf --dtype fp16 -p 512 -n 128 -r 3 2>&1 | grep -E "$f"; t
done
for sw in separate fused; do  # the same greedy tokens expected (the fused kernel's sums are the GEMV's)
  echo "== llama_infer q4_k_m, KUIPER_QUANT_SWIGLU=$sw"
  KUIPER_QUANT_SWIGLU=$sw timeout 60 $b/llama_infer -m $D/l2-q4_k_m.gguf --dtype fp16 -p "Hello" -n 32 --temp 0 2>&1 | tail -2
done
xz -dc .anchors/bin/llama-bench.xz > /tmp/llama-bench && chmod +x /tmp/llama-bench
for ty in q4_k_m q8_0; do
  echo "== llama.cpp $ty"; LD_LIBRARY_PATH=/usr/local/cuda/lib64:$PWD/.anchors/lib timeout 150 /tmp/llama-bench -m $D/l2-$ty.gguf -ngl 99 -fa 1 -p 512 -n 128 -r 3 2>&1 | grep -E "^\| llama|build"; t
done
rm -f $D/l2-*.gguf
for x in test_gpu_model test_batch test_cuda_kernels; do echo "== $x"; timeout 150 $b/$x --gtest_brief=1 2>&1 | grep -vE "^\[ *(OK|RUN) " | tail -3; t; done
