#!/usr/bin/env bash
# CPU decode speed on this machine: llama_bench at 1 thread, every usable core, and the default
# (no -t), interleaved round by round so that the machine's load falls on all of them alike, with
# the median of ROUNDS rounds; beside it llama2.c's run.c on the same weights when RUN_C names its
# binary (it is not part of this project: build it yourself, e.g. gcc -O3 -o run run.c -lm).
#
#   tools/bench_cpu.sh                         # after tools/build.sh
#   RUN_C=/tmp/runc/run ROUNDS=9 tools/bench_cpu.sh
#
# Models: models/storyteller.bin (fp16) and its fp32 llama2.c export (tools/to_llama2c.py), and
# ../shared/models/stories260K/stories260K.bin (fp32, llama2.c). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN_DIR:-build/bin}
rounds=${ROUNDS:-7}
gen=${GEN:-256}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cores=$(python3 -c "import os; print(len(os.sched_getaffinity(0)))")
python3 tools/to_llama2c.py models/storyteller.bin "$work/storyteller-fp32.bin" "$work/storyteller-tok.bin"
stories=../shared/models/stories260K
models=("models/storyteller.bin" "$work/storyteller-fp32.bin")
[[ -f $stories/stories260K.bin ]] && models+=("$stories/stories260K.bin")

median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "n/a")}'; }
bench() {  # MODEL THREADS_FLAG... -> decode tok/s
  "$bin/llama_bench" --device cpu -m "$1" -p 16 -n "$gen" -r 3 -o csv "${@:2}" 2>/dev/null | tail -1 | cut -d, -f10
}
runc() {  # MODEL TOKENIZER -> achieved tok/s (greedy from BOS, gen steps)
  "$RUN_C" "$1" -z "$2" -t 0 -n "$gen" 2>&1 >/dev/null | sed -n 's/achieved tok\/s: //p'
}
declare -A res
for ((r = 0; r < rounds; ++r)); do
  for m in "${models[@]}"; do
    res["$m|1"]+="$(bench "$m" -t 1) "
    res["$m|$cores"]+="$(bench "$m" -t "$cores") "
    res["$m|default"]+="$(bench "$m") "
    if [[ -n ${RUN_C:-} && $m != *storyteller.bin ]]; then
      tok="$work/storyteller-tok.bin"
      [[ $m == *stories260K* ]] && tok=$stories/tok512.bin
      res["$m|runc"]+="$(runc "$m" "$tok") "
    fi
  done
done
echo "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg); $cores usable cores; $rounds rounds, decode of $gen tokens"
echo
echo "| model | -t 1 | -t $cores | default | run.c |"
echo "| --- | --- | --- | --- | --- |"
for m in "${models[@]}"; do
  row="| $(basename "$m") |"
  for k in 1 "$cores" default runc; do
    v=$(echo ${res["$m|$k"]:-} | tr ' ' '\n' | grep . | median || true)
    row+=" ${v:-n/a} |"
  done
  echo "$row"
  for k in 1 "$cores" default runc; do echo "    $k: ${res["$m|$k"]:-}"; done
done
