// The multi-process engine, run under mpirun by test/mpi_test.py (label model):
//
//   mpirun -np N test_mpi --tp T --pp P [--device cuda] [--gtest_filter=...]        (N = T x P)
//   test_mpi --gpu_count        (no mpirun: prints the visible GPUs, for the wrapper's skip)
//
// Every process runs every test and checks its own part; a failure on any rank fails its process,
// and so mpirun's exit status. Output: rank 0's as GoogleTest prints it, the other ranks' failures
// prefixed "[rank R]".
//  - MpiComm: the MpiCommunicator's collectives, send / receive and broadcast against independent
//    references (float64 sums, rank order), bitwise equal on every rank.
//  - MpiModel: stories260K and the project's storyteller, greedy, fp32 on the CPU: the tokens of
//    tp x pp processes equal one process's (LlamaModel, no communicator), and the logits, fed the same
//    tokens, are within the tolerance below (measured and printed).
//  - On GPUs (--device cuda, one GPU per process, label multi_gpu): MpiNccl checks the NCCL
//    communicators bootstrapped over MPI (all-reduce in the tensor-parallel group, send / receive and
//    broadcast along the pipeline column), and MpiModel runs as above on the GPUs in fp32.
//  - MpiFault (each in an mpirun of its own: a fault leaves the job's communication aborted for good):
//    a rank that fails ends every rank's run within a second with its reason; a rank that hangs is
//    caught by the timeout, and the rank that wakes up later fails at once.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi_world.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "model_test_util.h"
#include "runtime/tp_runner.h"
#include "test_util.h"

#ifdef KUIPER_WITH_CUDA
#include "base/cuda_utils.h"
#endif

namespace {

int g_tp = 1, g_pp = 1;  // from the command line
base::DeviceType g_device = base::DeviceType::kCPU;
bool cuda() { return g_device == base::DeviceType::kCUDA; }

model::ModelOptions options() {
  model::ModelOptions o;
  o.device = g_device;
  o.act_dtype = base::DType::kFp32;
  return o;
}

comm::MpiWorld& world() { return comm::MpiWorld::instance(); }

const std::vector<int32_t> kPrompt = {1, 403, 407, 261, 378};  // "Once upon a time" in tok512

std::unique_ptr<model::ModelFile> open_model(const std::string& path) {
  std::unique_ptr<model::ModelFile> f;
  const base::Status s = model::ModelFile::open(path, &f);
  EXPECT_TRUE(s.ok()) << s.message();
  return f;
}

// The job's runner: this process's rank of tp x pp.
std::unique_ptr<runtime::TpRunner> job_runner(const model::ModelFile& f, int timeout_ms = 20000) {
  runtime::TpOptions t;
  t.world = g_tp;
  t.pp = g_pp;
  t.timeout_ms = timeout_ms;
  std::unique_ptr<runtime::TpRunner> r;
  const base::Status s = runtime::TpRunner::create(f, options(), t, &r);
  EXPECT_TRUE(s.ok()) << s.message();
  return r;
}

// One process, every layer, no communicator: the reference.
std::unique_ptr<model::LlamaModel> one_process(const model::ModelFile& f) {
  std::unique_ptr<model::LlamaModel> m;
  model::ModelOptions o = options();
#ifdef KUIPER_WITH_CUDA
  static base::CudaStream stream;  // the reference's stream, on this process's GPU
  if (cuda()) {
    o.device_id = world().local_rank();
    cudaSetDevice(o.device_id);
    if (stream.get() == nullptr) EXPECT_TRUE(stream.create(o.device_id).ok());
    o.stream = stream.get();
  }
#endif
  const base::Status s = model::LlamaModel::create(f, o, &m);
  EXPECT_TRUE(s.ok()) << s.message();
  return m;
}

// Per-step logits of `m` after the prompt, fed `feed` (row 0: the prompt's last token).
std::vector<std::vector<float>> trace(model::LlamaModel& m, const std::vector<int32_t>& feed) {
  std::vector<std::vector<float>> out(feed.size() + 1, std::vector<float>(m.config().vocab_size));
  EXPECT_TRUE(m.prefill(kPrompt, 0, out[0].data()).ok());
  for (size_t i = 0; i < feed.size(); ++i)
    EXPECT_TRUE(m.forward(&feed[i], 1, (int32_t)(kPrompt.size() + i), out[i + 1].data()).ok());
  return out;
}

// --------------------------------------------------------------------------------------------------
// MpiComm

// One GPU per process on this host, else skip; on the CPU nothing is needed.
#define SKIP_WITHOUT_GPU_PER_PROCESS()                                                                        \
  do {                                                                                                        \
    if (cuda() && testutil::gpu_count() < world().local_size())                                              \
      GTEST_SKIP() << "needs one GPU per process: " << world().local_size() << " processes on this host, "   \
                   << testutil::gpu_count() << " GPU(s) visible";                                            \
  } while (0)

TEST(MpiComm, CollectivesSendRecvBroadcast) {
  if (cuda()) GTEST_SKIP() << "the MPI communicator is the CPU's (MpiNccl covers the GPUs)";
  const int n = world().size(), me = world().rank();
  std::unique_ptr<comm::Communicator> c;
  ASSERT_TRUE(world().split(0, me, &c).ok());
  ASSERT_EQ(c->rank(), me);
  ASSERT_EQ(c->world_size(), n);
  const std::vector<int64_t> shape = {3, 769};  // odd: no size is a multiple of anything
  const int64_t numel = 3 * 769;
  std::vector<tensor::Tensor> x(n);
  for (int r = 0; r < n; ++r) x[r] = testutil::random_cpu(shape, 1000 + r);  // every rank's input, known to all
  tensor::Tensor mine = testutil::random_cpu(shape, 1000 + me);

  // all-reduce: within the fp32 summation bound of the float64 sum, and exactly the rank-order sum.
  ASSERT_TRUE(c->all_reduce_sum(mine, nullptr).ok());
  int off = 0, not_rank_order = 0;
  for (int64_t i = 0; i < numel; ++i) {
    double ref = 0, mag = 0;
    float ordered = 0.f;
    for (int r = 0; r < n; ++r) {
      const float v = x[r].ptr<float>()[i];
      ref += v;
      mag += std::fabs(v);
      ordered += v;
    }
    off += std::fabs(mine.ptr<float>()[i] - ref) > n * std::ldexp(1.0, -24) * mag;
    not_rank_order += mine.ptr<float>()[i] != ordered;
  }
  EXPECT_EQ(off, 0) << "elements outside the fp32 bound of the float64 sum";
  EXPECT_EQ(not_rank_order, 0) << "elements that are not the sum in rank order 0..N-1";

  // all-gather: rank r's block is rank r's input.
  tensor::Tensor in = testutil::random_cpu({2, 5}, 50 + me), out = testutil::random_cpu({2 * (int64_t)n, 5}, 0);
  ASSERT_TRUE(c->all_gather(in, out, nullptr).ok());
  for (int r = 0; r < n; ++r) {
    const tensor::Tensor want = testutil::random_cpu({2, 5}, 50 + r);
    EXPECT_EQ(std::memcmp(out.ptr<float>() + r * 10, want.ptr<float>(), 10 * sizeof(float)), 0) << "block " << r;
  }

  // broadcast from the last rank.
  tensor::Tensor b = testutil::random_cpu({4, 33}, 70 + me);
  ASSERT_TRUE(c->broadcast(b, n - 1, nullptr).ok());
  const tensor::Tensor want_b = testutil::random_cpu({4, 33}, 70 + n - 1);
  EXPECT_EQ(std::memcmp(b.data(), want_b.data(), b.nbytes()), 0);

  // send / receive along a chain 0 -> 1 -> ... -> N-1 (as stages do), 1 MB so that MPI cannot buffer it.
  tensor::Tensor h = testutil::random_cpu({256, 1024}, me == 0 ? 90 : 0);
  if (me > 0) ASSERT_TRUE(c->recv(h, me - 1, nullptr).ok());
  if (me + 1 < n) ASSERT_TRUE(c->send(h, me + 1, nullptr).ok());
  const tensor::Tensor want_h = testutil::random_cpu({256, 1024}, 90);
  EXPECT_EQ(std::memcmp(h.data(), want_h.data(), h.nbytes()), 0) << "what reached rank " << me;

  // Bad use is refused, not sent.
  EXPECT_FALSE(c->send(h, me, nullptr).ok());
  EXPECT_FALSE(c->recv(h, n, nullptr).ok());
  ASSERT_TRUE(world().barrier().ok());
}

// NCCL over MPI: the communicators a ProcessGroup makes on GPUs, used the way the model uses them.
TEST(MpiNccl, CollectivesSendRecvBroadcast) {
  if (!cuda()) GTEST_SKIP() << "runs with --device cuda";
  SKIP_WITHOUT_GPU_PER_PROCESS();
#ifdef KUIPER_WITH_CUDA
  std::unique_ptr<runtime::ProcessGroup> pg;
  ASSERT_TRUE(runtime::ProcessGroup::create(g_device, g_tp, g_pp, 20000, &pg).ok());
  const runtime::ProcessLayout& l = pg->layout();
  const int dev = pg->device_id();
  ASSERT_EQ(dev, world().local_rank());
  base::CudaStream stream;
  ASSERT_TRUE(stream.create(dev).ok());
  void* s = stream.get();
  if (comm::Communicator* tp = pg->tensor_parallel()) {
    ASSERT_EQ(tp->rank(), l.tp_rank);
    ASSERT_EQ(tp->world_size(), l.tp);
    // Sum over the stage's ranks: within the fp32 bound of the float64 sum.
    tensor::Tensor x = testutil::to_gpu(testutil::random_cpu({3, 769}, 1000 + l.rank), dev);
    ASSERT_TRUE(tp->all_reduce_sum(x, s).ok());
    ASSERT_TRUE(tp->wait(s).ok());
    const tensor::Tensor got = testutil::to_fp32_cpu(x);
    int off = 0;
    for (int64_t i = 0; i < 3 * 769; ++i) {
      double ref = 0, mag = 0;
      for (int r = 0; r < l.tp; ++r) {
        const float v = testutil::random_cpu({3, 769}, 1000 + l.stage * l.tp + r).ptr<float>()[i];
        ref += v, mag += std::fabs(v);
      }
      off += std::fabs(got.ptr<float>()[i] - ref) > l.tp * std::ldexp(1.0, -24) * mag;
    }
    EXPECT_EQ(off, 0);
  }
  if (comm::Communicator* pipe = pg->pipeline()) {
    ASSERT_EQ(pipe->rank(), l.stage);
    ASSERT_EQ(pipe->world_size(), l.pp);
    // The chain of stages, then a broadcast from the last, as a decode step does.
    tensor::Tensor h = testutil::to_gpu(testutil::random_cpu({16, 4096}, l.stage == 0 ? 90 + l.tp_rank : 0), dev);
    if (l.stage > 0) ASSERT_TRUE(pipe->recv(h, l.stage - 1, s).ok());
    if (l.stage + 1 < l.pp) ASSERT_TRUE(pipe->send(h, l.stage + 1, s).ok());
    tensor::Tensor b = testutil::to_gpu(testutil::random_cpu({1, 1000}, 70 + l.rank), dev);
    ASSERT_TRUE(pipe->broadcast(b, l.pp - 1, s).ok());
    ASSERT_TRUE(pipe->wait(s).ok());
    const tensor::Tensor want_h = testutil::random_cpu({16, 4096}, 90 + l.tp_rank);
    const tensor::Tensor want_b = testutil::random_cpu({1, 1000}, 70 + (l.pp - 1) * l.tp + l.tp_rank);
    EXPECT_EQ(std::memcmp(testutil::to_fp32_cpu(h).data(), want_h.data(), want_h.nbytes()), 0) << "stage " << l.stage;
    EXPECT_EQ(std::memcmp(testutil::to_fp32_cpu(b).data(), want_b.data(), want_b.nbytes()), 0) << "stage " << l.stage;
  }
  ASSERT_TRUE(world().barrier().ok());
#endif
}

// --------------------------------------------------------------------------------------------------
// MpiModel

// The largest |a - b| over the steps, relative to the largest |reference logit| of the step.
double max_rel_diff(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& ref) {
  double worst = 0;
  for (size_t s = 0; s < a.size(); ++s) {
    double d = 0, m = 0;
    for (size_t i = 0; i < a[s].size(); ++i) {
      d = std::max(d, std::fabs((double)a[s][i] - ref[s][i]));
      m = std::max(m, std::fabs((double)ref[s][i]));
    }
    worst = std::max(worst, d / m);
  }
  return worst;
}

void expect_matches_one_process(const std::string& path, int n_tokens) {
  SKIP_WITHOUT_GPU_PER_PROCESS();
  auto f = open_model(path);
  ASSERT_TRUE(f);
  auto ref_model = one_process(*f);
  const std::vector<int32_t> ref = testutil::greedy(*ref_model, kPrompt, n_tokens);
  ASSERT_EQ((int)ref.size(), n_tokens);
  auto job = job_runner(*f);
  ASSERT_TRUE(job);
  // Through the runner: rank 0 receives the tokens (and prints them, in llama_infer).
  const std::vector<int32_t> got_tokens = testutil::greedy(*job, kPrompt, n_tokens);
  if (world().rank() == 0) EXPECT_EQ(got_tokens, ref) << "tp " << g_tp << " pp " << g_pp;
  else EXPECT_TRUE(got_tokens.empty()) << "only rank 0 hands tokens to the caller";
  // Every process's own model: each stage continues with the token the last stage broadcast.
  auto job1 = job_runner(*f);
  EXPECT_EQ(testutil::greedy(job1->model(0), kPrompt, n_tokens), ref) << "tp " << g_tp << " pp " << g_pp << ", rank "
                                                                      << world().rank();
  // Fed the reference tokens, step by step: every stage holds the logits the last stage broadcast.
  auto job2 = job_runner(*f);
  const auto got = testutil::logits_trace(*job2, kPrompt, ref);
  const auto want = trace(*one_process(*f), ref);
  double d = max_rel_diff(got, want);
  double worst = d;
  ASSERT_TRUE(world().max(&worst).ok());
  if (world().rank() == 0)
    std::printf("[ measured ] %s, tp %d x pp %d processes vs one process: max logit difference %.3g of the largest "
                "logit over %zu steps (the worst rank)\n",
                path.substr(path.find_last_of('/') + 1).c_str(), g_tp, g_pp, worst, got.size());
  if (g_tp == 1) {
    // Stages only pass the hidden state on: the arithmetic is one process's, to the bit (on GPUs too:
    // the same kernels on the same shapes).
    EXPECT_EQ(d, 0.0) << "pipeline stages must reproduce one process exactly";
  } else {
    // The row-parallel sums add the ranks' partial products in another order: fp32 rounding, as
    // TensorParallelCpu.LogitsMatchOneRank allows in one process (1e-4 on GPUs, as MultiGpu does).
    EXPECT_LE(d, cuda() ? 1e-4 : 1e-5);
  }
}

TEST(MpiModel, Stories260KGreedyTokensAndLogitsMatchOneProcess) {
  KP_SKIP_WITHOUT_MODELS();
  expect_matches_one_process(testutil::models_dir() + "/stories260K/stories260K.bin", 100);
}

TEST(MpiModel, StorytellerGreedyTokensAndLogitsMatchOneProcess) {
  expect_matches_one_process(testutil::source_dir() + "/models/storyteller.bin", 60);
}

// Sampling (temperature 0.9, top-p): every stage draws from the logits the last stage broadcast, with
// rank 0's seed, so the job samples what one process samples with that seed.
TEST(MpiModel, SampledTokensMatchOneProcess) {
  KP_SKIP_WITHOUT_MODELS();
  SKIP_WITHOUT_GPU_PER_PROCESS();
  auto f = open_model(testutil::models_dir() + "/stories260K/stories260K.bin");
  ASSERT_TRUE(f);
  const sampler::SamplerConfig sc{0.9f, 0, 0.9f, 12345};
  runtime::GenerateOptions go;
  go.max_new_tokens = 60;
  go.stop_at_eos = false;
  auto sample = [&](auto&& gen) {
    std::vector<int32_t> out;
    runtime::GenerateStats st;
    const base::Status s = gen([&](int32_t t) {
      out.push_back(t);
      return true;
    }, &st);
    EXPECT_TRUE(s.ok()) << s.message();
    return out;
  };
  auto m = one_process(*f);
  sampler::Sampler smp;
  ASSERT_TRUE(sampler::Sampler::create(sc, m->config().vocab_size, &smp, m->max_seq_len()).ok());
  std::vector<float> logits(m->config().vocab_size);
  const auto ref = sample([&](const runtime::TokenCallback& cb, runtime::GenerateStats* st) {
    return runtime::generate(*m, smp, kPrompt, 0, go, logits.data(), cb, st);
  });
  auto job = job_runner(*f);
  const auto got = sample([&](const runtime::TokenCallback& cb, runtime::GenerateStats* st) {
    return job->generate(sc, kPrompt, 0, go, cb, st);
  });
  if (world().rank() == 0) EXPECT_EQ(got, ref);  // on_token runs on rank 0 only
  else EXPECT_TRUE(got.empty()) << "only rank 0 hands tokens to the caller";
}

// Rank 0's stop (Ctrl-C, a stop string) reaches every process at the same token.
TEST(MpiModel, RankZerosStopEndsEveryProcessAtTheSameToken) {
  KP_SKIP_WITHOUT_MODELS();
  SKIP_WITHOUT_GPU_PER_PROCESS();
  auto f = open_model(testutil::models_dir() + "/stories260K/stories260K.bin");
  auto job = job_runner(*f);
  runtime::GenerateOptions go;
  go.max_new_tokens = 100;
  go.stop_at_eos = false;
  runtime::GenerateStats st;
  int seen = 0;
  ASSERT_TRUE(job->generate({}, kPrompt, 0, go, [&](int32_t) { return ++seen < 7; }, &st).ok());
  double generated = st.generated_tokens, lo = generated;
  ASSERT_TRUE(world().max(&generated).ok());
  lo = -lo;
  ASSERT_TRUE(world().max(&lo).ok());
  EXPECT_EQ(generated, 7);
  EXPECT_EQ(-lo, 7) << "every process stops after the 7th token";
  EXPECT_EQ(st.stop_reason, "stopped");
}

// --------------------------------------------------------------------------------------------------
// MpiFault (one per mpirun: test/mpi_test.py runs each alone)

TEST(MpiFault, FailingRankStopsEveryRankWithinASecond) {
  KP_SKIP_WITHOUT_MODELS();
  SKIP_WITHOUT_GPU_PER_PROCESS();
  ASSERT_GE(world().size(), 2);
  auto f = open_model(testutil::models_dir() + "/stories260K/stories260K.bin");
  auto job = job_runner(*f, 20000);  // 20 s: a failure seen in well under 1 s did not come from the timeout
  const bool bad = world().rank() == 1;
  const testutil::FaultRun run = testutil::run_with_fault(*job, kPrompt, 50, bad ? 0 : -1, 5, 0);
  ASSERT_FALSE(run.status.ok()) << "rank " << world().rank() << " returned no error";
  EXPECT_NE(run.status.message().find("rank 1: injected failure"), std::string::npos) << run.status.message();
  EXPECT_LT(run.seconds[0], 1.0) << "rank " << world().rank() << " took " << run.seconds[0] << " s";
}

TEST(MpiFault, HangingRankIsCaughtByTheTimeout) {
  KP_SKIP_WITHOUT_MODELS();
  SKIP_WITHOUT_GPU_PER_PROCESS();
  ASSERT_GE(world().size(), 2);
  auto f = open_model(testutil::models_dir() + "/stories260K/stories260K.bin");
  auto job = job_runner(*f, 500);
  const bool hangs = world().rank() == 1;
  // Rank 1 sleeps 3 s at step 5, then tries to go on: by then the others have timed out.
  const auto t0 = std::chrono::steady_clock::now();
  const testutil::FaultRun run = testutil::run_with_fault(*job, kPrompt, 50, hangs ? 0 : -1, 5, 3000);
  if (hangs) {
    EXPECT_TRUE(run.status.ok());  // it slept and returned: its part is the others' timeout
    model::LlamaModel& m = job->model(0);
    int32_t tok = 0;
    const base::Status later = m.decode_greedy(3, (int32_t)kPrompt.size() + 6, &tok);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_FALSE(later.ok()) << "the rank that hung goes on as if nothing happened";
    EXPECT_NE(later.message().find("within 0.5 s"), std::string::npos) << later.message();
    EXPECT_LT(s, 3.5) << "its next step should fail at once (the fault channel), not wait";
  } else {
    ASSERT_FALSE(run.status.ok());
    EXPECT_NE(run.status.message().find("within 0.5 s"), std::string::npos) << run.status.message();
    EXPECT_GT(run.seconds[0], 0.4);
    EXPECT_LT(run.seconds[0], 2.5) << "the timeout is 0.5 s";
  }
}

// Non-zero ranks: only failures, prefixed with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: %s\n", world().rank(), r.file_name() ? r.file_name() : "?", r.line_number(),
                   r.summary());
  }
  void OnTestEnd(const ::testing::TestInfo& t) override {
    if (t.result()->Failed()) std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", world().rank(), t.test_suite_name(), t.name());
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--gpu_count") == 0) {
    std::printf("%d\n", testutil::gpu_count());
    return 0;
  }
  if (base::Status s = world().init(&argc, &argv); !s.ok()) {
    std::fprintf(stderr, "test_mpi: %s\n", s.message().c_str());
    return 1;
  }
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--tp") == 0) g_tp = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--pp") == 0) g_pp = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--device") == 0 && std::strcmp(argv[i + 1], "cuda") == 0) g_device = base::DeviceType::kCUDA;
  }
  if (!world().active() || world().size() != g_tp * g_pp) {
    std::fprintf(stderr, "test_mpi: run it under mpirun with -np = --tp x --pp (here %d processes, --tp %d --pp %d)\n",
                 world().size(), g_tp, g_pp);
    return 1;
  }
  if (world().rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter);
  }
  return RUN_ALL_TESTS();
}
