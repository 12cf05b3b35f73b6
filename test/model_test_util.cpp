#include "model_test_util.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <thread>

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

::testing::AssertionResult kv_cache_is_one_block(const model::LlamaModel& m, uint64_t bytes) {
  const model::KVCacheManager& kv = m.kv_cache();
  const std::shared_ptr<base::Buffer> block = kv.key(0).buffer();  // a copy: key(0) is a temporary
  if (!block->owns_memory() || block->size() != bytes)
    return ::testing::AssertionFailure() << "block of " << block->size() << " bytes (owned: " << block->owns_memory()
                                         << "), expected " << bytes;
  const char* next = static_cast<const char*>(block->data());
  for (int l = 0; l < kv.shape().n_layers; ++l) {  // the model's layers, or a pipeline stage's
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

bool write_random_llama2c(const std::string& path, const RandomShape& c, uint32_t seed) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const int32_t header[7] = {c.dim, c.hidden, c.layers, c.heads, c.kv_heads, c.vocab, c.seq_len};
  bool ok = std::fwrite(header, sizeof header, 1, f) == 1;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.15f, 0.15f);
  auto put = [&](int64_t n, bool ones) {
    std::vector<float> v(n);
    for (float& x : v) x = ones ? 1.f : u(rng);
    ok = ok && std::fwrite(v.data(), sizeof(float), v.size(), f) == v.size();
  };
  const int64_t L = c.layers, D = c.dim, F = c.hidden, kv = (int64_t)c.dim / c.heads * c.kv_heads;
  put((int64_t)c.vocab * D, false);                  // tok_embeddings [vocab, dim] (tied classifier)
  put(L * D, true);                                  // attention_norm
  put(L * D * D, false);                             // wq
  put(L * kv * D, false);                            // wk
  put(L * kv * D, false);                            // wv
  put(L * D * D, false);                             // wo
  put(L * D, true);                                  // ffn_norm
  put(L * F * D, false);                             // w1
  put(L * D * F, false);                             // w2
  put(L * F * D, false);                             // w3
  put(D, true);                                      // norm
  put((int64_t)c.seq_len * (D / c.heads), false);    // freq_cis_real + imag (unused by the engine)
  return std::fclose(f) == 0 && ok;
}

FaultRun run_with_fault(runtime::TpRunner& r, const std::vector<int32_t>& prompt, int steps, int bad_rank,
                        int at_step, int hang_ms) {
  FaultRun out;
  out.per_rank.resize(r.world_size());
  out.seconds.assign(r.world_size(), -1);
  const auto t0 = std::chrono::steady_clock::now();
  auto body = [&](int rank) -> base::Status {
    model::LlamaModel& m = r.model(rank);
    std::vector<float> logits(m.config().vocab_size);
    KP_RETURN_IF_ERROR(m.prefill(prompt, 0, logits.data()));
    int32_t tok = prompt.back();
    for (int i = 0; i < steps; ++i) {
      if (rank == bad_rank && i == at_step) {
        if (hang_ms == 0) return base::Internal("injected failure");
        std::this_thread::sleep_for(std::chrono::milliseconds(hang_ms));
        return base::Status::Ok();
      }
      KP_RETURN_IF_ERROR(m.decode_greedy(tok, (int32_t)prompt.size() + i, &tok));
    }
    return base::Status::Ok();
  };
  out.status = r.run([&](int rank) {
    out.per_rank[rank] = body(rank);
    out.seconds[rank] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return out.per_rank[rank];
  });
  return out;
}

std::vector<std::vector<float>> logits_trace(runtime::TpRunner& r, const std::vector<int32_t>& prompt,
                                             const std::vector<int32_t>& feed) {
  const int vocab = r.config().vocab_size;
  std::vector<std::vector<float>> out(feed.size() + 1, std::vector<float>(vocab));
  std::vector<std::vector<float>> scratch(r.world_size(), std::vector<float>(vocab));  // ranks > 0
  const base::Status s = r.run([&](int rank) -> base::Status {
    model::LlamaModel& m = r.model(rank);
    auto dst = [&](size_t row) { return rank == 0 ? out[row].data() : scratch[rank].data(); };
    KP_RETURN_IF_ERROR(m.prefill(prompt, 0, dst(0)));
    for (size_t i = 0; i < feed.size(); ++i)
      KP_RETURN_IF_ERROR(m.forward(&feed[i], 1, (int32_t)(prompt.size() + i), dst(i + 1)));
    return base::Status::Ok();
  });
  EXPECT_TRUE(s.ok()) << s.message();
  return out;
}

}  // namespace testutil
