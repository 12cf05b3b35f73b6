// Sampler: picks the next token from the logits. Greedy at temperature 0; otherwise softmax at the
// temperature, restricted to the top_k most likely tokens and to the smallest set whose probability
// reaches top_p, drawn with a seeded generator so that a run can be repeated (--seed).
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
};

class Sampler {
 public:
  // Checks the values (temperature >= 0, top_k >= 0, top_p in (0, 1]); reserves its buffers for
  // `vocab_size` so that sample() never allocates.
  static base::Status create(const SamplerConfig& cfg, int32_t vocab_size, Sampler* out);

  // Index of the chosen token; `logits` (vocab_size floats) is used as scratch.
  int32_t sample(float* logits);
  const SamplerConfig& config() const { return cfg_; }

 private:
  SamplerConfig cfg_;
  int32_t vocab_size_ = 0;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;  // candidate ids, sorted by probability
};

// Index of the largest value, lowest index on ties.
int32_t argmax(const float* x, int32_t n);

}  // namespace sampler
