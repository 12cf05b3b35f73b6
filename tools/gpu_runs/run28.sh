#!/usr/bin/env bash
# device run 28 (2026-12-02, fourth session): where Llama-3-8B Q4_K_M's 2.93 ms a token goes (run 27:
# 341.7 tok/s, 40% of its limit): kernel_bench quant3 (its shapes, bf16 activations) and, where the
# machine has Nsight Systems, the kernel summary of a llama_bench decode.   carry: .pack   kind: nvidia-h200
export LD_LIBRARY_PATH=$PWD/.gpu/lib NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD/.gpu/pylib
b=.gpu/bin; D=/dev/shm; T0=$(date +%s); t() { echo "-- t=$(( $(date +%s) - T0 ))s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "nsys: $(command -v nsys || ls /usr/local/cuda/bin/nsys 2>/dev/null)  ncu: $(command -v ncu)"
timeout 150 python3 tools/make_random_gguf.py --shape llama3-8b --type q4_k_m --out $D/l3-q4_k_m.gguf | tail -1 &
echo "== kernel_bench quant3"; timeout 120 $b/kernel_bench quant3; t
wait
NSYS=$(command -v nsys || echo /usr/local/cuda/bin/nsys)
if [ -x "$NSYS" ]; then
  echo "== nsys: llama_bench l3 q4_k_m, -p 16 -n 64"
  timeout 180 $NSYS profile -o /tmp/l3q4 --cuda-graph-trace=node --force-overwrite true \
    $b/llama_bench -m $D/l3-q4_k_m.gguf --dtype bf16 -p 16 -n 64 -r 1 2>&1 | grep -E '^(decode|prefill)|rror'; t
  timeout 120 $NSYS stats --report cuda_gpu_kern_sum --format csv /tmp/l3q4.nsys-rep 2>/dev/null | head -40; t
fi
rm -f $D/l3-*.gguf
