#!/usr/bin/env bash
# device run 6: the final tree (after the MPI merge): GPU tests and the decode rows
export LD_LIBRARY_PATH=$PWD/.gpu/lib:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0
export KUIPER_SHARED_DIR=$PWD/.gpu/shared KUIPER_SOURCE_DIR=$PWD KUIPER_BIN_DIR=$PWD/.gpu/bin KUIPER_HF_EXPORTS=$PWD/.gpu/hf_exports
b=.gpu/bin
python3 test/export_hf_fixtures.py "$KUIPER_HF_EXPORTS" --shared "$KUIPER_SHARED_DIR" > /tmp/hf.log 2>&1 || tail -3 /tmp/hf.log
for t in test_cuda_kernels test_gpu_model test_gpu_paged test_batch test_multi_gpu test_out_of_memory; do echo "== $t"; timeout 200 $b/$t --gtest_brief=1 2>&1 | grep -vE "^\[ *(OK|RUN) " | tail -4; done
echo "== hf cuda"; timeout 120 $b/test_hf_fixtures --gtest_brief=1 --gtest_filter='HfFixtures.Cuda*' 2>&1 | tail -2
S=.gpu/shared/models/stories260K
$b/llama_infer -m $S/stories260K.bin --tokenizer $S/tok512.model -p "Once upon a time" --temp 0 -n 200 --device cpu > /tmp/cpu.txt 2>/dev/null
for dt in fp32 bf16; do timeout 60 $b/llama_infer -m $S/stories260K.bin --tokenizer $S/tok512.model -p "Once upon a time" --temp 0 -n 200 --device cuda --dtype $dt > /tmp/g_$dt.txt 2>/dev/null; cmp -s /tmp/cpu.txt /tmp/g_$dt.txt && echo "cuda $dt == cpu" || echo "cuda $dt differs from cpu"; done
f='^(prefill|decode|bandwidth)|rror'
echo "== 7b fp16"; timeout 60 $b/llama_bench --shape llama2-7b --weights fp16 --dtype fp16 -p 512,2048 -n 128 -r 3 2>&1 | grep -E "$f"
echo "== 7b int8"; timeout 60 $b/llama_bench --shape llama2-7b --weights int8 --dtype fp16 -p 16 -n 128 -r 3 2>&1 | grep -E "$f"
echo "== 8b bf16"; timeout 60 $b/llama_bench --shape llama3-8b --weights bf16 --dtype bf16 -p 16 -n 128 -r 3 2>&1 | grep -E "$f"
echo "== 70b int8"; timeout 120 $b/llama_bench --shape llama3-70b --weights int8 --dtype bf16 -p 16 -n 64 -r 2 2>&1 | grep -E "$f"
