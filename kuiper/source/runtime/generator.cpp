#include "runtime/generator.h"

#include <algorithm>
#include <chrono>

namespace runtime {

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

base::Status generate(model::LlamaModel& model, sampler::Sampler& sampler, const std::vector<int32_t>& prompt,
                      int32_t pos, const GenerateOptions& opts, float* logits, const TokenCallback& on_token,
                      GenerateStats* stats) {
  *stats = GenerateStats{};
  stats->prompt_tokens = (int32_t)prompt.size();
  if (prompt.empty()) return base::InvalidArgument("empty prompt: nothing to condition on");
  if (pos + (int32_t)prompt.size() > model.max_seq_len())
    return base::InvalidArgument("the prompt (" + std::to_string(prompt.size()) + " tokens) does not fit in the " +
                                 std::to_string(model.max_seq_len() - pos) + " positions left in the context");
  const std::vector<int32_t>& eos = model.config().eos_ids;
  // Plain argmax runs on the device and only the token id comes back; penalties need the logits.
  const bool greedy = sampler.is_greedy();
  for (int32_t t : prompt) sampler.accept(t);

  auto t0 = std::chrono::steady_clock::now();
  KP_RETURN_IF_ERROR(model.prefill(prompt, pos, logits));
  pos += (int32_t)prompt.size();
  int32_t token = sampler.sample(logits);
  sampler.accept(token);
  stats->prefill_ms = ms_since(t0);
  stats->stop_reason = "length";

  auto t1 = std::chrono::steady_clock::now();
  for (int32_t i = 0; i < opts.max_new_tokens; ++i) {
    if ((opts.stop_at_eos && std::find(eos.begin(), eos.end(), token) != eos.end()) ||
        std::find(opts.extra_stop_ids.begin(), opts.extra_stop_ids.end(), token) != opts.extra_stop_ids.end()) {
      stats->stop_reason = "eos";
      break;
    }
    ++stats->generated_tokens;
    if (!on_token(token)) {
      stats->stop_reason = "stopped";
      break;
    }
    if (i + 1 == opts.max_new_tokens) break;
    if (pos >= model.max_seq_len()) {
      stats->stop_reason = "context";
      break;
    }
    if (greedy) {
      KP_RETURN_IF_ERROR(model.decode_greedy(token, pos, &token));  // argmax on the device
    } else {
      KP_RETURN_IF_ERROR(model.forward(&token, 1, pos, logits));
      token = sampler.sample(logits);
      sampler.accept(token);
    }
    ++pos;
  }
  stats->decode_ms = ms_since(t1);
  stats->next_pos = pos;
  stats->unfed_token = token;
  return base::Status::Ok();
}

}  // namespace runtime
