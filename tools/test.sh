#!/usr/bin/env bash
# Builds and runs the whole test suite. Tests that need a GPU, several GPUs or ../shared/models skip
# with a message when those are absent. Then the CPU tests once more under ASan + UBSan
# (tools/sanitize.sh, build-asan/) and the fuzzers for a minute (tools/fuzz.sh, build-fuzz/); both
# fail on any report. KUIPER_QUICK_TEST=1 stops after the first pass.
#
# Under CI=true (.ci/run sets it) nothing may quietly not run: a missing ../shared/models fails at once,
# and any skipped test other than the GPU and multi-GPU ones fails the run (tools/check_skips.py),
# each named with the reason it gave. Outside CI the skips stay skips, listed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${CI:-} == true ]]; then
  models=${KUIPER_SHARED_DIR:-$(dirname "$PWD")/shared}/models
  if [[ ! -d $models ]]; then
    echo "test.sh: CI=true and the test data is missing: $models does not exist. The model tests need it" \
         "(../shared/models beside the checkout, or KUIPER_SHARED_DIR); outside CI they would skip."
    exit 1
  fi
fi
dir=${BUILD_DIR:-build}
tools/build.sh "$@"
ctest --test-dir "$dir" --output-on-failure -j"$(nproc)" --output-junit "$(realpath "$dir")/ctest-junit.xml"
tools/check_skips.py "$dir" "$dir/ctest-junit.xml"
[[ ${KUIPER_QUICK_TEST:-0} == 1 ]] && exit 0
tools/sanitize.sh
tools/fuzz.sh
