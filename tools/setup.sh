#!/usr/bin/env bash
# Installs what llama_infer needs to build and test on Debian 12 (or Ubuntu 24.04): compilers, CMake and
# the libraries, all from the distribution. The CUDA toolkit (nvcc, cuBLAS, NCCL) is expected in
# /usr/local/cuda; without it the build is CPU-only. Runs apt-get as root, or through sudo.
set -euo pipefail
pkgs=(build-essential cmake pkg-config python3
      libgoogle-glog-dev libgflags-dev libgtest-dev libgmock-dev
      libarmadillo-dev libopenblas-dev libsentencepiece-dev
      libpcre2-dev nlohmann-json3-dev
      libedit-dev                   # line editing and history in the interactive chat
      libcpp-httplib-dev            # llama_server's HTTP (docs/serving.md says why this library)
      openmpi-bin libopenmpi-dev    # mpirun: one process per GPU or CPU rank (--tp x --pp), and its tests
      clang libclang-rt-dev)        # the fuzzers (tools/fuzz.sh): clang, libFuzzer
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Python test tools, from PyPI; the python3 on PATH may not be Debian's. numpy for the exporter
# (tools/export.py) and its tests; gguf (llama.cpp's GGUF writer and reference dequantizer, pinned) and
# sentencepiece for the GGUF test files (test/export_gguf_fixtures.py) and the fuzz seeds.
pip_install() {
  python3 -m pip install --quiet "$@" 2>/dev/null || python3 -m pip install --quiet --break-system-packages "$@"
}
if ! python3 -c "import numpy" 2>/dev/null; then
  echo "setup: installing numpy for $(command -v python3)"
  pip_install numpy
fi
if ! python3 -c "import gguf, sentencepiece, sys, importlib.metadata as m; sys.exit(m.version('gguf') != '0.19.0')" 2>/dev/null; then
  echo "setup: installing gguf 0.19.0 and sentencepiece for $(command -v python3)"
  pip_install gguf==0.19.0 sentencepiece
fi
# openai, the client the server's tests talk to llama_server with (test/server_test.py).
if ! python3 -c "import openai" 2>/dev/null; then
  echo "setup: installing openai for $(command -v python3)"
  python3 -m pip install --quiet openai 2>/dev/null || python3 -m pip install --quiet --break-system-packages openai
fi
echo "setup: done"
