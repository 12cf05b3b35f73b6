// The paged KV cache on the GPU (label gpu; skipped with a message where no GPU is visible):
//  - the CUDA paged kernels (rope_at, kv_append_paged, paged decode / prefill attention) against the
//    CPU kernels on the same data (fp32: 1e-5; bf16 inputs rounded first, 1e-2);
//  - storyteller batched on the GPU in fp32, decode steps replayed from the per-bucket CUDA graphs:
//    every sequence's logits within 2e-3 of its run alone, its tokens the same, and the graphs give
//    what plain launches give.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "base/cuda_utils.h"
#include "batch_driver.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "op/kernels.h"
#include "test_util.h"

namespace {

using base::DType;
using tensor::Tensor;

Tensor cpu(DType dtype, std::vector<int64_t> shape) {
  Tensor t;
  EXPECT_TRUE(Tensor::create(dtype, std::move(shape), base::CPUAllocator::get(), &t).ok());
  return t;
}

Tensor ints(const std::vector<int32_t>& v, std::vector<int64_t> shape = {}) {
  Tensor t = cpu(DType::kInt32, shape.empty() ? std::vector<int64_t>{(int64_t)v.size()} : shape);
  std::copy(v.begin(), v.end(), t.ptr<int32_t>());
  return t;
}

std::vector<double> as_double(const Tensor& t) {
  Tensor f = testutil::to_fp32_cpu(t);
  return std::vector<double>(f.ptr<float>(), f.ptr<float>() + f.numel());
}

// The CPU result of the same (rounded) inputs is the reference.
struct Case {
  static constexpr int kPage = 16, kPages = 20, kHeads = 8, kKv = 2;
  int hd;
  DType dt;
  Tensor kc, vc, kc_gpu, vc_gpu;  // [kPages * kPage, kKv * hd]
  Case(int head_dim, DType dtype) : hd(head_dim), dt(dtype) {
    kc = testutil::to_fp32_cpu(testutil::to_dtype_cpu(testutil::random_cpu({kPages * kPage, kKv * hd}, 11), dt));
    vc = testutil::to_fp32_cpu(testutil::to_dtype_cpu(testutil::random_cpu({kPages * kPage, kKv * hd}, 12), dt));
    kc_gpu = testutil::to_gpu(testutil::to_dtype_cpu(kc, dt));
    vc_gpu = testutil::to_gpu(testutil::to_dtype_cpu(vc, dt));
  }
  Tensor q(int n, uint64_t seed) const {
    return testutil::to_fp32_cpu(testutil::to_dtype_cpu(testutil::random_cpu({n, kHeads * hd}, seed), dt));
  }
  double tol() const { return dt == DType::kFp32 ? 1e-5 : 1e-2; }
};

TEST(CudaPaged, DecodeAttentionMatchesTheCpuKernel) {
  KP_SKIP_WITHOUT_GPU();
  base::CudaStream stream;
  ASSERT_TRUE(stream.create(0).ok());
  for (DType dt : {DType::kFp32, DType::kBf16}) {
    for (int hd : {32, 64, 128}) {
      Case c(hd, dt);
      const std::vector<int32_t> tables = {3, 17, 0, 9, 1, 2, 4, 5, 12, 0, 0, 0, 19, 18, 7, 6};  // [4, 4]
      const std::vector<int32_t> lens = {50, 64, 17, 0};  // the last row is padding
      Tensor q = c.q(4, 13), out = cpu(DType::kFp32, {4, Case::kHeads * hd});
      Tensor tab = ints(tables, {4, 4}), sl = ints(lens);
      Tensor scratch = cpu(DType::kFp32, {kernel::attention_scratch_floats(4, Case::kHeads, hd, 64, base::DeviceType::kCPU)});
      ASSERT_TRUE(kernel::paged_decode_attention(q, c.kc, c.vc, tab, sl, 16, 8, 2, hd, scratch, out, nullptr).ok());
      Tensor qg = testutil::to_gpu(testutil::to_dtype_cpu(q, dt)), og = testutil::to_gpu(testutil::to_dtype_cpu(q, dt));
      Tensor tg = testutil::to_gpu(tab), lg = testutil::to_gpu(sl), none;  // no scratch: the CUDA-core kernel
      Tensor split_scratch;  // room for the split-K partials: the tensor-core kernel where it applies
      ASSERT_TRUE(Tensor::create(DType::kFp32,
                                 {std::max<int64_t>(1, kernel::attention_batch_scratch_floats(4, 8, hd, 64, base::DeviceType::kCUDA))},
                                 base::CUDAAllocator::get(0), &split_scratch)
                      .ok());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      for (Tensor* scratch : {&none, &split_scratch}) {
      const base::Status s =
          kernel::paged_decode_attention(qg, c.kc_gpu, c.vc_gpu, tg, lg, 16, 8, 2, hd, *scratch, og, stream.get());
      ASSERT_TRUE(s.ok()) << s.message();
      ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
      // The padding row's output is unspecified (op/kernels.h): the three real rows are compared.
      EXPECT_TRUE(testutil::all_close(og.slice_rows(0, 3), as_double(out.slice_rows(0, 3)), c.tol(), c.tol()))
          << base::dtype_name(dt) << " hd " << hd << (scratch == &none ? " no scratch" : " split-K scratch");
      }
    }
  }
}

TEST(CudaPaged, PrefillAttentionAppendAndRopeMatchTheCpuKernels) {
  KP_SKIP_WITHOUT_GPU();
  base::CudaStream stream;
  ASSERT_TRUE(stream.create(0).ok());
  Case c(64, DType::kFp32);
  const std::vector<int32_t> table = {8, 3, 15, 0, 11};
  Tensor q = c.q(37, 21), out = cpu(DType::kFp32, {37, 8 * 64}), tab = ints(table), pos = ints({33});
  Tensor scratch = cpu(DType::kFp32, {kernel::attention_scratch_floats(37, 8, 64, 80, base::DeviceType::kCPU)});
  ASSERT_TRUE(kernel::paged_prefill_attention(q, c.kc, c.vc, tab, pos, 16, 8, 2, 64, scratch, out, nullptr).ok());
  Tensor qg = testutil::to_gpu(q), og = testutil::to_gpu(q), tg = testutil::to_gpu(tab), pg = testutil::to_gpu(pos), none;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_TRUE(kernel::paged_prefill_attention(qg, c.kc_gpu, c.vc_gpu, tg, pg, 16, 8, 2, 64, none, og, stream.get()).ok());
  ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
  EXPECT_TRUE(testutil::all_close(og, as_double(out), 1e-5, 1e-5));

  // kv_append_paged: rows to slots 5, (skipped), 300; rope_at: rows at positions 7, 0, 12.
  Tensor k = testutil::random_cpu({3, 128}, 31), v = testutil::random_cpu({3, 128}, 32), sl = ints({5, -1, 300});
  Tensor kc = c.kc, vc = c.vc;  // the CPU copies are written by the CPU kernel
  ASSERT_TRUE(kernel::kv_append_paged(k, v, kc, vc, sl, nullptr).ok());
  Tensor kg = testutil::to_gpu(k), vg = testutil::to_gpu(v), sg = testutil::to_gpu(sl);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_TRUE(kernel::kv_append_paged(kg, vg, c.kc_gpu, c.vc_gpu, sg, stream.get()).ok());
  ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
  EXPECT_TRUE(testutil::all_close(c.kc_gpu, as_double(kc), 0, 0));
  EXPECT_TRUE(testutil::all_close(c.vc_gpu, as_double(vc), 0, 0));

  std::vector<float> t(64 * 32 * 2);
  for (size_t i = 0; i < t.size(); ++i) t[i] = std::sin(0.11f * (float)i);
  Tensor cs = cpu(DType::kFp32, {64, 32, 2});
  std::copy(t.begin(), t.end(), cs.ptr<float>());
  Tensor rq = testutil::random_cpu({3, 8 * 64}, 33), rk = testutil::random_cpu({3, 2 * 64}, 34), rp = ints({7, 0, 12});
  Tensor rqg = testutil::to_gpu(rq), rkg = testutil::to_gpu(rk), rpg = testutil::to_gpu(rp), csg = testutil::to_gpu(cs);
  ASSERT_TRUE(kernel::rope_at(rq, rk, rp, cs, 64, nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_TRUE(kernel::rope_at(rqg, rkg, rpg, csg, 64, stream.get()).ok());
  ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
  EXPECT_TRUE(testutil::all_close(rqg, as_double(rq), 1e-6, 1e-6));
  EXPECT_TRUE(testutil::all_close(rkg, as_double(rk), 1e-6, 1e-6));
}

// ---------------------------------------------------------------------------------------------------
struct GpuStoryteller {
  std::unique_ptr<model::ModelFile> file;
  base::CudaStream stream;
  std::unique_ptr<model::LlamaModel> m;
  explicit GpuStoryteller(bool graph) {
    EXPECT_TRUE(model::ModelFile::open(testutil::source_dir() + "/models/storyteller.bin", &file).ok());
    EXPECT_TRUE(stream.create(0).ok());
    model::ModelOptions o;
    o.device = base::DeviceType::kCUDA;
    o.act_dtype = DType::kFp32;
    o.stream = stream.get();
    o.cuda_graph = graph;
    o.max_batch_seqs = testutil::kSeqs;
    o.max_batch_tokens = testutil::kBudget;
    o.kv_capacity = testutil::kSeqs * testutil::kPagesPerSeq * testutil::kPage;
    o.page_size = testutil::kPage;
    const base::Status s = model::LlamaModel::create(*file, o, &m);
    EXPECT_TRUE(s.ok()) << s.message();
  }
  testutil::StepFn step() {
    return [this](const model::BatchSeq* b, int32_t n, const model::StepOutput& out) { return m->step(b, n, out); };
  }
};

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, (double)std::fabs(a[i] - b[i]));
  return d;
}

TEST(GpuBatchedStep, ThirtyTwoSequencesMatchEachAloneAndTheGraphsMatchPlainLaunches) {
  KP_SKIP_WITHOUT_GPU();
  GpuStoryteller graphs(true), plain(false);
  ASSERT_TRUE(graphs.m && plain.m);
  const int vocab = graphs.m->config().vocab_size;
  std::vector<testutil::Seq> a = testutil::make_seqs(vocab), b = testutil::make_seqs(vocab);
  testutil::run(graphs.step(), a, vocab);
  testutil::run(plain.step(), b, vocab);
  for (int i = 0; i < testutil::kSeqs; ++i) {
    EXPECT_EQ(a[i].out, b[i].out) << "sequence " << i;
    EXPECT_LE(max_diff(a[i].logits, b[i].logits), 1e-4) << "sequence " << i << ": graph vs plain";
    std::vector<testutil::Seq> one(1, testutil::make_seqs(vocab)[i]);
    one[0].join = 0;
    testutil::run(graphs.step(), one, vocab);
    // cuBLAS may pick another algorithm for another row count: close, not bitwise.
    EXPECT_LE(max_diff(a[i].logits, one[0].logits), 2e-3) << "sequence " << i << ": batched vs alone";
    EXPECT_EQ(a[i].out, one[0].out) << "sequence " << i << ": batched vs alone";
  }
}

}  // namespace
