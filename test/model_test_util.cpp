#include "model_test_util.h"

#include <gtest/gtest.h>

#include "model/generator.h"
#include "sampler/sampler.h"

namespace testutil {

namespace {
model::GenerateOptions no_stop(int n) {
  model::GenerateOptions go;
  go.max_new_tokens = n;
  go.stop_at_eos = false;
  return go;
}
}  // namespace

::testing::AssertionResult kv_cache_is_one_block(const model::LlamaModel& m, uint64_t bytes) {
  const model::KVCacheManager& kv = m.kv_cache();
  const std::shared_ptr<base::Buffer> block = kv.key(0).buffer();  // a copy: key(0) is a temporary
  if (!block->owns_memory() || block->size() != bytes)
    return ::testing::AssertionFailure() << "block of " << block->size() << " bytes (owned: " << block->owns_memory()
                                         << "), expected " << bytes;
  const char* next = static_cast<const char*>(block->data());
  for (int l = 0; l < m.config().n_layers; ++l) {
    for (const tensor::Tensor& t : {kv.key(l), kv.value(l)}) {
      if (t.buffer() != block) return ::testing::AssertionFailure() << "layer " << l << " has a buffer of its own";
      if (t.data() != next || t.dim(0) != m.max_seq_len())
        return ::testing::AssertionFailure() << "layer " << l << ": " << t.shape_string() << " not where expected";
      next += t.nbytes();
    }
  }
  if (next != static_cast<const char*>(block->data()) + bytes)
    return ::testing::AssertionFailure() << "the views end " << (next - static_cast<const char*>(block->data()))
                                         << " bytes into a block of " << bytes;
  return ::testing::AssertionSuccess();
}

std::vector<int32_t> greedy(model::LlamaModel& m, const std::vector<int32_t>& prompt, int n) {
  sampler::Sampler smp;
  EXPECT_TRUE(sampler::Sampler::create({}, m.config().vocab_size, &smp).ok());
  std::vector<float> logits(m.config().vocab_size);
  std::vector<int32_t> out;
  model::GenerateStats st;
  const base::Status s = model::generate(m, smp, prompt, 0, no_stop(n), logits.data(), [&](int32_t t) {
    out.push_back(t);
    return true;
  }, &st);
  EXPECT_TRUE(s.ok()) << s.message();
  return out;
}

std::vector<int32_t> greedy(model::TpRunner& r, const std::vector<int32_t>& prompt, int n) {
  std::vector<int32_t> out;
  model::GenerateStats st;
  const base::Status s = r.generate({}, prompt, 0, no_stop(n), [&](int32_t t) {
    out.push_back(t);
    return true;
  }, &st);
  EXPECT_TRUE(s.ok()) << s.message();
  return out;
}

}  // namespace testutil
