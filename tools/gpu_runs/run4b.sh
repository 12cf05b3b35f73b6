#!/usr/bin/env bash
# device run 4b: llama.cpp's llama-bench on the GGUF files of run 4 (made again if this is a fresh machine)
export NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD/.anchors/pylib
D=/dev/shm
for t in q4_k_m q8_0; do [[ -s $D/l2-$t.gguf ]] || timeout 120 python3 tools/make_random_gguf.py --shape llama2-7b --type $t --out $D/l2-$t.gguf; done
xz -dc .anchors/bin/llama-bench.xz > /tmp/llama-bench && chmod +x /tmp/llama-bench
for t in q4_k_m q8_0; do
  echo "== llama.cpp $t"; LD_LIBRARY_PATH=/usr/local/cuda/lib64:$PWD/.anchors/lib timeout 200 /tmp/llama-bench -m $D/l2-$t.gguf -ngl 99 -fa 1 -p 512 -n 128 -r 3 2>&1 | grep -vE "^ggml_cuda_init|^  Device|^load"
done
