#!/usr/bin/env bash
# device run 4: every GPU test of the merged tree, then GGUF speed beside llama.cpp on the same files
export LD_LIBRARY_PATH=$PWD/.gpu/lib:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0
export KUIPER_SHARED_DIR=$PWD/.gpu/shared KUIPER_SOURCE_DIR=$PWD KUIPER_BIN_DIR=$PWD/.gpu/bin KUIPER_HF_EXPORTS=$PWD/.gpu/hf_exports
export KUIPER_GGUF_EXPORTS=$PWD/.gpu/gguf_exports PYTHONPATH=$PWD/.gpu/pylib
b=.gpu/bin
python3 test/export_hf_fixtures.py "$KUIPER_HF_EXPORTS" --shared "$KUIPER_SHARED_DIR" > /tmp/hf.log 2>&1 || tail -3 /tmp/hf.log
timeout 60 python3 test/export_gguf_fixtures.py "$KUIPER_GGUF_EXPORTS" > /tmp/gg.log 2>&1 || { echo "gguf fixtures failed"; tail -5 /tmp/gg.log; }
for t in test_cuda_kernels test_gpu_model test_gpu_paged test_batch; do echo "== $t"; timeout 200 $b/$t --gtest_brief=1 2>&1 | grep -vE "^\[ *(OK|RUN) " | tail -8; done
echo "== test_gguf cuda"; timeout 120 $b/test_gguf --gtest_brief=1 --gtest_filter='*Cuda*' 2>&1 | tail -8
echo "== hf cuda"; timeout 120 $b/test_hf_fixtures --gtest_brief=1 --gtest_filter='HfFixtures.Cuda*' 2>&1 | tail -2
D=/dev/shm; f='^(model|prefill|decode|bandwidth)|rror'
for t in q4_k_m q8_0; do timeout 120 python3 tools/make_random_gguf.py --shape llama2-7b --type $t --out $D/l2-$t.gguf; done
for t in q4_k_m q8_0; do
  echo "== ours $t"; timeout 120 $b/llama_bench -m $D/l2-$t.gguf --dtype fp16 -p 512 -n 128 -r 3 2>&1 | grep -E "$f"
done
echo "== kernel_bench flash/paged"; timeout 60 $b/kernel_bench paged 2>&1 | tail -6
