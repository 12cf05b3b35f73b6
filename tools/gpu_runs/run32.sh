#!/usr/bin/env bash
# device run 32 (2026-12-02, fourth session): warps_for() takes 4 warps for rows of <= 16 steps when the
# grid fills half a wave of 4-warp blocks (run 31). Every GGUF test (default, separate SwiGLU, two row
# tiles, 4 and 8 warps pinned); A/B against the run-27 library (.gpu/lib-base) per kernel and on the four
# GGUF files, alternating; and whether the int8 GEMV of the project's format would gain the same way
# (KUIPER_INT8_GEMV_WARPS=4).   carry: .pack   kind: nvidia-h200
export NCCL_NVLS_ENABLE=0
export KUIPER_SHARED_DIR=$PWD/.gpu/shared KUIPER_SOURCE_DIR=$PWD KUIPER_BIN_DIR=$PWD/.gpu/bin PYTHONPATH=$PWD/.gpu/pylib
export KUIPER_GGUF_EXPORTS=/dev/shm/gguf_exports KUIPER_HF_EXPORTS=/dev/shm/hf_exports
NEW=$PWD/.gpu/lib; BASE=$PWD/.gpu/lib-base:$PWD/.gpu/lib; export LD_LIBRARY_PATH=$NEW
b=.gpu/bin; D=/dev/shm; T0=$(date +%s); t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for s in llama2-7b llama3-8b; do for ty in q4_k_m q8_0; do
  timeout 150 python3 tools/make_random_gguf.py --shape $s --type $ty --out $D/$s-$ty.gguf > /dev/null & done; done
timeout 120 python3 test/export_hf_fixtures.py $KUIPER_HF_EXPORTS 2>&1 | tail -1
timeout 120 python3 test/export_gguf_fixtures.py $KUIPER_GGUF_EXPORTS 2>&1 | tail -1; t
g='^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED'
echo "== test_gguf"; timeout 150 $b/test_gguf > $OUT/test_gguf.txt 2>&1; echo "rc $?"; grep -E "$g" $OUT/test_gguf.txt
echo "== test_gguf, separate SwiGLU"; KUIPER_QUANT_SWIGLU=separate timeout 150 $b/test_gguf --gtest_brief=1 2>&1 | grep -E "$g"
echo "== test_gguf cuda, two tiles"; KUIPER_QUANT_GEMV_TILES=2 timeout 120 $b/test_gguf --gtest_brief=1 --gtest_filter='*Cuda*' 2>&1 | grep -E "$g"
for w in 4 8; do echo "== test_gguf cuda, $w warps"; KUIPER_QUANT_GEMV_WARPS=$w timeout 120 $b/test_gguf --gtest_brief=1 --gtest_filter='*Cuda*' 2>&1 | grep -E "$g"; done; t
for lib in base new; do [ $lib = base ] && L=$BASE || L=$NEW
  echo "== kernel_bench quant quant3, $lib"; LD_LIBRARY_PATH=$L timeout 120 $b/kernel_bench quant; LD_LIBRARY_PATH=$L timeout 120 $b/kernel_bench quant3; done; t
for w in default 4; do echo "== kernel_bench gemv, int8 warps $w"
  [ $w = default ] && unset KUIPER_INT8_GEMV_WARPS || export KUIPER_INT8_GEMV_WARPS=$w
  timeout 120 $b/kernel_bench gemv | grep int8; done; unset KUIPER_INT8_GEMV_WARPS; t
wait
f='^(decode)|rror'
for round in 1 2; do for s in llama2-7b llama3-8b; do for ty in q4_k_m q8_0; do for lib in base new; do
  [ $lib = base ] && L=$BASE || L=$NEW; [ $s = llama2-7b ] && dt=fp16 || dt=bf16
  echo "== round $round $s $ty $lib"
  LD_LIBRARY_PATH=$L timeout 120 $b/llama_bench -m $D/$s-$ty.gguf --dtype $dt -p 512 -n 128 -r 3 2>&1 | grep -E "$f"
done; done; done; done; t
rm -f $D/llama*.gguf
for w in default 4; do echo "== llama_bench llama2-7b int8, int8 warps $w"
  [ $w = default ] && unset KUIPER_INT8_GEMV_WARPS || export KUIPER_INT8_GEMV_WARPS=$w
  timeout 120 $b/llama_bench --shape llama2-7b --weights int8 --dtype fp16 -p 16 -n 128 -r 3 2>&1 | grep -E "$f"; done; t
unset KUIPER_INT8_GEMV_WARPS
for x in test_gpu_model test_batch; do echo "== $x"; timeout 150 $b/$x --gtest_brief=1 2>&1 | grep -E "$g"; done; t
