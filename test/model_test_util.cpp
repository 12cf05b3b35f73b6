#include "model_test_util.h"

#include <gtest/gtest.h>

#include "runtime/generator.h"
#include "sampler/sampler.h"

namespace testutil {

namespace {
runtime::GenerateOptions no_stop(int n) {
  runtime::GenerateOptions go;
  go.max_new_tokens = n;
  go.stop_at_eos = false;
  return go;
}
}  // namespace

std::vector<int32_t> greedy(model::LlamaModel& m, const std::vector<int32_t>& prompt, int n) {
  sampler::Sampler smp;
  EXPECT_TRUE(sampler::Sampler::create({}, m.config().vocab_size, &smp).ok());
  std::vector<float> logits(m.config().vocab_size);
  std::vector<int32_t> out;
  runtime::GenerateStats st;
  const base::Status s = runtime::generate(m, smp, prompt, 0, no_stop(n), logits.data(), [&](int32_t t) {
    out.push_back(t);
    return true;
  }, &st);
  EXPECT_TRUE(s.ok()) << s.message();
  return out;
}

std::vector<int32_t> greedy(runtime::TpRunner& r, const std::vector<int32_t>& prompt, int n) {
  std::vector<int32_t> out;
  runtime::GenerateStats st;
  const base::Status s = r.generate({}, prompt, 0, no_stop(n), [&](int32_t t) {
    out.push_back(t);
    return true;
  }, &st);
  EXPECT_TRUE(s.ok()) << s.message();
  return out;
}

}  // namespace testutil
