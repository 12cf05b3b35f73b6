#!/usr/bin/env bash
# device run 21 (2026-12-02): run 5's llama_server loads again with a distinct --seed per load. Run 5 used
# seed 1 for every load, so the first 4 / 32 / 128 prompts of its c = 8 / 32 / 64 loads were the prompts
# of the load before and could be served from the prefix cache. A warm-up load (its own seed) first.
export LD_LIBRARY_PATH=$PWD/.gpu/lib:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD/.gpu/pylib
b=.gpu/bin; M=/dev/shm/l3-8b-bf16.gguf; T0=$(date +%s)
t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
timeout 150 python3 tools/make_random_gguf.py --shape llama3-8b --type bf16 --out $M || exit 1; t
$b/llama_server -m $M --device cuda --dtype bf16 -np 64 -c 1024 --batch_tokens 2048 --port 8080 > /tmp/server.log 2>&1 &
SPID=$!
for i in $(seq 1 120); do curl -sf http://127.0.0.1:8080/health > /dev/null && break; sleep 0.5; done; t
timeout 60 python3 tools/loadgen.py --url http://127.0.0.1:8080 --concurrency 8 --requests 8 --prompt-len 512 --output-len 32 --seed 100 > /dev/null
for c in 1 8 32 64; do
  echo "== c=$c seed $c"; timeout 120 python3 tools/loadgen.py --url http://127.0.0.1:8080 --concurrency $c --requests $((4 * c)) --prompt-len 512 --output-len 256 --seed $c; t
done
curl -s http://127.0.0.1:8080/metrics | grep -E "^llama_(prefix_cache_hit|requests_total)"
kill $SPID; wait $SPID 2>/dev/null
tail -2 /tmp/server.log
