#include "sampler/sampler.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace sampler {

int32_t argmax(const float* x, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

base::Status Sampler::create(const SamplerConfig& cfg, int32_t vocab_size, Sampler* out, int32_t max_context) {
  if (!(cfg.temperature >= 0) || !std::isfinite(cfg.temperature))
    return base::InvalidArgument("--temperature must be >= 0 (got " + std::to_string(cfg.temperature) + ")");
  if (!(cfg.top_p > 0 && cfg.top_p <= 1)) return base::InvalidArgument("--top_p must be in (0, 1]");
  if (cfg.top_k < 0) return base::InvalidArgument("--top_k must be >= 0");
  if (!(cfg.min_p >= 0 && cfg.min_p <= 1)) return base::InvalidArgument("--min_p must be in [0, 1]");
  if (!(cfg.repeat_penalty > 0) || !std::isfinite(cfg.repeat_penalty))
    return base::InvalidArgument("--repeat_penalty must be > 0 (1 is off)");
  if (cfg.repeat_last_n < -1) return base::InvalidArgument("--repeat_last_n must be >= 0, or -1 for the whole context");
  if (vocab_size <= 0) return base::InvalidArgument("empty vocabulary");
  out->cfg_ = cfg;
  out->vocab_size_ = vocab_size;
  out->rng_.seed(cfg.seed);
  out->order_.resize(vocab_size);
  out->window_ = cfg.repeat_last_n == -1 ? std::max(1, max_context) : cfg.repeat_last_n;
  out->recent_.assign(out->window_, 0);
  out->seen_.assign(cfg.repeat_penalty != 1.f && out->window_ > 0 ? vocab_size : 0, 0);
  out->filled_ = out->head_ = 0;
  return base::Status::Ok();
}

void Sampler::accept(int32_t token) {
  if (window_ == 0) return;
  recent_[head_] = token;
  head_ = (head_ + 1) % window_;
  filled_ = std::min(filled_ + 1, window_);
}

void Sampler::reset_history() { filled_ = head_ = 0; }

// Each distinct token of the window is penalised once, however often it occurs (as llama.cpp does).
void Sampler::apply_penalty(float* logits) {
  for (int32_t i = 0; i < filled_; ++i) {
    const int32_t t = recent_[i];
    if (t < 0 || t >= vocab_size_ || seen_[t]) continue;
    seen_[t] = 1;
    logits[t] = logits[t] > 0 ? logits[t] / cfg_.repeat_penalty : logits[t] * cfg_.repeat_penalty;
  }
  for (int32_t i = 0; i < filled_; ++i)
    if (recent_[i] >= 0 && recent_[i] < vocab_size_) seen_[recent_[i]] = 0;
}

int32_t Sampler::sample(float* logits) {
  const int32_t n = vocab_size_;
  if (penalised()) apply_penalty(logits);
  if (cfg_.temperature == 0.f) return argmax(logits, n);

  // probabilities = softmax(logits / temperature), in place.
  const float max_l = logits[argmax(logits, n)];
  double sum = 0;
  for (int32_t i = 0; i < n; ++i) {
    logits[i] = std::exp((logits[i] - max_l) / cfg_.temperature);
    sum += logits[i];
  }
  for (int32_t i = 0; i < n; ++i) logits[i] = (float)(logits[i] / sum);

  // Candidates by decreasing probability (ties by id, so the order is deterministic), cut to top_k.
  const int32_t k = cfg_.top_k > 0 ? std::min(cfg_.top_k, n) : n;
  for (int32_t i = 0; i < n; ++i) order_[i] = i;
  auto by_prob = [logits](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), by_prob);

  // Nucleus: the shortest prefix whose mass reaches top_p; then min_p drops the tokens less likely
  // than min_p times the most likely one (the first, which always stays).
  int32_t m = 0;
  double mass = 0;
  const float floor_p = cfg_.min_p * logits[order_[0]];
  while (m < k) {
    if (m > 0 && logits[order_[m]] < floor_p) break;
    mass += logits[order_[m++]];
    if (mass >= cfg_.top_p) break;
  }
  std::uniform_real_distribution<double> u(0.0, mass);
  const double r = u(rng_);
  double acc = 0;
  for (int32_t i = 0; i < m; ++i) {
    acc += logits[order_[i]];
    if (r < acc) return order_[i];
  }
  return order_[m - 1];  // rounding left r at the very top
}

}  // namespace sampler
