#!/usr/bin/env bash
# Runs on the GPU test machine what can only run there, from a pack made here:
#   tools/gpu_pack.sh                      (here: build for sm_90, bundle programs + test data into .gpu/)
#   bash tools/gpu_run.sh [tests|sanitize|bench|all]   (there, in the repository root)
# Writes logs under $OUT when set (the device tool brings them back), else under .gpu/out.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
out=${OUT:-.gpu/out}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/.gpu/lib:${LD_LIBRARY_PATH:-}
export KUIPER_SHARED_DIR=$PWD/.gpu/shared KUIPER_SOURCE_DIR=$PWD KUIPER_BIN_DIR=$PWD/.gpu/bin
export KUIPER_HF_EXPORTS=$PWD/.gpu/hf_exports
export NCCL_NVLS_ENABLE=0
bin=.gpu/bin
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

run_tests() {
  local rc=0
  python3 test/export_hf_fixtures.py "$KUIPER_HF_EXPORTS" --shared "$KUIPER_SHARED_DIR" > /tmp/hf_exports.log 2>&1 ||
    { echo "hf exports failed:"; tail -5 /tmp/hf_exports.log; }
  # Every program under `timeout`: a hang costs minutes, not the whole call.
  for t in test_cuda_kernels test_gpu_model test_multi_gpu test_peer_comm test_out_of_memory; do
    echo "== $t"
    timeout 240 $bin/$t --gtest_brief=1 2>&1 | tail -25 || rc=1
  done
  echo "== test_hf_fixtures (CUDA)"
  timeout 120 $bin/test_hf_fixtures --gtest_filter='HfFixtures.Cuda*' 2>&1 | tail -30 || rc=1
  echo "== llama_infer: cuda vs cpu, stories260K greedy"
  local S=.gpu/shared/models/stories260K t=/tmp/gen
  mkdir -p $t
  $bin/llama_infer --model $S/stories260K.bin --tokenizer $S/tok512.model --prompt "Once upon a time" \
    --temperature 0 --n 200 --device cpu > $t/cpu.txt 2>$t/cpu.err
  for dt in fp32 bf16 fp16; do
    timeout 60 $bin/llama_infer --model $S/stories260K.bin --tokenizer $S/tok512.model --prompt "Once upon a time" \
      --temperature 0 --n 200 --device cuda --dtype $dt > $t/cuda_$dt.txt 2>$t/cuda_$dt.err
    if cmp -s $t/cpu.txt $t/cuda_$dt.txt; then echo "cuda $dt: identical to cpu"; else echo "cuda $dt: differs from cpu"; fi
    tail -1 $t/cuda_$dt.err
  done
  timeout 60 $bin/llama_infer --model models/storyteller.bin --prompt "Once upon a time" --n 120 --device cuda --seed 5 2>&1 | tail -3
  return $rc
}

run_sanitize() {
  # memcheck and synccheck over every kernel test; racecheck (slow: minutes) over the kernels that
  # share memory between threads (attention, matmul, norms); memcheck over the model tests.
  local log="$out/sanitize.log"
  : > "$log"
  for tool in memcheck synccheck racecheck; do
    local filter='*'
    [[ $tool == racecheck ]] && filter='*Attention*:*Matmul*:*Norm*:*Argmax*'
    echo "== compute-sanitizer $tool test_cuda_kernels ($filter)" | tee -a "$log"
    compute-sanitizer --tool $tool --error-exitcode 9 $bin/test_cuda_kernels --gtest_brief=1 --gtest_filter="$filter" \
      >> "$log" 2>&1
    echo "exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$log" | tail -2
  done
  # --report-api-errors no: ncclCommInitAll probes kernel images with cudaFuncGetAttributes and gets
  # (and handles) cudaErrorNoKernelImageForDevice 4 times; memcheck would count those as errors.
  echo "== compute-sanitizer memcheck test_gpu_model"
  compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 $bin/test_gpu_model --gtest_brief=1 \
    >> "$log" 2>&1
  echo "exit $?"; grep -E "ERROR SUMMARY|FAILED|PASSED" "$log" | tail -2
}

run_bench() {
  local b="$bin/llama_bench --reps 3"
  {
    $b --shape llama2-7b --weights fp16 --dtype fp16 --prompt_len 16 --gen 128
    $b --shape llama2-7b --weights int8 --dtype fp16 --prompt_len 16 --gen 128
    $b --shape llama3-8b --weights bf16 --dtype bf16 --prompt_len 16 --gen 128
    $b --shape llama2-7b --weights fp16 --dtype fp16 --prompt_len 512 --gen 16
    $b --shape llama2-7b --weights fp16 --dtype fp16 --prompt_len 2048 --gen 16 --reps 1
    $b --shape llama2-7b --weights fp16 --dtype fp16 --prompt_len 4000 --gen 64 --reps 1
  } 2>&1 | tee "$out/bench.txt" | grep -E "^(model|prefill|decode|bandwidth|memory)|error"
}

case $what in
  tests) run_tests ;;
  sanitize) run_sanitize ;;
  bench) run_bench ;;
  all) run_tests; run_bench; run_sanitize ;;
esac
