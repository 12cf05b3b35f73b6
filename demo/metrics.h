// llama_server's /metrics: counters and latency histograms in the Prometheus text format
// (https://prometheus.io/docs/instrumenting/exposition_formats/), plus the scheduler's gauges.
//
//   llama_requests_total{endpoint, status}     requests answered, by HTTP status
//   llama_requests_running / _waiting          sequences in the batch / in the queue
//   llama_prompt_tokens_total                  prompt tokens of admitted requests
//   llama_generation_tokens_total              tokens generated
//   llama_prefix_cache_hit_tokens_total        prompt tokens found in the prefix cache (not prefilled)
//   llama_preemptions_total                    sequences sent back to the queue when pages ran out
//   llama_kv_pages_total / _used / _cached / _free   the paged KV cache (used: held by sequences;
//                                              cached: free but holding a reusable prefix)
//   llama_time_to_first_token_seconds          histogram: request received -> first token
//   llama_inter_token_latency_seconds          histogram: between consecutive tokens of a stream
//   llama_request_duration_seconds             histogram: request received -> last token
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/scheduler.h"

namespace app {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double v);
  // The _bucket (cumulative, with +Inf), _sum and _count lines of `name`.
  std::string text(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; the last is above every bound
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  void request_done(const std::string& endpoint, int status);
  void first_token(double seconds);
  void inter_token(double seconds);
  void request_duration(double seconds);
  // Everything, with the scheduler's figures.
  std::string text(const runtime::SchedulerStats& s);

 private:
  std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  Histogram ttft_, itl_, duration_;
};

}  // namespace app
