#include "metrics.h"

#include <algorithm>
#include <cstdio>
#include <malloc.h>

namespace app {

namespace {
std::string num(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void gauge(std::string* out, const char* name, const char* help, const char* type, double v) {
  *out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " + num(v) + "\n";
}
}  // namespace

void Histogram::observe(double v) {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();  // first bound >= v
  ++counts_[i];
  sum_ += v;
  ++count_;
}

std::string Histogram::text(const std::string& name, const std::string& help) const {
  std::string out = "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += name + "_bucket{le=\"" + num(bounds_[i]) + "\"} " + std::to_string(cum) + "\n";
  }
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(count_) + "\n";
  out += name + "_sum " + num(sum_) + "\n" + name + "_count " + std::to_string(count_) + "\n";
  return out;
}

Metrics::Metrics()
    : ttft_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}),
      itl_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}),
      duration_({0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}) {}

void Metrics::request_done(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{endpoint, status}];
}
void Metrics::first_token(double s) {
  std::lock_guard<std::mutex> lock(mu_);
  ttft_.observe(s);
}
void Metrics::inter_token(double s) {
  std::lock_guard<std::mutex> lock(mu_);
  itl_.observe(s);
}
void Metrics::request_duration(double s) {
  std::lock_guard<std::mutex> lock(mu_);
  duration_.observe(s);
}

std::string Metrics::text(const runtime::SchedulerStats& s) {
  std::string out = "# HELP llama_requests_total Requests answered, by endpoint and HTTP status.\n"
                    "# TYPE llama_requests_total counter\n";
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [key, n] : requests_)
    out += "llama_requests_total{endpoint=\"" + key.first + "\",status=\"" + std::to_string(key.second) + "\"} " +
           std::to_string(n) + "\n";
  gauge(&out, "llama_requests_running", "Sequences in the running batch.", "gauge", s.running);
  gauge(&out, "llama_requests_waiting", "Requests waiting in the queue.", "gauge", s.waiting);
  gauge(&out, "llama_prompt_tokens_total", "Prompt tokens of admitted requests.", "counter", (double)s.prompt_tokens);
  gauge(&out, "llama_prefill_tokens_total", "Tokens run through the model as prefill (recomputation included).",
        "counter", (double)s.prefilled_tokens);
  gauge(&out, "llama_generation_tokens_total", "Tokens generated.", "counter", (double)s.generated_tokens);
  gauge(&out, "llama_prefix_cache_hit_tokens_total", "Prompt tokens found in the prefix cache.", "counter",
        (double)s.prefix_hit_tokens);
  gauge(&out, "llama_preemptions_total", "Sequences sent back to the queue when KV pages ran out.", "counter",
        (double)s.preemptions);
  gauge(&out, "llama_requests_refused_total", "Requests refused because the queue was full (503).", "counter",
        (double)s.refused);
  gauge(&out, "llama_engine_steps_total", "Forward steps run.", "counter", (double)s.steps);
  // The C heap in use (glibc's mallinfo2: allocated chunks plus mmapped blocks), beside the resident set:
  // memory that a load leaves behind shows here when it is held, and only in the RSS when it is freed
  // but not returned to the system.
  const struct mallinfo2 mi = mallinfo2();
  gauge(&out, "llama_heap_bytes_in_use", "C heap bytes allocated and not freed (glibc mallinfo2).", "gauge",
        (double)(mi.uordblks + mi.hblkhd));
  gauge(&out, "llama_kv_pages_total", "Pages of the KV cache.", "gauge", s.pages_total);
  gauge(&out, "llama_kv_pages_used", "KV pages held by sequences.", "gauge", s.pages_used);
  gauge(&out, "llama_kv_pages_cached", "Free KV pages still holding a reusable prefix.", "gauge", s.pages_cached);
  gauge(&out, "llama_kv_pages_free", "KV pages holding nothing.", "gauge", s.pages_free);
  out += ttft_.text("llama_time_to_first_token_seconds", "Time from a request's arrival to its first token.");
  out += itl_.text("llama_inter_token_latency_seconds", "Time between consecutive tokens of a request.");
  out += duration_.text("llama_request_duration_seconds", "Time from a request's arrival to its last token.");
  return out;
}

}  // namespace app
