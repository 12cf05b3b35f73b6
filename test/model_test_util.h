// Helpers for the tests that run whole models: greedy generation without stopping at EOS.
#pragma once

#include <cstdint>
#include <vector>

#include "model/llama3.h"
#include "runtime/tp_runner.h"

namespace testutil {

// `n` greedy tokens after `prompt` (positions from 0), never stopping early.
std::vector<int32_t> greedy(model::LlamaModel& m, const std::vector<int32_t>& prompt, int n);
// The same with every rank of a tensor-parallel runner.
std::vector<int32_t> greedy(runtime::TpRunner& r, const std::vector<int32_t>& prompt, int n);

}  // namespace testutil
