// Helpers for the tests that run whole models: greedy generation without stopping at EOS.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "model/llama3.h"
#include "model/tp_runner.h"

namespace testutil {

// The KV cache of `m` is one block of `bytes` (worked out by the caller, not by the cache): every
// layer's K and V view shares one owned Buffer of that size, in the order [layer][K|V], each view
// [max_seq_len, kv_dim] right after the previous one, the last ending at the block's end.
::testing::AssertionResult kv_cache_is_one_block(const model::LlamaModel& m, uint64_t bytes);

// `n` greedy tokens after `prompt` (positions from 0), never stopping early.
std::vector<int32_t> greedy(model::LlamaModel& m, const std::vector<int32_t>& prompt, int n);
// The same with every rank of a tensor-parallel runner.
std::vector<int32_t> greedy(model::TpRunner& r, const std::vector<int32_t>& prompt, int n);

}  // namespace testutil
