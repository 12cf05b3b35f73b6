// Sampler: picks the next token from the logits. First the repetition penalty (the tokens among the
// last repeat_last_n seen have positive logits divided by repeat_penalty, negative ones multiplied).
// Then greedy at temperature 0; otherwise softmax at the temperature, restricted to the top_k most
// likely tokens, to the smallest set whose probability reaches top_p, and to the tokens at least
// min_p times as likely as the most likely one, drawn with a seeded generator so that a run can be
// repeated (--seed).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "base/status.h"

namespace sampler {

struct SamplerConfig {
  float temperature = 0.f;  // 0: greedy
  int32_t top_k = 0;        // 0: no limit
  float top_p = 1.f;        // (0, 1]; 1: no limit
  uint64_t seed = 0;
  float min_p = 0.f;            // [0, 1]; 0: no limit
  float repeat_penalty = 1.f;   // > 0 (usually 1.0-1.3); 1: off
  int32_t repeat_last_n = 64;   // window of the penalty, in tokens (0: off, -1: the whole context)
};

class Sampler {
 public:
  // Checks the values (temperature >= 0, top_k >= 0, top_p in (0, 1], min_p in [0, 1],
  // repeat_penalty > 0, repeat_last_n >= -1); reserves its buffers for `vocab_size` and a context of
  // `max_context` tokens (the penalty window of -1) so that sample() and accept() never allocate.
  static base::Status create(const SamplerConfig& cfg, int32_t vocab_size, Sampler* out, int32_t max_context = 4096);

  // Index of the chosen token; `logits` (vocab_size floats) is used as scratch.
  int32_t sample(float* logits);
  // Records a token of the context (prompt or generated) for the repetition penalty.
  void accept(int32_t token);
  // Forgets the recorded tokens (a new conversation).
  void reset_history();
  // Plain argmax of the logits: no penalty, temperature 0 (the model may then pick on the device).
  bool is_greedy() const { return cfg_.temperature == 0.f && !penalised(); }
  const SamplerConfig& config() const { return cfg_; }

 private:
  int32_t vocab_size_ = 0;
  std::mt19937_64 rng_;
  bool penalised() const { return cfg_.repeat_penalty != 1.f && window_ > 0; }
  void apply_penalty(float* logits);

  SamplerConfig cfg_;
  std::vector<int32_t> order_;  // candidate ids, sorted by probability
  std::vector<int32_t> recent_;  // ring buffer of the last window_ tokens accepted
  int32_t window_ = 0, filled_ = 0, head_ = 0;
  std::vector<uint8_t> seen_;   // per token id: in the window (scratch of apply_penalty)
};

// Index of the largest value, lowest index on ties.
int32_t argmax(const float* x, int32_t n);

}  // namespace sampler
