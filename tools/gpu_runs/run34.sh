#!/usr/bin/env bash
# device run 34 (2026-12-02, fourth session): decode runs wq and wk as one stacked GEMV (wqk) in the
# layers whose wv alone has another type (Q4_K_M's Q6_K wv). Every GGUF test on the GPU; A/B against
# run 33's libkuiper.so (.gpu/lib-base), two rounds on the two Q4_K_M files, alternating.
#   carry: .pack     kind: nvidia-h200
export NCCL_NVLS_ENABLE=0
export KUIPER_SHARED_DIR=$PWD/.gpu/shared KUIPER_SOURCE_DIR=$PWD KUIPER_BIN_DIR=$PWD/.gpu/bin PYTHONPATH=$PWD/.gpu/pylib
export KUIPER_GGUF_EXPORTS=/dev/shm/gguf_exports KUIPER_HF_EXPORTS=/dev/shm/hf_exports
NEW=$PWD/.gpu/lib; BASE=$PWD/.gpu/lib-base:$PWD/.gpu/lib; export LD_LIBRARY_PATH=$NEW
b=.gpu/bin; D=/dev/shm; T0=$(date +%s); t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for s in llama2-7b llama3-8b; do
  timeout 150 python3 tools/make_random_gguf.py --shape $s --type q4_k_m --out $D/$s-q4_k_m.gguf > /dev/null & done
timeout 120 python3 test/export_hf_fixtures.py $KUIPER_HF_EXPORTS 2>&1 | tail -1
timeout 120 python3 test/export_gguf_fixtures.py $KUIPER_GGUF_EXPORTS 2>&1 | tail -1; t
g='^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED|^\[cuda\].*q4_k_m'
echo "== test_gguf"; timeout 150 $b/test_gguf > $OUT/test_gguf.txt 2>&1; echo "rc $?"; grep -E "$g" $OUT/test_gguf.txt
echo "== test_gguf, base lib (the same lines before)"; LD_LIBRARY_PATH=$BASE timeout 150 $b/test_gguf --gtest_filter='GgufModel.Cuda*' 2>&1 | grep -E "$g"; t
wait
for round in 1 2; do for s in llama2-7b llama3-8b; do for lib in base new; do
  [ $lib = base ] && L=$BASE || L=$NEW; [ $s = llama2-7b ] && dt=fp16 || dt=bf16
  echo "== round $round $s q4_k_m $lib"
  LD_LIBRARY_PATH=$L timeout 120 $b/llama_bench -m $D/$s-q4_k_m.gguf --dtype $dt -p 512 -n 128 -r 3 2>&1 | grep -E '^(decode)|rror'
done; done; done; t
echo "== llama_infer llama3-8b q4_k_m, greedy, both"; for lib in base new; do [ $lib = base ] && L=$BASE || L=$NEW
  LD_LIBRARY_PATH=$L timeout 60 $b/llama_infer -m $D/llama3-8b-q4_k_m.gguf --dtype bf16 -p "Hello" -n 24 --temp 0 2>/dev/null | md5sum; done
rm -f $D/llama*.gguf
for x in test_gpu_model test_batch; do echo "== $x"; timeout 150 $b/$x --gtest_brief=1 2>&1 | grep -E "$g"; done; t
