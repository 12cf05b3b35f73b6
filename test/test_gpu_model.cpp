// The model on the GPU (label gpu; skipped with a message where no GPU is visible):
//  - stories260K greedy ids identical to the CPU engine in fp32, the same first 20 in fp16 / bf16;
//  - CUDA-graph decode identical to plain launches;
//  - no device allocation while generating;
//  - NCCL through a one-rank communicator (the path --tp N takes). Several GPUs: test_multi_gpu.cpp.
#include <gtest/gtest.h>

#include "base/cuda_utils.h"
#include "comm/nccl_handler.h"
#include "runtime/generator.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "runtime/tp_runner.h"
#include "model_test_util.h"
#include "test_util.h"

namespace {

const std::vector<int32_t> kPrompt = {1, 403, 407, 261, 378};  // "Once upon a time" in tok512

std::unique_ptr<model::ModelFile> stories() {
  std::unique_ptr<model::ModelFile> f;
  EXPECT_TRUE(model::ModelFile::open(testutil::models_dir() + "/stories260K/stories260K.bin", &f).ok());
  return f;
}

struct GpuModel {
  base::CudaStream stream;
  std::unique_ptr<model::LlamaModel> m;
};

void make_gpu(const model::ModelFile& f, base::DType act, bool graph, GpuModel* g) {
  ASSERT_TRUE(g->stream.create(0).ok());
  model::ModelOptions o;
  o.device = base::DeviceType::kCUDA;
  o.act_dtype = act;
  o.stream = g->stream.get();
  o.cuda_graph = graph;
  const base::Status s = model::LlamaModel::create(f, o, &g->m);
  ASSERT_TRUE(s.ok()) << s.message();
}

std::vector<int32_t> greedy(model::LlamaModel& m, int n) { return testutil::greedy(m, kPrompt, n); }

std::vector<int32_t> cpu_greedy(const model::ModelFile& f, int n) {
  std::unique_ptr<model::LlamaModel> m;
  EXPECT_TRUE(model::LlamaModel::create(f, {}, &m).ok());
  return greedy(*m, n);
}

class GpuModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testutil::gpu_count() == 0) GTEST_SKIP() << "needs a CUDA GPU; none is visible";
    if (testutil::models_dir().empty()) GTEST_SKIP() << "needs ../shared/models beside the checkout; it is absent";
    file_ = stories();
  }
  std::unique_ptr<model::ModelFile> file_;
};

TEST_F(GpuModelTest, Fp32GreedyIdenticalToCpu) {
  GpuModel g;
  make_gpu(*file_, base::DType::kFp32, true, &g);
  EXPECT_EQ(greedy(*g.m, 200), cpu_greedy(*file_, 200));
}

TEST_F(GpuModelTest, HalfPrecisionFirst20TokensMatchCpu) {
  const auto ref = cpu_greedy(*file_, 20);
  for (base::DType dt : {base::DType::kFp16, base::DType::kBf16}) {
    GpuModel g;
    make_gpu(*file_, dt, true, &g);
    EXPECT_EQ(greedy(*g.m, 20), ref) << base::dtype_name(dt);
  }
}

TEST_F(GpuModelTest, GraphReplayEqualsPlainLaunches) {
  GpuModel a, b;
  make_gpu(*file_, base::DType::kBf16, true, &a);
  make_gpu(*file_, base::DType::kBf16, false, &b);
  EXPECT_EQ(greedy(*a.m, 150), greedy(*b.m, 150));
}

// Logits from the device match the CPU's after a batched prefill (fp32: only summation order differs).
TEST_F(GpuModelTest, PrefillLogitsMatchCpu) {
  GpuModel g;
  make_gpu(*file_, base::DType::kFp32, true, &g);
  std::unique_ptr<model::LlamaModel> cpu;
  ASSERT_TRUE(model::LlamaModel::create(*file_, {}, &cpu).ok());
  std::vector<float> a(512), b(512);
  ASSERT_TRUE(g.m->prefill(kPrompt, 0, a.data()).ok());
  ASSERT_TRUE(cpu->prefill(kPrompt, 0, b.data()).ok());
  // tf32 tensor-core GEMMs may be used for fp32 prefill: 1e-3 relative is their precision.
  EXPECT_TRUE(testutil::all_close(a, std::vector<double>(b.begin(), b.end()), 1e-3, 1e-3));
}

TEST_F(GpuModelTest, NoDeviceAllocationWhileGenerating) {
  GpuModel g;
  make_gpu(*file_, base::DType::kBf16, true, &g);
  greedy(*g.m, 2);  // first steps: graph capture, cuBLAS handle
  auto* alloc = base::CUDAAllocator::get(0);
  const int64_t n0 = alloc->allocations();
  size_t free0 = 0, free1 = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free0, &total), cudaSuccess);
  greedy(*g.m, 300);
  ASSERT_EQ(cudaMemGetInfo(&free1, &total), cudaSuccess);
  EXPECT_EQ(alloc->allocations(), n0);
  EXPECT_EQ(free0, free1) << "device memory changed while generating";
}

// One rank: NCCL all-reduce is the identity and all-gather a copy, through the same interface and the
// same comm-stream protocol that --tp N uses.
TEST_F(GpuModelTest, NcclOneRankCollectives) {
  ASSERT_TRUE(comm::NcclHandler::instance().init(1).ok());
  comm::Communicator* comm = comm::NcclHandler::instance().communicator(0);
  base::CudaStream s;
  ASSERT_TRUE(s.create(0).ok());
  tensor::Tensor host = testutil::random_cpu({3, 257}, 9);
  tensor::Tensor x = testutil::to_gpu(host), y;
  ASSERT_TRUE(tensor::Tensor::create(base::DType::kFp32, {3, 257}, base::CUDAAllocator::get(0), &y).ok());
  ASSERT_TRUE(comm->all_reduce_sum(x, s.get()).ok());
  ASSERT_TRUE(comm->all_gather(x, y, s.get()).ok());
  ASSERT_TRUE(comm->wait(s.get()).ok());
  std::vector<double> ref(host.ptr<float>(), host.ptr<float>() + host.numel());
  EXPECT_TRUE(testutil::all_close(y, ref, 0, 0));
}

// --tp 1 through NCCL: a one-rank communicator makes the model run its all-reduces and all-gather
// (on the comm stream, with the events) and capture them in the decode graph. Same tokens as the CPU.
TEST_F(GpuModelTest, OneRankNcclPathInsideTheDecodeGraph) {
  model::ModelOptions o;
  o.device = base::DeviceType::kCUDA;
  o.act_dtype = base::DType::kFp32;
  o.collectives_at_one_rank = true;
  std::unique_ptr<runtime::TpRunner> r;
  const base::Status s = runtime::TpRunner::create(*file_, o, 1, &r);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(testutil::greedy(*r, kPrompt, 200), cpu_greedy(*file_, 200));
}

}  // namespace
