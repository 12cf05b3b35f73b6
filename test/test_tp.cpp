// Tensor parallelism on the CPU: N ranks as threads with the CpuCommunicator run the same sharding
// arithmetic as NCCL on GPUs. tp 2 and 4 must give the greedy tokens of tp 1 and logits within 1e-5.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <thread>

#include "base/cpu_communicator.h"
#include "model/tp_runner.h"
#include "heap_counter.h"
#include "model_test_util.h"
#include "test_util.h"

namespace {

std::unique_ptr<model::ModelFile> stories() {
  std::unique_ptr<model::ModelFile> f;
  EXPECT_TRUE(model::ModelFile::open(testutil::models_dir() + "/stories260K/stories260K.bin", &f).ok());
  return f;
}

std::unique_ptr<model::TpRunner> runner(const model::ModelFile& f, int tp) {
  std::unique_ptr<model::TpRunner> r;
  const base::Status s = model::TpRunner::create(f, {}, tp, &r);
  EXPECT_TRUE(s.ok()) << s.message();
  return r;
}

// Logits of the last prompt token on every rank.
std::vector<std::vector<float>> prefill_logits(model::TpRunner& r, const std::vector<int32_t>& prompt) {
  std::vector<std::vector<float>> out(r.world_size(), std::vector<float>(r.config().vocab_size));
  EXPECT_TRUE(r.run([&](int rank) { return r.model(rank).prefill(prompt, 0, out[rank].data()); }).ok());
  return out;
}

using testutil::greedy;

const std::vector<int32_t> kPrompt = {1, 403, 407, 261, 378};  // "Once upon a time" in tok512

TEST(TensorParallelCpu, LogitsMatchOneRank) {
  KP_SKIP_WITHOUT_MODELS();
  auto f = stories();
  const std::vector<float> ref = prefill_logits(*runner(*f, 1), kPrompt)[0];
  const std::vector<double> ref64(ref.begin(), ref.end());
  for (int tp : {2, 4}) {
    auto logits = prefill_logits(*runner(*f, tp), kPrompt);
    for (int rank = 0; rank < tp; ++rank) {
      // Only the summation order of the row-parallel products differs: fp32 rounding.
      EXPECT_TRUE(testutil::all_close(logits[rank], ref64, 1e-5, 1e-5)) << "tp " << tp << " rank " << rank;
      EXPECT_EQ(logits[rank], logits[0]) << "ranks must agree bitwise (tp " << tp << ")";
    }
  }
}

// A 300-token prompt: the row-parallel matmuls run in chunks of 128 tokens with the all-reduce of each
// chunk started before the next is multiplied (op/matmul.cpp); the result must not change.
TEST(TensorParallelCpu, ChunkedRowParallelPrefillMatchesOneRank) {
  KP_SKIP_WITHOUT_MODELS();
  auto f = stories();
  std::vector<int32_t> prompt(300);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = 3 + (int32_t)((i * 7919) % 500);
  const std::vector<float> ref = prefill_logits(*runner(*f, 1), prompt)[0];
  const auto tp2 = prefill_logits(*runner(*f, 2), prompt);
  EXPECT_TRUE(testutil::all_close(tp2[1], std::vector<double>(ref.begin(), ref.end()), 1e-5, 1e-5));
}

TEST(TensorParallelCpu, GreedyTokensMatchOneRank) {
  KP_SKIP_WITHOUT_MODELS();
  auto f = stories();
  const auto ref = greedy(*runner(*f, 1), kPrompt, 100);
  EXPECT_EQ(greedy(*runner(*f, 2), kPrompt, 100), ref);
  EXPECT_EQ(greedy(*runner(*f, 4), kPrompt, 100), ref);
}

// One rank with a communicator runs the collectives anyway (the path --tp 1 takes through NCCL on a GPU).
TEST(TensorParallelCpu, OneRankWithCollectivesMatches) {
  KP_SKIP_WITHOUT_MODELS();
  auto f = stories();
  model::ModelOptions o;
  o.collectives_at_one_rank = true;
  std::unique_ptr<model::TpRunner> r;
  ASSERT_TRUE(model::TpRunner::create(*f, o, 1, &r).ok());
  EXPECT_EQ(greedy(*r, kPrompt, 60), greedy(*runner(*f, 1), kPrompt, 60));
}

TEST(TensorParallelCpu, EachRankHoldsItsShare) {
  KP_SKIP_WITHOUT_MODELS();
  auto f = stories();
  auto one = runner(*f, 1);
  auto four = runner(*f, 4);
  // stories260K's cache, 5 layers x 2 x 512 positions x 8 head_dim x 4 bytes per KV head (by hand):
  // its 4 KV heads on one rank, one on each of four.
  EXPECT_TRUE(testutil::kv_cache_is_one_block(one->model(0), 4 * 163840));
  for (int r = 0; r < 4; ++r) EXPECT_TRUE(testutil::kv_cache_is_one_block(four->model(r), 163840)) << "rank " << r;
  EXPECT_EQ(four->model(3).weights().layers[0].wq.out_features(), 16);  // 2 of 8 heads x head_dim 8
  EXPECT_EQ(four->model(3).weights().layers[0].wo.in_features(), 16);
  EXPECT_EQ(four->model(1).weights().layers[0].w2.in_features(), 43);  // 172 / 4
}

// --tp 2 on the CPU: after the first decoded token, 200 decode steps of both ranks (their threads,
// the all-reduces and all-gathers of the CpuCommunicator, the per-token handshake) make no heap
// allocation at all, greedy and sampled. Every malloc / new of the process is counted (heap_counter.h).
TEST(TensorParallelCpu, NoAllocationWhileDecoding) {
  KP_SKIP_WITHOUT_MODELS();
  ASSERT_TRUE(testutil::heap_counter_works()) << "the heap counter is not linked into this test";
  auto f = stories();
  auto r = runner(*f, 2);
  for (const sampler::SamplerConfig& sc : {sampler::SamplerConfig{}, sampler::SamplerConfig{0.9f, 40, 0.95f, 7}}) {
    testutil::DecodeWindow window(200);
    model::GenerateOptions go;
    go.max_new_tokens = window.total_tokens();
    go.stop_at_eos = false;
    model::GenerateStats st;
    ASSERT_TRUE(r->generate(sc, kPrompt, 0, go, [&](int32_t) {
      window.on_token();
      return true;
    }, &st).ok());
    ASSERT_TRUE(window.complete());
    EXPECT_EQ(window.allocations(), 0) << "heap allocations in 200 decode steps at --tp 2 (temperature "
                                       << sc.temperature << ")";
  }
}

TEST(TensorParallelCpu, SizesThatDoNotDivideAreRejected) {
  KP_SKIP_WITHOUT_MODELS();
  auto f = stories();
  std::unique_ptr<model::TpRunner> r;
  const base::Status s = model::TpRunner::create(*f, {}, 3, &r);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("does not divide"), std::string::npos) << s.message();
}

// The Hugging Face fixture llama3_gqa (8 query heads, 2 KV heads, FFN 192) exported to fp32 with
// tools/export.py. tp 4 and 8 exceed its KV heads: each KV head is replicated on 2 or 4 ranks.
TEST(TensorParallelCpu, MoreRanksThanKvHeadsReplicatesThem) {
  KP_SKIP_WITHOUT_MODELS();
  const std::string out = testing::TempDir() + "/tp_llama3_gqa_" + std::to_string(getpid()) + ".bin";
  const std::string cmd = "python3 " + testutil::source_dir() + "/tools/export.py -q --hf " + testutil::source_dir() +
                          "/test/fixtures/hf/llama3_gqa --tokenizer " + testutil::models_dir() +
                          "/stories260K/tok512.model --dtype fp32 " + out;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::unique_ptr<model::ModelFile> f;
  ASSERT_TRUE(model::ModelFile::open(out, &f).ok());
  const auto ref = greedy(*runner(*f, 1), kPrompt, 40);
  for (int tp : {2, 4, 8}) {
    auto r = runner(*f, tp);
    EXPECT_EQ(r->model(tp - 1).weights().n_kv_heads_local, 1);  // 2 KV heads over >= 2 ranks
    EXPECT_EQ(greedy(*r, kPrompt, 40), ref) << "tp " << tp;
  }
  std::remove(out.c_str());
}

TEST(CpuCommunicator, AllReduceAndAllGather) {
  const int world = 3;
  base::CpuCommGroup group(world);
  std::vector<tensor::Tensor> x(world), g(world);
  for (int r = 0; r < world; ++r) {
    x[r] = testutil::random_cpu({7}, 100 + r);
    ASSERT_TRUE(tensor::Tensor::create(base::DType::kFp32, {world * 7}, base::CPUAllocator::get(), &g[r]).ok());
  }
  std::vector<double> sum(7, 0.0);
  std::vector<float> cat;
  for (int r = 0; r < world; ++r)
    for (int i = 0; i < 7; ++i) sum[i] += x[r].ptr<float>()[i], cat.push_back(x[r].ptr<float>()[i]);
  std::vector<std::thread> th;
  for (int r = 0; r < world; ++r)
    th.emplace_back([&, r] {
      ASSERT_TRUE(group.rank(r)->all_gather(x[r], g[r], nullptr).ok());
      ASSERT_TRUE(group.rank(r)->all_reduce_sum(x[r], nullptr).ok());
    });
  for (auto& t : th) t.join();
  for (int r = 0; r < world; ++r) {
    EXPECT_TRUE(testutil::all_close(x[r], sum, 1e-6, 1e-6));
    EXPECT_EQ(std::vector<float>(g[r].ptr<float>(), g[r].ptr<float>() + world * 7), cat);
  }
}

}  // namespace
