#!/usr/bin/env bash
# Builds and runs the whole test suite. Tests that need a GPU, several GPUs or ../shared/models skip
# with a message when those are absent. Then the CPU tests once more under ASan + UBSan
# (tools/sanitize.sh, build-asan/) and the fuzzers for a minute (tools/fuzz.sh, build-fuzz/); both
# fail on any report. KUIPER_QUICK_TEST=1 stops after the first pass.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/build.sh "$@"
ctest --test-dir build --output-on-failure -j"$(nproc)"
[[ ${KUIPER_QUICK_TEST:-0} == 1 ]] && exit 0
tools/sanitize.sh
tools/fuzz.sh
