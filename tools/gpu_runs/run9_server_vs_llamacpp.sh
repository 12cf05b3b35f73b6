#!/usr/bin/env bash
# device run 9: llama_server beside llama.cpp's llama-server on one H200, the same Llama-3-8B-shaped bf16
# GGUF (random weights) and the same tools/loadgen.py loads, in one call (< 9 minutes): 1, 8, 32 and 64
# streams of 512-token prompts and 256 output tokens, then the shared-prefix pair of run 5 (900 of 1,000
# prompt tokens shared, prompt cache on and off). Each engine gets a warm-up load first; every load has
# its own --seed, so no run's prompts are cached from an earlier one (run 5 used seed 1 for all: the first
# 4, 32 and 128 prompts of its c=8, 32 and 64 loads were those of the loads before, for the prefix cache).
#
# llama-server: llama.cpp commit 0c1e570 (vendor/llama.cpp of the llama_cpp_python 0.3.36 sdist, as
# ../shared/anchors), built on this machine by build_llama_server.sh into .llamacpp-build/ (a warm machine
# keeps it between calls), or else built on the dev machine and carried as .llamacpp/bin/llama-server.xz: Release, CUDA 13.0,
# sm_90 SASS only (90-real), FA on (FA_ALL_QUANTS off), CUDA graphs on, NCCL off (one GPU), static
# llama/ggml/common; links the GPU machine's libcudart / cuBLAS / libcuda, libgomp from .anchors/lib if
# the system has none. Started with its defaults otherwise (f16 KV cache, -b 2048 -ub 512, prompt cache on).
#
# carry: .pack (or .gpu), .anchors, .llamacpp     kind: nvidia-h200      prints "-- t=Ns" markers
set -u
T0=$(date +%s); BUDGET=${RUN9_BUDGET_S:-530}
t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
export NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD/.gpu/pylib:$PWD/.anchors/gguf-py
[ -x .gpu/bin/llama_server ] || { [ -f .pack/gpu.tar.xz ] && tar xJf .pack/gpu.tar.xz; }
[ -x .gpu/bin/llama_server ] || { echo "no .gpu/bin/llama_server (carry .pack or .gpu)"; exit 1; }
LI_LIB=$PWD/.gpu/lib:${LD_LIBRARY_PATH:-}
LC_LIB=/usr/local/cuda/lib64:$PWD/.anchors/lib:${LD_LIBRARY_PATH:-}
b=.gpu/bin; M=/dev/shm/l3-8b-bf16.gguf; LC=/tmp/llama-server
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ -x .llamacpp-build/llama-server ]; then  # built on this machine (build_llama_server.sh), as the issue asks
  LC=$PWD/.llamacpp-build/llama-server
else  # built on the dev machine and carried
  xz -dc .llamacpp/bin/llama-server.xz > $LC && chmod +x $LC || { echo "no llama-server: build_llama_server.sh first"; exit 1; }
  echo "$(cut -d' ' -f1 .llamacpp/bin/llama-server.sha256)  $LC" | sha256sum -c --quiet || exit 1
fi
LD_LIBRARY_PATH=$LC_LIB timeout 20 $LC --version 2>&1 | grep -E "^(version|built)"
LD_LIBRARY_PATH=$LC_LIB ldd $LC | grep -E "not found|cuda|cublas|gomp"
rm -f /dev/shm/l2-*.gguf
[ -f $M ] || timeout 150 python3 tools/make_random_gguf.py --shape llama3-8b --type bf16 --out $M || exit 1
t

SPID=
up() {  # up PORT LOG: waits for /health while the server lives
  for i in $(seq 1 360); do
    curl -sf http://127.0.0.1:$1/health > /dev/null && return 0
    kill -0 $SPID 2> /dev/null || break
    sleep 0.5
  done
  echo "server on port $1 did not come up"; tail -20 $2; stop; return 1
}
stop() { [ -n "$SPID" ] && { kill $SPID 2> /dev/null; wait $SPID 2> /dev/null; }; SPID=; }
llamacpp() {  # llamacpp PORT FLAGS...
  local port=$1; shift
  LD_LIBRARY_PATH=$LC_LIB timeout 500 $LC -m $M -ngl 99 -fa on -np 64 -c 65536 --cont-batching \
    --host 127.0.0.1 --port $port --metrics "$@" > /tmp/llamacpp_$port.log 2>&1 &
  SPID=$!; up $port /tmp/llamacpp_$port.log
}
ours() {  # ours PORT FLAGS...: run 5's flags
  local port=$1; shift
  LD_LIBRARY_PATH=$LI_LIB timeout 500 $b/llama_server -m $M --device cuda --dtype bf16 -np 64 -c 1024 --batch_tokens 2048 \
    --port $port "$@" > /tmp/ours_$port.log 2>&1 &
  SPID=$!; up $port /tmp/ours_$port.log
}
lg() { timeout "$1" python3 tools/loadgen.py "${@:2}"; }
prefix() {  # prefix ENGINE PORT on|off
  echo "== $1 prefix cache $3 (c=8, 1000-token prompts, 900 shared, 16 outputs)"
  lg 60 --url http://127.0.0.1:$2 --concurrency 8 --requests 32 --prompt-len 1000 --shared-prefix 900 --output-len 16 --seed 9; t
}
loads() {  # loads ENGINE PORT: warm-up, the four stream counts, the prefix cache on
  local e=$1 u=http://127.0.0.1:$2
  echo "== $e warm-up (c=64, 8 outputs)"; lg 90 --url $u --concurrency 64 --requests 64 --prompt-len 512 --output-len 8 --seed 5; t
  for c in 1 8 32 64; do
    echo "== $e c=$c"; lg 150 --url $u --concurrency $c --requests $((4 * c)) --prompt-len 512 --output-len 256 --seed $((100 + c)); t
  done
  prefix $e $2 on
}

echo "== llama.cpp llama-server: -m $M -ngl 99 -fa on -np 64 -c 65536 --cont-batching"
if llamacpp 8090; then
  t; grep -E "load_model|n_ctx|CUDA|offload| W | E " /tmp/llamacpp_8090.log | grep -v print_timing | head -12
  loads llama.cpp 8090
  curl -s http://127.0.0.1:8090/metrics | grep -E "^llamacpp:(prompt_tokens_total|tokens_predicted_total|n_decode_total|n_busy_slots_per_decode)"
  stop
fi
t
echo "== llama_infer llama_server: -m $M --device cuda --dtype bf16 -np 64 -c 1024 --batch_tokens 2048"
if ours 8080; then
  t; loads llama_infer 8080
  curl -s http://127.0.0.1:8080/metrics | grep -E "^llama_(prefix|kv_pages_used|requests_refused)"
  stop; tail -2 /tmp/ours_8080.log
fi
t
# The prompt cache off: a second start of each (what the time left allows).
if [ $(left) -gt 60 ] && ours 8081 --prefix_cache=false; then prefix llama_infer 8081 off; stop; fi
if [ $(left) -gt 75 ] && llamacpp 8091 --no-cache-prompt; then prefix llama.cpp 8091 off; stop; fi
if [ $(left) -gt 40 ]; then
  echo "== llama_bench batch 1"
  LD_LIBRARY_PATH=$LI_LIB timeout 60 $b/llama_bench -m $M --dtype bf16 -p 512 -n 256 -r 1 2>&1 | grep -E "^(prefill|decode|bandwidth)|rror"
fi
t
