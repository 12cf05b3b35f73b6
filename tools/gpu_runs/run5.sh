#!/usr/bin/env bash
# device run 5: llama_server on the llama3-8b shape (bf16, random weights), tools/loadgen.py at 1/8/32/64 streams
export LD_LIBRARY_PATH=$PWD/.gpu/lib:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD/.gpu/pylib
b=.gpu/bin; M=/dev/shm/l3-8b-bf16.gguf
rm -f /dev/shm/l2-*.gguf
timeout 150 python3 tools/make_random_gguf.py --shape llama3-8b --type bf16 --out $M || exit 1
echo "== llama_bench batch 1"; timeout 60 $b/llama_bench -m $M --dtype bf16 -p 512 -n 256 -r 1 2>&1 | grep -E "^(prefill|decode|bandwidth)|rror"
serve() {  # serve PORT FLAGS...: starts llama_server, waits for /health
  local port=$1; shift
  $b/llama_server -m $M --device cuda --dtype bf16 -np 64 -c 1024 --batch_tokens 2048 --port $port "$@" > /tmp/server_$port.log 2>&1 &
  SPID=$!
  for i in $(seq 1 120); do curl -sf http://127.0.0.1:$port/health > /dev/null && return 0; sleep 0.5; done
  echo "server did not come up"; tail -5 /tmp/server_$port.log; return 1
}
serve 8080 || exit 1
for c in 1 8 32 64; do
  echo "== c=$c"; timeout 120 python3 tools/loadgen.py --url http://127.0.0.1:8080 --concurrency $c --requests $((4 * c)) --prompt-len 512 --output-len 256
done
echo "== prefix cache on"; timeout 60 python3 tools/loadgen.py --url http://127.0.0.1:8080 --concurrency 8 --requests 32 --prompt-len 1000 --shared-prefix 900 --output-len 16
curl -s http://127.0.0.1:8080/metrics | grep -E "^llama_(prefix|kv|requests)" | head -12
kill $SPID; wait $SPID 2>/dev/null
serve 8081 --prefix_cache=false || exit 1
echo "== prefix cache off"; timeout 60 python3 tools/loadgen.py --url http://127.0.0.1:8081 --concurrency 8 --requests 32 --prompt-len 1000 --shared-prefix 900 --output-len 16
kill $SPID; wait $SPID 2>/dev/null
tail -3 /tmp/server_8080.log
