// Tensor parallelism on the CPU: N ranks as threads with the CpuCommunicator run the same sharding
// arithmetic as NCCL on GPUs. tp 2 and 4 must give the greedy tokens of tp 1 and logits within 1e-5.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>

#include "comm/cpu_communicator.h"
#include "comm/host_barrier.h"
#include "runtime/tp_runner.h"
#include "heap_counter.h"
#include "model_test_util.h"
#include "test_util.h"

namespace {

std::unique_ptr<model::ModelFile> stories() {
  std::unique_ptr<model::ModelFile> f;
  EXPECT_TRUE(model::ModelFile::open(testutil::models_dir() + "/stories260K/stories260K.bin", &f).ok());
  return f;
}

std::unique_ptr<runtime::TpRunner> runner(const model::ModelFile& f, int tp) {
  std::unique_ptr<runtime::TpRunner> r;
  const base::Status s = runtime::TpRunner::create(f, {}, tp, &r);
  EXPECT_TRUE(s.ok()) << s.message();
  return r;
}

// Logits of the last prompt token on every rank.
std::vector<std::vector<float>> prefill_logits(runtime::TpRunner& r, const std::vector<int32_t>& prompt) {
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
  std::unique_ptr<runtime::TpRunner> r;
  ASSERT_TRUE(runtime::TpRunner::create(*f, o, 1, &r).ok());
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
    runtime::GenerateOptions go;
    go.max_new_tokens = window.total_tokens();
    go.stop_at_eos = false;
    runtime::GenerateStats st;
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
  std::unique_ptr<runtime::TpRunner> r;
  const base::Status s = runtime::TpRunner::create(*f, {}, 3, &r);
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

// One KV head (a random llama2.c model written by the test) over 2 and 4 ranks: replicated.
TEST(TensorParallelCpu, OneKvHeadOverSeveralRanks) {
  const std::string path = testing::TempDir() + "/tp_mqa_" + std::to_string(getpid()) + ".bin";
  ASSERT_TRUE(testutil::write_random_llama2c(path, {}, 7));
  std::unique_ptr<model::ModelFile> f;
  ASSERT_TRUE(model::ModelFile::open(path, &f).ok());
  const auto ref = greedy(*runner(*f, 1), kPrompt, 60);
  for (int tp : {2, 4}) {
    auto r = runner(*f, tp);
    EXPECT_EQ(r->model(tp - 1).weights().n_kv_heads_local, 1);
    EXPECT_EQ(greedy(*r, kPrompt, 60), ref) << "tp " << tp;
  }
  std::remove(path.c_str());
}

// A rank that fails ends the whole run at once: the other ranks are inside a collective waiting for it,
// and the runner's abort must release them long before the 60 s timeout.
TEST(TensorParallelCpu, FailingRankStopsEveryRankWithinSeconds) {
  KP_SKIP_WITHOUT_MODELS();
  auto f = stories();
  for (int tp : {2, 4}) {
    auto r = runner(*f, tp);
    const testutil::FaultRun fr = testutil::run_with_fault(*r, kPrompt, 200, 1, 5, 0);
    EXPECT_FALSE(fr.status.ok());
    EXPECT_EQ(fr.status.message(), "rank 1: injected failure") << "tp " << tp;
    for (int rank = 0; rank < tp; ++rank) {
      EXPECT_FALSE(fr.per_rank[rank].ok()) << "rank " << rank << " of tp " << tp << " went on after rank 1 failed";
      EXPECT_LT(fr.seconds[rank], 5.0) << "rank " << rank << " of tp " << tp;
    }
    // The runner is spent: a later run fails at once with the same cause.
    EXPECT_EQ(r->run([](int) { return base::Status::Ok(); }).message(), "rank 1: injected failure");
  }
}

// A rank that hangs (never reaches the next collective) is caught by the timeout: the waiting ranks
// fail after it, with a message that says so, instead of waiting for ever.
TEST(TensorParallelCpu, HangingRankIsCaughtByTheTimeout) {
  KP_SKIP_WITHOUT_MODELS();
  auto f = stories();
  auto r = runner(*f, 2);
  r->set_timeout_ms(500);
  const testutil::FaultRun fr = testutil::run_with_fault(*r, kPrompt, 200, 1, 5, 3000);
  EXPECT_FALSE(fr.status.ok());
  EXPECT_NE(fr.status.message().find("rank 0: the other ranks did not reach a collective within 0.5 s"),
            std::string::npos)
      << fr.status.message();
  EXPECT_FALSE(fr.per_rank[0].ok());
  EXPECT_LT(fr.seconds[0], 2.5);  // 0.5 s timeout plus the prefill and a few decode steps
}

// An exception thrown inside a rank becomes that rank's error, and it stops the others too.
TEST(TensorParallelCpu, ExceptionInARankBecomesAnError) {
  KP_SKIP_WITHOUT_MODELS();
  auto f = stories();
  auto r = runner(*f, 2);
  const base::Status s = r->run([&](int rank) -> base::Status {
    if (rank == 1) throw std::runtime_error("boom");
    std::vector<float> logits(r->config().vocab_size);
    return r->model(rank).prefill(kPrompt, 0, logits.data());  // waits for rank 1 in its all-reduce
  });
  EXPECT_EQ(s.message(), "rank 1: exception: boom");
}

TEST(HostBarrier, ReleasesWhenAllArriveFailsOnAbortAndOnTimeout) {
  comm::HostBarrier b(2, 300);
  base::Status s1;
  std::thread t([&] { s1 = b.wait(1); });
  EXPECT_TRUE(b.wait(0).ok());
  t.join();
  EXPECT_TRUE(s1.ok());

  const auto t0 = std::chrono::steady_clock::now();
  const base::Status late = b.wait(0);  // nobody else comes
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_FALSE(late.ok());
  EXPECT_GE(waited, 0.29);
  EXPECT_LT(waited, 2.0);
  EXPECT_EQ(late.message(), "rank 0: the other ranks did not reach a collective within 0.3 s (a rank failed or hung)");
  EXPECT_FALSE(b.wait(1).ok());  // aborted for good

  comm::HostBarrier c(3);
  std::vector<base::Status> st(2);
  std::vector<std::thread> waiters;
  for (int i = 0; i < 2; ++i) waiters.emplace_back([&, i] { st[i] = c.wait(i); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  c.abort("rank 2: gave up");
  for (auto& w : waiters) w.join();
  for (const auto& x : st) EXPECT_EQ(x.message(), "rank 2: gave up");
}

TEST(CpuCommunicator, AllReduceAndAllGather) {
  const int world = 3;
  comm::CpuCommGroup group(world);
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

// A pipeline stage in one process, without MPI: what it loads, and what it refuses. (Stages talking
// to each other run under mpirun: test_mpi.cpp.)
class StageRank final : public comm::Communicator {  // says where the stage stands; never called
 public:
  StageRank(int rank, int world) : rank_(rank), world_(world) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  base::Status all_reduce_start(tensor::Tensor&, void*) override { return base::Internal("not for this test"); }
  base::Status all_reduce_finish(void*) override { return base::Internal("not for this test"); }
  base::Status all_gather(const tensor::Tensor&, tensor::Tensor&, void*) override { return base::Internal("not for this test"); }
  base::Status wait(void*) override { return base::Status::Ok(); }
  void abort(const std::string&) override {}
  bool aborted() const override { return false; }

 private:
  int rank_, world_;
};

TEST(PipelineStage, HoldsOnlyItsLayers) {
  KP_SKIP_WITHOUT_MODELS();
  auto f = stories();  // 5 layers, tied embeddings
  StageRank first(0, 2), last(1, 2);
  model::ModelOptions o;
  o.layer_begin = 0, o.layer_end = 2, o.pipe = &first;
  std::unique_ptr<model::LlamaModel> a, b, all;
  ASSERT_TRUE(model::LlamaModel::create(*f, o, &a).ok());
  o.layer_begin = 2, o.layer_end = 5, o.pipe = &last;
  ASSERT_TRUE(model::LlamaModel::create(*f, o, &b).ok());
  ASSERT_TRUE(model::LlamaModel::create(*f, {}, &all).ok());
  // The KV cache of 2 of the 5 layers, by hand: 2 layers x 2 (K, V) x 512 positions x 4 KV heads x 8 x 4 bytes.
  EXPECT_TRUE(testutil::kv_cache_is_one_block(*a, 262144));
  EXPECT_EQ(a->kv_cache().bytes() + b->kv_cache().bytes(), all->kv_cache().bytes());
  EXPECT_EQ(b->kv_cache().bytes(), 3 * all->kv_cache().bytes() / 5);
  // Layers outside the range hold nothing; the embedding is on the first stage and, tied, the last.
  EXPECT_TRUE(a->weights().layers[2].wo.weight().empty());
  EXPECT_FALSE(a->weights().layers[1].wo.weight().empty());
  EXPECT_TRUE(b->weights().layers[1].w2.weight().empty());
  EXPECT_FALSE(b->weights().layers[4].w2.weight().empty());
  EXPECT_TRUE(a->weights().output.weight().empty()) << "the classifier is the last stage's";
  EXPECT_FALSE(b->weights().output.weight().empty());
  EXPECT_FALSE(a->weights().tok_embeddings.empty());
}

TEST(PipelineStage, NeedsAPipelineCommunicatorThatPlacesIt) {
  KP_SKIP_WITHOUT_MODELS();
  auto f = stories();
  std::unique_ptr<model::LlamaModel> m;
  model::ModelOptions o;
  o.layer_begin = 2, o.layer_end = 5;
  base::Status s = model::LlamaModel::create(*f, o, &m);
  EXPECT_NE(s.message().find("needs a pipeline communicator"), std::string::npos) << s.message();
  StageRank first(0, 2);
  o.pipe = &first;  // layers [2, 5) are not the first stage's
  s = model::LlamaModel::create(*f, o, &m);
  EXPECT_NE(s.message().find("needs a pipeline communicator"), std::string::npos) << s.message();
  o.layer_begin = 3, o.layer_end = 9;
  s = model::LlamaModel::create(*f, o, &m);
  EXPECT_NE(s.message().find("are not a range of the 5 layers"), std::string::npos) << s.message();
}

// Without mpirun, --pp has nothing to run its stages on.
TEST(PipelineStage, PpWithoutMpirunIsRefused) {
  KP_SKIP_WITHOUT_MODELS();
  auto f = stories();
  runtime::TpOptions t;
  t.pp = 2;
  std::unique_ptr<runtime::TpRunner> r;
  const base::Status s = runtime::TpRunner::create(*f, {}, t, &r);
  EXPECT_NE(s.message().find("start it with mpirun -np 2"), std::string::npos) << s.message();
}

}  // namespace
