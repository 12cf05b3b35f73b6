// Helpers for the tests that run whole models: greedy generation without stopping at EOS.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/llama3.h"
#include "runtime/tp_runner.h"

namespace testutil {

// The KV cache of `m` is one block of `bytes` (worked out by the caller, not by the cache): every
// layer's K and V view shares one owned Buffer of that size, in the order [layer][K|V], each view
// [max_seq_len, kv_dim] right after the previous one, the last ending at the block's end.
::testing::AssertionResult kv_cache_is_one_block(const model::LlamaModel& m, uint64_t bytes);

// `n` greedy tokens after `prompt` (positions from 0), never stopping early.
std::vector<int32_t> greedy(model::LlamaModel& m, const std::vector<int32_t>& prompt, int n);
// The same with every rank of a tensor-parallel runner.
std::vector<int32_t> greedy(runtime::TpRunner& r, const std::vector<int32_t>& prompt, int n);

// Writes a llama2.c "version 0" checkpoint with seeded random weights (uniform in +-0.15, norms 1)
// to `path`: a model of any shape for tests that compare the engine with itself (e.g. fewer KV heads
// than tensor-parallel ranks). Returns false when the file cannot be written.
struct RandomShape {
  int dim = 64, hidden = 160, layers = 2, heads = 4, kv_heads = 1, vocab = 512, seq_len = 256;
};
bool write_random_llama2c(const std::string& path, const RandomShape& shape, uint32_t seed);

// Fault injection into one rank of a tensor-parallel run. Every rank prefills `prompt` and then
// decodes greedily, `steps` tokens; rank `bad_rank` leaves at decode step `at_step`: with hang_ms == 0
// it returns an error at once ("injected failure"), else it sleeps hang_ms (a rank that hangs) and
// then returns without error. The other ranks are left waiting inside a collective.
struct FaultRun {
  base::Status status;                  // what TpRunner::run returned
  std::vector<base::Status> per_rank;   // what each rank's function returned
  std::vector<double> seconds;          // when each rank's function returned, from the start
};
FaultRun run_with_fault(runtime::TpRunner& r, const std::vector<int32_t>& prompt, int steps, int bad_rank,
                        int at_step, int hang_ms);

// Per-step fp32 logits over `steps` decode steps after `prompt`, feeding the tokens `feed` (teacher
// forcing, so that two runs compare step by step even where their greedy choices would differ):
// row 0 is the prompt's last-token logits, row i + 1 the logits after feeding feed[i]. Rank 0's.
std::vector<std::vector<float>> logits_trace(runtime::TpRunner& r, const std::vector<int32_t>& prompt,
                                             const std::vector<int32_t>& feed);

}  // namespace testutil
