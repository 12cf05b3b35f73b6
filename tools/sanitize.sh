#!/usr/bin/env bash
# The CPU test suite (labels unit and model) once more under AddressSanitizer (with LeakSanitizer) and
# UndefinedBehaviorSanitizer: gcc, -DKUIPER_SANITIZE=ON, its own build folder (build-asan, or
# $ASAN_BUILD_DIR). The command-line tests run this build's llama_infer, so they are checked too.
#
# Any report fails the run: a report aborts the process (abort_on_error, halt_on_error, and the build's
# -fno-sanitize-recover), which fails its test, and every report is also written under
# build-asan/sanitizer-reports/, which must be empty at the end, so a report in a child process whose
# exit status a test ignores is caught as well. One kind of line is expected there and allowed:
# "WARNING: AddressSanitizer failed to allocate" from the test that asks for a 2 TiB KV cache (with
# allocator_may_return_null=1 ASan answers an allocation above its 1 TiB limit with NULL, as malloc
# does, instead of stopping the program).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${ASAN_BUILD_DIR:-build-asan}
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKUIPER_WITH_CUDA=OFF -DKUIPER_SANITIZE=ON >/dev/null
cmake --build "$dir" -j"$(nproc)"

reports=$(realpath "$dir")/sanitizer-reports
rm -rf "$reports" && mkdir -p "$reports"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=1:log_path=$reports/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan"
status=0
ctest --test-dir "$dir" -L "unit|model" --output-on-failure -j"$(nproc)" \
      --output-junit "$(realpath "$dir")/ctest-junit.xml" || status=1
tools/check_skips.py "$dir" "$dir/ctest-junit.xml" || status=1  # under CI=true, skips fail here too

for f in "$reports"/*; do
  [[ -e $f ]] || continue
  if grep -qv "WARNING: AddressSanitizer failed to allocate" "$f"; then
    echo "sanitize: report in $f:"
    cat "$f"
    status=1
  fi
done
if ((status)); then
  echo "sanitize: FAILED (reports under $reports)"
  exit 1
fi
echo "sanitize: unit and model tests clean under ASan + LSan + UBSan"
