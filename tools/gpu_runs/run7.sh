#!/usr/bin/env bash
# device run 7: the server's openai-client tests against llama_server on the GPU
export LD_LIBRARY_PATH=$PWD/.gpu/lib:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0
mkdir -p /tmp/pyoai && for w in .gpu/wheels/*.whl; do python3 -m zipfile -e $w /tmp/pyoai; done
export PYTHONPATH=/tmp/pyoai KUIPER_SERVER_DEVICE=cuda
python3 -c "import openai; print('openai', openai.__version__)"
timeout 300 python3 test/server_test.py .gpu/bin . .gpu/shared/models 2>&1 | tail -60
