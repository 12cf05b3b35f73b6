#!/usr/bin/env bash
# device run 24 (planned): issue 20's side by side in one call, as the issue asks: build llama.cpp's
# llama-server on the GPU machine (build_llama_server.sh, ~1/8 of the dev machine's 2-core time), then the
# same bf16 Llama-3-8B GGUF and the same 64-stream load (512-token prompts, 256 outputs, 128 requests,
# seed 64, after a warm-up) against llama-server and llama_server. The other loads of the table:
# run9_server_vs_llamacpp.sh in the next call, while the machine is warm (it finds the build).
#   carry: .pack .anchors .llamacpp     kind: nvidia-h200
export NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD/.gpu/pylib:$PWD/.anchors/gguf-py
T0=$(date +%s); t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
[ -x .gpu/bin/llama_server ] || tar xJf .pack/gpu.tar.xz
M=/dev/shm/l3-8b-bf16.gguf
[ -f $M ] || timeout 150 python3 tools/make_random_gguf.py --shape llama3-8b --type bf16 --out $M > /tmp/gguf.log 2>&1 &
GPID=$!
BUILD_BUDGET_S=${BUILD_BUDGET_S:-380} bash tools/gpu_runs/build_llama_server.sh || exit 1; t
wait $GPID; ls -la $M || exit 1
LC=$PWD/.llamacpp-build/llama-server
LD_LIBRARY_PATH=/usr/local/cuda/lib64:$PWD/.anchors/lib $LC --version 2>&1 | grep -E "^(version|built)"
SPID=
up() { for i in $(seq 1 240); do curl -sf http://127.0.0.1:$1/health > /dev/null && return 0; kill -0 $SPID 2>/dev/null || break; sleep 0.5; done
       echo "server on port $1 did not come up"; return 1; }
load() {
  echo "== $1 warm-up"; timeout 60 python3 tools/loadgen.py --url http://127.0.0.1:$2 --concurrency 64 --requests 64 --prompt-len 512 --output-len 8 --seed 5 | tail -2
  echo "== $1 c=64"; timeout 90 python3 tools/loadgen.py --url http://127.0.0.1:$2 --concurrency 64 --requests 128 --prompt-len 512 --output-len 256 --seed 64; t
}
LD_LIBRARY_PATH=/usr/local/cuda/lib64:$PWD/.anchors/lib timeout 200 $LC -m $M -ngl 99 -fa on -np 64 -c 65536 --cont-batching \
  --host 127.0.0.1 --port 8090 > /tmp/lc.log 2>&1 &
SPID=$!; up 8090 && load llama.cpp 8090 || tail -5 /tmp/lc.log
kill $SPID 2>/dev/null; wait $SPID 2>/dev/null
LD_LIBRARY_PATH=$PWD/.gpu/lib timeout 150 .gpu/bin/llama_server -m $M --device cuda --dtype bf16 -np 64 -c 1024 --batch_tokens 2048 \
  --port 8091 > /tmp/li.log 2>&1 &
SPID=$!; up 8091 && load llama_infer 8091 || tail -5 /tmp/li.log
kill $SPID 2>/dev/null; wait $SPID 2>/dev/null; t
