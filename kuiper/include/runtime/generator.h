// Generation: prefill the prompt in one batched pass, then decode one token at a time, handing each
// new token to a callback as soon as it exists (streaming) and timing both phases.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/status.h"
#include "model/llama3.h"
#include "sampler/sampler.h"

namespace runtime {

struct GenerateOptions {
  int32_t max_new_tokens = 256;
  bool stop_at_eos = true;              // stop at any of the model's eos_ids ...
  std::vector<int32_t> extra_stop_ids;  // ... or at these (a chat template's end of turn)
};

struct GenerateStats {
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
  double prefill_ms = 0;  // time to first token: prefill + first sample
  double decode_ms = 0;   // every later token
  std::string stop_reason;  // "eos", "length", "context", "stopped"
  // Where the cache stands afterwards: positions [0, next_pos) are filled, and `unfed_token` (the stop
  // token, or the last token printed) is the one to feed first to continue the conversation.
  int32_t next_pos = 0;
  int32_t unfed_token = -1;

  double prefill_tok_per_s() const { return prefill_ms > 0 ? prompt_tokens * 1e3 / prefill_ms : 0; }
  double decode_tok_per_s() const {
    return decode_ms > 0 && generated_tokens > 1 ? (generated_tokens - 1) * 1e3 / decode_ms : 0;
  }
};

// Called with each generated token; return false to stop.
using TokenCallback = std::function<bool(int32_t token)>;

// Generates from `prompt` (token ids, BOS included when wanted) starting at position `pos` of the
// model's cache (0 for a fresh conversation). `logits` is caller-owned scratch of vocab_size floats.
base::Status generate(model::LlamaModel& model, sampler::Sampler& sampler, const std::vector<int32_t>& prompt,
                      int32_t pos, const GenerateOptions& opts, float* logits, const TokenCallback& on_token,
                      GenerateStats* stats);

}  // namespace runtime
