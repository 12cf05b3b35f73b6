#!/usr/bin/env bash
# Builds the libFuzzer targets of test/fuzz with clang, ASan and UBSan in build-fuzz (or
# $FUZZ_BUILD_DIR) and runs each for FUZZ_SECONDS (default 60), all four at once. Each starts from
# its committed seeds (test/fuzz/corpus/NAME) plus what earlier runs here found
# (build-fuzz/fuzz/NAME/corpus; new inputs go there, never into the committed corpus). A crash, a
# sanitizer report, a leak, an input slower than 20 s or RSS above 2 GiB fails the run; the input is
# saved as build-fuzz/fuzz/NAME/crash-* (or leak-, timeout-, oom-) and replayed with
# `build-fuzz/bin/fuzz_NAME FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${FUZZ_BUILD_DIR:-build-fuzz}
secs=${FUZZ_SECONDS:-60}
names=(model_file model_header gguf tokenizer)
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
      -DKUIPER_WITH_CUDA=OFF -DKUIPER_FUZZ=ON -DKUIPER_BUILD_TESTS=OFF >/dev/null
cmake --build "$dir" -j"$(nproc)" --target "${names[@]/#/fuzz_}"

export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
pids=()
for name in "${names[@]}"; do
  work=$dir/fuzz/$name
  mkdir -p "$work/corpus"
  dict=test/fuzz/${name/model_header/model_file}.dict
  "$dir/bin/fuzz_$name" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
      -dict="$dict" -artifact_prefix="$work/" "$work/corpus" "test/fuzz/corpus/$name" >"$work/log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!names[@]}"; do
  name=${names[$i]}
  if wait "${pids[$i]}"; then
    echo "fuzz: $name: $(grep -E '^#[0-9]+.*DONE' "$dir/fuzz/$name/log" | tail -1)"
  else
    status=1
    echo "fuzz: $name FAILED; the end of $dir/fuzz/$name/log:"
    tail -n 60 "$dir/fuzz/$name/log"
    ls "$dir/fuzz/$name"/{crash,leak,timeout,oom}-* 2>/dev/null || true
  fi
done
exit $status
