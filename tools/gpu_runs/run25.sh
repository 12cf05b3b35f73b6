#!/usr/bin/env bash
# device run 25 (2026-12-02, third session): issue 20's whole table beside llama.cpp's llama-server in one
# call, llama-server built in that call (build_llama_server.sh, ~260 s on 16 cores, while the 16 GB GGUF is
# written); during the build (correctness only, no timing) every GGUF test with both fixture sets exported
# here, their full output in $OUT (run 23 cut it to its tail, and the pack then lacked Llama 3's
# tokenizer.json). Then run9_server_vs_llamacpp.sh with the time left.
#   carry: .pack .anchors .llamacpp     kind: nvidia-h200      writes $OUT/test_gguf*.txt
T0=$(date +%s); t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
export NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD/.gpu/pylib:$PWD/.anchors/gguf-py
[ -x .gpu/bin/llama_server ] || tar xJf .pack/gpu.tar.xz
M=/dev/shm/l3-8b-bf16.gguf
[ -f $M ] || timeout 150 python3 tools/make_random_gguf.py --shape llama3-8b --type bf16 --out $M > /tmp/gguf.log 2>&1 &
GPID=$!
BUILD_BUDGET_S=${BUILD_BUDGET_S:-360} nice -n 10 bash tools/gpu_runs/build_llama_server.sh > /tmp/build.txt 2>&1 &
BPID=$!
(
  export LD_LIBRARY_PATH=$PWD/.gpu/lib KUIPER_SHARED_DIR=$PWD/.gpu/shared KUIPER_SOURCE_DIR=$PWD KUIPER_BIN_DIR=$PWD/.gpu/bin
  export KUIPER_GGUF_EXPORTS=/dev/shm/gguf_exports KUIPER_HF_EXPORTS=/dev/shm/hf_exports
  timeout 120 python3 test/export_hf_fixtures.py $KUIPER_HF_EXPORTS 2>&1 | tail -1
  timeout 120 python3 test/export_gguf_fixtures.py $KUIPER_GGUF_EXPORTS 2>&1 | tail -1
  timeout 150 .gpu/bin/test_gguf > $OUT/test_gguf.txt 2>&1; echo "test_gguf rc $?"
  KUIPER_QUANT_GEMV_TILES=2 timeout 120 .gpu/bin/test_gguf --gtest_filter='*Cuda*' > $OUT/test_gguf_tiles2.txt 2>&1
  echo "test_gguf tiles 2 rc $?"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) " $OUT/test_gguf.txt $OUT/test_gguf_tiles2.txt
); t
wait $BPID; cat /tmp/build.txt; wait $GPID; ls -la $M || { cat /tmp/gguf.log; exit 1; }; t
RUN9_BUDGET_S=$(( ${RUN25_BUDGET_S:-585} - ($(date +%s) - T0) )) bash tools/gpu_runs/run9_server_vs_llamacpp.sh
