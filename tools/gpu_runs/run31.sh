#!/usr/bin/env bash
# device run 31 (2026-12-02, fourth session): 4 against 8 warps a block for the block-type GEMV
# (KUIPER_QUANT_GEMV_WARPS pins the choice warps_for() makes by wave fill), per kernel on both shapes'
# matrices and on the two Q4_K_M files; the run-27 build.   carry: .pack   kind: nvidia-h200
export LD_LIBRARY_PATH=$PWD/.gpu/lib NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD/.gpu/pylib
b=.gpu/bin; D=/dev/shm; T0=$(date +%s); t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for s in llama2-7b llama3-8b; do
  timeout 150 python3 tools/make_random_gguf.py --shape $s --type q4_k_m --out $D/$s-q4_k_m.gguf > /dev/null & done
for w in default 4 8; do echo "== kernel_bench quant quant3, warps $w"
  [ $w = default ] && unset KUIPER_QUANT_GEMV_WARPS || export KUIPER_QUANT_GEMV_WARPS=$w
  timeout 120 $b/kernel_bench quant; timeout 120 $b/kernel_bench quant3; done; t
unset KUIPER_QUANT_GEMV_WARPS
wait
for round in 1 2; do for s in llama2-7b llama3-8b; do for w in default 4; do
  [ $s = llama2-7b ] && dt=fp16 || dt=bf16
  echo "== round $round $s q4_k_m warps $w"
  [ $w = default ] && unset KUIPER_QUANT_GEMV_WARPS || export KUIPER_QUANT_GEMV_WARPS=$w
  timeout 120 $b/llama_bench -m $D/$s-q4_k_m.gguf --dtype $dt -p 512 -n 128 -r 3 2>&1 | grep -E '^decode|rror'
done; done; done; t
rm -f $D/llama*.gguf
