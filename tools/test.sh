#!/usr/bin/env bash
# Builds and runs the whole test suite. Tests that need a GPU, several GPUs or ../shared/models skip
# with a message when those are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/build.sh "$@"
ctest --test-dir build --output-on-failure -j"$(nproc)"
