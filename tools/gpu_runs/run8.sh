#!/usr/bin/env bash
# device run 8: after the helper unification (mma.cuh, load_weights16, cublas_gemm_nt): the GPU tests
export LD_LIBRARY_PATH=$PWD/.gpu/lib:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0
export KUIPER_SHARED_DIR=$PWD/.gpu/shared KUIPER_SOURCE_DIR=$PWD KUIPER_BIN_DIR=$PWD/.gpu/bin KUIPER_GGUF_EXPORTS=$PWD/.gpu/gguf_exports PYTHONPATH=$PWD/.gpu/pylib
b=.gpu/bin
timeout 60 python3 test/export_gguf_fixtures.py "$KUIPER_GGUF_EXPORTS" > /tmp/gg.log 2>&1
for t in test_cuda_kernels test_gpu_model test_gpu_paged test_batch; do echo "== $t"; timeout 150 $b/$t --gtest_brief=1 2>&1 | grep -vE "^\[ *(OK|RUN) " | tail -3; done
echo "== test_gguf cuda"; timeout 100 $b/test_gguf --gtest_brief=1 --gtest_filter='*Cuda*' 2>&1 | tail -2
echo "== 7b int8"; timeout 60 $b/llama_bench --shape llama2-7b --weights int8 --dtype fp16 -p 16 -n 128 -r 3 2>&1 | grep -E "^(decode|prefill)|rror"
