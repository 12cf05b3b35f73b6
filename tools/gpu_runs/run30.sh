#!/usr/bin/env bash
# device run 30 (2026-12-02, fourth session): run 29's change split in two, against the run-27 library.
#   base (.gpu/lib-base): one step a warp before pdl_wait(), x by cp.async (waited with the weights)
#   a    (.gpu/lib-a):    both stage buffers filled before pdl_wait(), x by cp.async as in base
#   b    (.gpu/lib):      both buffers, x by plain loads, 8 in flight a thread (run 29: one at a time)
#   carry: .pack     kind: nvidia-h200
export NCCL_NVLS_ENABLE=0
export KUIPER_SHARED_DIR=$PWD/.gpu/shared KUIPER_SOURCE_DIR=$PWD KUIPER_BIN_DIR=$PWD/.gpu/bin PYTHONPATH=$PWD/.gpu/pylib
export KUIPER_GGUF_EXPORTS=/dev/shm/gguf_exports KUIPER_HF_EXPORTS=/dev/shm/hf_exports
lib() { case $1 in base) echo $PWD/.gpu/lib-base:$PWD/.gpu/lib;; a) echo $PWD/.gpu/lib-a:$PWD/.gpu/lib;; b) echo $PWD/.gpu/lib;; esac; }
b=.gpu/bin; D=/dev/shm; T0=$(date +%s); t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for s in llama2-7b llama3-8b; do for ty in q4_k_m q8_0; do
  timeout 150 python3 tools/make_random_gguf.py --shape $s --type $ty --out $D/$s-$ty.gguf > /dev/null & done; done
timeout 120 python3 test/export_hf_fixtures.py $KUIPER_HF_EXPORTS 2>&1 | tail -1
timeout 120 python3 test/export_gguf_fixtures.py $KUIPER_GGUF_EXPORTS 2>&1 | tail -1; t
g='^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED'
for v in a b; do export LD_LIBRARY_PATH=$(lib $v)
  echo "== $v: test_gguf"; timeout 150 $b/test_gguf --gtest_brief=1 2>&1 | grep -E "$g"
  echo "== $v: test_gguf, separate SwiGLU"; KUIPER_QUANT_SWIGLU=separate timeout 150 $b/test_gguf --gtest_brief=1 2>&1 | grep -E "$g"
  echo "== $v: test_gguf cuda, two tiles"; KUIPER_QUANT_GEMV_TILES=2 timeout 120 $b/test_gguf --gtest_brief=1 --gtest_filter='*Cuda*' 2>&1 | grep -E "$g"
done; t
for v in base a b; do echo "== kernel_bench quant quant3, $v"
  LD_LIBRARY_PATH=$(lib $v) timeout 120 $b/kernel_bench quant; LD_LIBRARY_PATH=$(lib $v) timeout 120 $b/kernel_bench quant3; done; t
wait
f='^(decode)|rror'
for round in 1 2; do for s in llama2-7b llama3-8b; do for ty in q4_k_m q8_0; do for v in base a b; do
  [ $s = llama2-7b ] && dt=fp16 || dt=bf16
  echo "== round $round $s $ty $v"
  LD_LIBRARY_PATH=$(lib $v) timeout 120 $b/llama_bench -m $D/$s-$ty.gguf --dtype $dt -p 512 -n 128 -r 3 2>&1 | grep -E "$f"
done; done; done; done; t
rm -f $D/llama*.gguf
