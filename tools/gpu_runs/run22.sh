#!/usr/bin/env bash
# device run 22 (2026-12-02): the last device minutes: 64 streams only, llama.cpp's llama-server (0c1e570,
# built on the dev machine by the run 9 recipe, .llamacpp/) then llama_server, the same bf16 Llama-3-8B
# GGUF and the same loadgen load (512-token prompts, 256 outputs, 128 requests, seed 64), one call.
export NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD/.gpu/pylib
T0=$(date +%s); t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
M=/dev/shm/l3-8b-bf16.gguf; LC=/tmp/llama-server
xz -dc .llamacpp/bin/llama-server.xz > $LC && chmod +x $LC
timeout 40 python3 tools/make_random_gguf.py --shape llama3-8b --type bf16 --out $M | tail -1; t
up() { for i in $(seq 1 80); do curl -sf http://127.0.0.1:$1/health > /dev/null && return 0; sleep 0.5; done; return 1; }
LD_LIBRARY_PATH=/usr/local/cuda/lib64:$PWD/.anchors/lib $LC -m $M -ngl 99 -fa on -np 64 -c 65536 --port 8090 > /tmp/lc.log 2>&1 &
P=$!; up 8090 || { echo "llama-server did not come up"; tail -5 /tmp/lc.log; }; t
echo "== llama-server c=64"; timeout 60 python3 tools/loadgen.py --url http://127.0.0.1:8090 --concurrency 64 --requests 128 --prompt-len 512 --output-len 256 --seed 64; t
kill $P; wait $P 2>/dev/null
LD_LIBRARY_PATH=$PWD/.gpu/lib .gpu/bin/llama_server -m $M --device cuda --dtype bf16 -np 64 -c 1024 --batch_tokens 2048 --port 8091 > /tmp/li.log 2>&1 &
P=$!; up 8091 || { echo "llama_server did not come up"; tail -5 /tmp/li.log; }; t
echo "== llama_server c=64"; timeout 40 python3 tools/loadgen.py --url http://127.0.0.1:8091 --concurrency 64 --requests 128 --prompt-len 512 --output-len 256 --seed 64; t
kill $P; wait $P 2>/dev/null
