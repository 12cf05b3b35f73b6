#!/usr/bin/env bash
# device run 26 (2026-12-02, third session): the fused SwiGLU GEMV now the default for block types
# (KUIPER_QUANT_SWIGLU=separate: the GEMV, then swiglu). Every GGUF test with both fixture sets (the
# SwiGLU test's activations scaled so its fp16 q6_k results no longer overflow, run 25), the GPU model
# tests, and the decode A/B on Llama-2-7B Q4_K_M and Q8_0, each setting twice, alternating.
#   carry: .pack     kind: nvidia-h200
export LD_LIBRARY_PATH=$PWD/.gpu/lib NCCL_NVLS_ENABLE=0
export KUIPER_SHARED_DIR=$PWD/.gpu/shared KUIPER_SOURCE_DIR=$PWD KUIPER_BIN_DIR=$PWD/.gpu/bin PYTHONPATH=$PWD/.gpu/pylib
export KUIPER_GGUF_EXPORTS=/dev/shm/gguf_exports KUIPER_HF_EXPORTS=/dev/shm/hf_exports
b=.gpu/bin; D=/dev/shm; T0=$(date +%s); t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for ty in q4_k_m q8_0; do timeout 120 python3 tools/make_random_gguf.py --shape llama2-7b --type $ty --out $D/l2-$ty.gguf > /dev/null & done
timeout 120 python3 test/export_hf_fixtures.py $KUIPER_HF_EXPORTS 2>&1 | tail -1
timeout 120 python3 test/export_gguf_fixtures.py $KUIPER_GGUF_EXPORTS 2>&1 | tail -1; t
echo "== test_gguf"; timeout 150 $b/test_gguf > $OUT/test_gguf.txt 2>&1; echo "rc $?"; grep -E "^\[  (PASSED|FAILED|SKIPPED) " $OUT/test_gguf.txt
echo "== test_gguf, KUIPER_QUANT_SWIGLU=separate"; KUIPER_QUANT_SWIGLU=separate timeout 150 $b/test_gguf --gtest_brief=1 2>&1 | grep -E "^\[  (PASSED|FAILED|SKIPPED) "
echo "== test_gguf cuda, KUIPER_QUANT_GEMV_TILES=2"; KUIPER_QUANT_GEMV_TILES=2 timeout 120 $b/test_gguf --gtest_brief=1 --gtest_filter='*Cuda*' 2>&1 | grep -E "^\[  (PASSED|FAILED|SKIPPED) "; t
wait
f='^(prefill|decode)|rror'
for round in 1 2; do for ty in q4_k_m q8_0; do for sw in separate fused; do
  echo "== round $round $ty KUIPER_QUANT_SWIGLU=$sw"
  KUIPER_QUANT_SWIGLU=$sw timeout 120 $b/llama_bench -m $D/l2-$ty.gguf --dtype fp16 -p 512 -n 128 -r 3 2>&1 | grep -E "$f"
done; done; done; t
rm -f $D/l2-*.gguf
for x in test_gpu_model test_batch; do echo "== $x"; timeout 150 $b/$x --gtest_brief=1 2>&1 | grep -E "^\[  (PASSED|FAILED|SKIPPED) "; done; t
