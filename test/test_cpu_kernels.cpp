// CPU kernels through the public kernel:: API, each against a float64 reference written here.
// Sizes are odd (769, 770, 771; 7 tokens; 6 heads over 2 kv heads) so scalar tails and uneven thread
// splits are exercised. Tolerances are atol + rtol * |ref|; fp32 accumulation over ~800 terms of
// magnitude <= 1 stays well inside 1e-4 unless noted.
#include <gtest/gtest.h>

#include <algorithm>
#include <tuple>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <atomic>
#include <thread>

#include "base/buffer.h"
#include "kernels/cpu/thread_pool.h"
#include "op/kernels.h"
#include "heap_counter.h"
#include "test_util.h"

using base::DType;
using tensor::Tensor;
using testutil::all_close;
using testutil::random_cpu;

namespace {

Tensor make(DType dtype, std::vector<int64_t> shape) {
  Tensor t;
  EXPECT_TRUE(Tensor::create(dtype, std::move(shape), base::CPUAllocator::get(), &t).ok());
  return t;
}

Tensor ints(const std::vector<int32_t>& v) {
  Tensor t = make(DType::kInt32, {(int64_t)v.size()});
  for (size_t i = 0; i < v.size(); ++i) t.ptr<int32_t>()[i] = v[i];
  return t;
}

std::vector<double> values(const Tensor& t) {
  Tensor f = testutil::to_fp32_cpu(t);
  return std::vector<double>(f.ptr<float>(), f.ptr<float>() + f.numel());
}

// Symmetric group-wise int8 quantisation of w [out, in]: scale = max|w| / 127 per group.
struct Quantised {
  Tensor q;       // int8 [out, in]
  Tensor scales;  // fp32 [out, in / group]
};

Quantised quantise(const Tensor& w, int group) {
  const int64_t out = w.dim(0), in = w.dim(1), n_groups = in / group;
  Quantised r{make(DType::kInt8, {out, in}), make(DType::kFp32, {out, n_groups})};
  const float* wp = w.ptr<float>();
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t g = 0; g < n_groups; ++g) {
      const float* src = wp + o * in + g * group;
      float max_abs = 0.f;
      for (int k = 0; k < group; ++k) max_abs = std::max(max_abs, std::fabs(src[k]));
      const float s = max_abs > 0.f ? max_abs / 127.f : 1.f;
      r.scales.ptr<float>()[o * n_groups + g] = s;
      for (int k = 0; k < group; ++k)
        r.q.ptr<int8_t>()[o * in + g * group + k] = (int8_t)std::lround(std::clamp(src[k] / s, -127.f, 127.f));
    }
  }
  return r;
}

// float64 y = x W^T with W given element-wise by w(o, k).
template <typename W>
std::vector<double> ref_matmul(const Tensor& x, int64_t out, W w) {
  const int64_t n = x.dim(0), in = x.dim(1);
  std::vector<double> y(n * out);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0;
      for (int64_t k = 0; k < in; ++k) acc += (double)x.ptr<float>()[i * in + k] * w(o, k);
      y[i * out + o] = acc;
    }
  return y;
}

// cos/sin table [max_seq, head_dim / 2, 2] with Llama 2 frequencies theta^(-2j / head_dim).
Tensor rope_table(int64_t max_seq, int head_dim, double theta = 10000.0) {
  Tensor t = make(DType::kFp32, {max_seq, head_dim / 2, 2});
  for (int64_t p = 0; p < max_seq; ++p)
    for (int j = 0; j < head_dim / 2; ++j) {
      const double angle = p * std::pow(theta, -2.0 * j / head_dim);
      t.ptr<float>()[(p * head_dim / 2 + j) * 2] = (float)std::cos(angle);
      t.ptr<float>()[(p * head_dim / 2 + j) * 2 + 1] = (float)std::sin(angle);
    }
  return t;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// embedding

class EmbeddingTest : public ::testing::TestWithParam<DType> {};

TEST_P(EmbeddingTest, CopiesAndWidensRows) {
  const int64_t vocab = 50, dim = 771;
  Tensor table = testutil::to_dtype_cpu(random_cpu({vocab, dim}, 11), GetParam());
  const std::vector<int32_t> ids = {0, 49, 7, 7, 13, 1, 48};
  Tensor tokens = ints(ids), out = make(DType::kFp32, {(int64_t)ids.size(), dim});
  ASSERT_TRUE(kernel::embedding(tokens, table, out, nullptr).ok());
  const std::vector<double> t = values(table);
  std::vector<double> ref;
  for (int32_t id : ids) ref.insert(ref.end(), t.begin() + id * dim, t.begin() + (id + 1) * dim);
  EXPECT_TRUE(all_close(out, ref, 0, 0));  // widening fp16/bf16 to fp32 is exact
}

INSTANTIATE_TEST_SUITE_P(TableDtypes, EmbeddingTest, ::testing::Values(DType::kFp32, DType::kFp16, DType::kBf16),
                         [](const auto& info) { return std::string(base::dtype_name(info.param)); });

TEST(Embedding, RejectsTokenOutsideVocabulary) {
  Tensor table = random_cpu({10, 8}, 1), out = make(DType::kFp32, {2, 8});
  EXPECT_FALSE(kernel::embedding(ints({3, 10}), table, out, nullptr).ok());
  EXPECT_FALSE(kernel::embedding(ints({-1, 0}), table, out, nullptr).ok());
}

// ---------------------------------------------------------------------------------------------------
// rmsnorm, add_rmsnorm

class NormTest : public ::testing::TestWithParam<std::tuple<int64_t, int64_t>> {};

std::vector<double> ref_rmsnorm(const std::vector<double>& x, const Tensor& w, int64_t n, int64_t dim, double eps) {
  std::vector<double> y(n * dim);
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < dim; ++j) ss += x[i * dim + j] * x[i * dim + j];
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    for (int64_t j = 0; j < dim; ++j) y[i * dim + j] = x[i * dim + j] * inv * w.ptr<float>()[j];
  }
  return y;
}

TEST_P(NormTest, RmsNormMatchesReference) {
  const auto [n, dim] = GetParam();
  Tensor x = random_cpu({n, dim}, 21), w = random_cpu({dim}, 22, 0.5f, 1.5f), out = make(DType::kFp32, {n, dim});
  ASSERT_TRUE(kernel::rmsnorm(x, w, 1e-5f, out, nullptr).ok());
  EXPECT_TRUE(all_close(out, ref_rmsnorm(values(x), w, n, dim, 1e-5), 1e-5, 1e-5));
}

TEST_P(NormTest, AddRmsNormUpdatesResidualAndNormalises) {
  const auto [n, dim] = GetParam();
  Tensor r = random_cpu({n, dim}, 31), d = random_cpu({n, dim}, 32), w = random_cpu({dim}, 33, 0.5f, 1.5f);
  Tensor out = make(DType::kFp32, {n, dim});
  std::vector<double> sum = values(r);
  const std::vector<double> dv = values(d);
  for (size_t j = 0; j < sum.size(); ++j) sum[j] = (float)((float)sum[j] + (float)dv[j]);  // the fp32 add is exact
  ASSERT_TRUE(kernel::add_rmsnorm(r, d, w, 1e-6f, out, nullptr).ok());
  EXPECT_TRUE(all_close(r, sum, 0, 0));
  EXPECT_TRUE(all_close(out, ref_rmsnorm(sum, w, n, dim, 1e-6), 1e-5, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Sizes, NormTest,
                         ::testing::Combine(::testing::Values<int64_t>(1, 7), ::testing::Values<int64_t>(769, 770, 771)));

// ---------------------------------------------------------------------------------------------------
// matmul

class MatmulFp32Test : public ::testing::TestWithParam<std::tuple<int64_t, int64_t>> {};

TEST_P(MatmulFp32Test, MatchesReference) {
  const auto [n, in] = GetParam();
  const int64_t out = 67;
  Tensor x = random_cpu({n, in}, 41), w = random_cpu({out, in}, 42), y = make(DType::kFp32, {n, out});
  ASSERT_TRUE(kernel::matmul(x, w, Tensor(), 0, y, nullptr).ok());
  const float* wp = w.ptr<float>();
  EXPECT_TRUE(all_close(y, ref_matmul(x, out, [&](int64_t o, int64_t k) { return (double)wp[o * in + k]; }), 1e-4,
                        1e-4));
}

INSTANTIATE_TEST_SUITE_P(Sizes, MatmulFp32Test,
                         ::testing::Combine(::testing::Values<int64_t>(1, 7), ::testing::Values<int64_t>(769, 770, 771)));

// 16-bit weights stay 16-bit on the CPU: the kernel widens them as it reads. The reference uses the
// same rounded weights in float64, so only the fp32 accumulation differs (well inside 1e-4 here).
// (dtype, n_tokens, in): n = 1 is decode, 4 and 7 reach the four-token blocks and their remainder; in
// = 769..771 and 13 reach the AVX2 loop's scalar tail, 16 none.
class Matmul16Test : public ::testing::TestWithParam<std::tuple<DType, int64_t, int64_t>> {};

TEST_P(Matmul16Test, MatchesReferenceOnTheRoundedWeights) {
  const auto [dtype, n, in] = GetParam();
  const int64_t out = 67;
  Tensor x = random_cpu({n, in}, 43), y = make(DType::kFp32, {n, out});
  Tensor w = testutil::to_dtype_cpu(random_cpu({out, in}, 44), dtype);
  ASSERT_TRUE(kernel::matmul(x, w, Tensor(), 0, y, nullptr).ok());
  const std::vector<double> wv = values(w);
  EXPECT_TRUE(all_close(y, ref_matmul(x, out, [&](int64_t o, int64_t k) { return wv[o * in + k]; }), 1e-4, 1e-4));
}

INSTANTIATE_TEST_SUITE_P(Sizes, Matmul16Test,
                         ::testing::Combine(::testing::Values(DType::kFp16, DType::kBf16),
                                            ::testing::Values<int64_t>(1, 4, 7),
                                            ::testing::Values<int64_t>(13, 16, 769, 770, 771)));

// Every row is computed start to end by one thread, so for our own kernels (16-bit, int8) the thread
// count cannot change a single bit. OpenBLAS (fp32) runs other edge kernels on other block sizes, which
// may round differently: there the results agree within fp32's summation error bound. The product is large
// enough (7 x 771 x 301) to be split over 4 threads.
TEST(Matmul, ResultsDoNotDependOnTheThreadCount) {
  const int64_t n = 7, in = 771, out = 301;
  Tensor x = random_cpu({n, in}, 45), w32 = random_cpu({out, in}, 46);
  Quantised qw = quantise(w32, 257);
  const std::vector<std::pair<Tensor, Tensor>> weights = {
      {w32, Tensor()}, {testutil::to_dtype_cpu(w32, DType::kFp16), Tensor()},
      {testutil::to_dtype_cpu(w32, DType::kBf16), Tensor()}, {qw.q, qw.scales}};
  for (const auto& [w, s] : weights) {
    std::vector<std::vector<double>> results;
    for (int threads : {1, 2, 4}) {
      kernel::set_cpu_threads(threads);
      Tensor y = make(DType::kFp32, {n, out});
      ASSERT_TRUE(kernel::matmul(x, w, s, s.empty() ? 0 : 257, y, nullptr).ok());
      results.push_back(values(y));
    }
    if (w.dtype() == DType::kFp32) {
      // Any fp32 summation order of in products lies within in * 2^-24 * sum |x w| of the exact value
      // (the standard forward error bound), so two orders lie within twice that of each other.
      const std::vector<double> xv = values(x), wv = values(w32);
      for (int r : {1, 2})
        for (int64_t i = 0; i < n; ++i)
          for (int64_t o = 0; o < out; ++o) {
            double magnitude = 0;
            for (int64_t k = 0; k < in; ++k) magnitude += std::fabs(xv[i * in + k] * wv[o * in + k]);
            const double bound = 2.0 * (double)in * std::ldexp(1.0, -24) * magnitude;
            ASSERT_LE(std::fabs(results[r][i * out + o] - results[0][i * out + o]), bound)
                << "threads " << (r == 1 ? 2 : 4) << ", row " << i << ", column " << o;
          }
    } else {
      EXPECT_EQ(results[0], results[1]) << base::dtype_name(w.dtype());
      EXPECT_EQ(results[0], results[2]) << base::dtype_name(w.dtype());
    }
  }
  kernel::set_cpu_threads(0);
}

// The pool runs every index exactly once, in chunks of the grain, whatever the thread count, and
// several callers (tensor-parallel ranks) can use it at once.
TEST(ThreadPool, RunsEveryIndexOnceInChunksOfTheGrain) {
  for (int threads : {1, 2, 3, 8}) {
    for (int64_t n : {1, 5, 1000, 100003}) {
      for (int64_t grain : {1, 7, 4096}) {
        std::vector<std::atomic<int>> hits(n);
        std::atomic<bool> bad_chunk{false};
        kernel::cpu::parallel_for(n, grain, threads, [&](int64_t b, int64_t e) {
          // Chunks start on a multiple of the grain (raised for n > 65535 chunks) and are not empty.
          if (e <= b || e > n) bad_chunk = true;
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
        EXPECT_FALSE(bad_chunk) << "n " << n << " grain " << grain << " threads " << threads;
        int64_t wrong = 0;
        for (auto& h : hits) wrong += h.load() != 1;
        EXPECT_EQ(wrong, 0) << "n " << n << " grain " << grain << " threads " << threads;
      }
    }
  }
  std::vector<std::thread> callers;
  std::atomic<int64_t> total{0};
  for (int c = 0; c < 3; ++c)
    callers.emplace_back([&] {
      for (int rep = 0; rep < 200; ++rep)
        kernel::cpu::parallel_for(1000, 2, [&](int64_t b, int64_t e) { total += e - b; });
    });
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), 3 * 200 * 1000);
}

TEST(Threads, BudgetDefaultsToTheUsableCoresAndSharesPerThread) {
  kernel::set_cpu_threads(0);
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  EXPECT_EQ(kernel::cpu_threads(), CPU_COUNT(&set));
  kernel::set_cpu_threads(3);
  EXPECT_EQ(kernel::cpu_threads(), 3);
  std::thread([] {
    kernel::set_cpu_threads_this_thread(1);
    EXPECT_EQ(kernel::cpu_threads(), 1);
  }).join();
  EXPECT_EQ(kernel::cpu_threads(), 3);  // the share was the other thread's only
  kernel::set_cpu_threads(0);
}

// (n_tokens, group_size); in = 7 groups wide plus out = 67 rows, so neither is a power of two.
class MatmulInt8Test : public ::testing::TestWithParam<std::tuple<int64_t, int>> {};

TEST_P(MatmulInt8Test, MatchesDequantisedReference) {
  const auto [n, group] = GetParam();
  const int64_t in = 7 * group, out = 67;
  Tensor x = random_cpu({n, in}, 51), y = make(DType::kFp32, {n, out});
  Quantised qw = quantise(random_cpu({out, in}, 52), group);
  ASSERT_TRUE(kernel::matmul(x, qw.q, qw.scales, group, y, nullptr).ok());
  const int8_t* q = qw.q.ptr<int8_t>();
  const float* s = qw.scales.ptr<float>();
  auto w = [&](int64_t o, int64_t k) { return (double)q[o * in + k] * s[o * (in / group) + k / group]; };
  EXPECT_TRUE(all_close(y, ref_matmul(x, out, w), 1e-4, 1e-4));
}

// The int8 path and the fp32 (BLAS) path agree when given the same (dequantised) weights.
TEST_P(MatmulInt8Test, AgreesWithFp32OnDequantisedWeights) {
  const auto [n, group] = GetParam();
  const int64_t in = 7 * group, out = 67;
  Tensor x = random_cpu({n, in}, 61);
  Quantised qw = quantise(random_cpu({out, in}, 62), group);
  Tensor w = make(DType::kFp32, {out, in});
  for (int64_t j = 0; j < w.numel(); ++j)
    w.ptr<float>()[j] = qw.q.ptr<int8_t>()[j] * qw.scales.ptr<float>()[j / group];  // row-major: j / group
  Tensor y8 = make(DType::kFp32, {n, out}), y32 = make(DType::kFp32, {n, out});
  ASSERT_TRUE(kernel::matmul(x, qw.q, qw.scales, group, y8, nullptr).ok());
  ASSERT_TRUE(kernel::matmul(x, w, Tensor(), 0, y32, nullptr).ok());
  EXPECT_TRUE(all_close(y8, values(y32), 1e-4, 1e-4));
}

INSTANTIATE_TEST_SUITE_P(Sizes, MatmulInt8Test,
                         ::testing::Combine(::testing::Values<int64_t>(1, 7), ::testing::Values(32, 64, 128)));

// ---------------------------------------------------------------------------------------------------
// rope

// (n_tokens, pos, head_dim)
class RopeTest : public ::testing::TestWithParam<std::tuple<int64_t, int, int>> {};

TEST_P(RopeTest, RotatesInterleavedPairsAtTheirPositions) {
  const auto [n, pos, head_dim] = GetParam();
  const int n_heads = 6, n_kv_heads = 2;
  const int64_t max_seq = 32;
  Tensor table = rope_table(max_seq, head_dim);
  Tensor q = random_cpu({n, n_heads * head_dim}, 71), k = random_cpu({n, n_kv_heads * head_dim}, 72);
  auto reference = [&](const Tensor& x) {
    std::vector<double> r = values(x);
    const int64_t width = x.dim(1);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t e = 0; e < width; e += 2) {
        const int j = (int)(e % head_dim) / 2;
        const float* cs = table.ptr<float>() + ((pos + i) * head_dim / 2 + j) * 2;
        const double a = r[i * width + e], b = r[i * width + e + 1];
        r[i * width + e] = a * cs[0] - b * cs[1];
        r[i * width + e + 1] = a * cs[1] + b * cs[0];
      }
    return r;
  };
  const std::vector<double> q_ref = reference(q), k_ref = reference(k);
  Tensor p = ints({pos});
  ASSERT_TRUE(kernel::rope(q, k, p, table, head_dim, nullptr).ok());
  EXPECT_TRUE(all_close(q, q_ref, 1e-6, 1e-6));
  EXPECT_TRUE(all_close(k, k_ref, 1e-6, 1e-6));
}

INSTANTIATE_TEST_SUITE_P(Sizes, RopeTest,
                         ::testing::Combine(::testing::Values<int64_t>(1, 7), ::testing::Values(0, 9),
                                            ::testing::Values(8, 64)));

TEST(Rope, RejectsPositionsBeyondTable) {
  Tensor table = rope_table(8, 8), q = random_cpu({3, 16}, 1), k = random_cpu({3, 8}, 2);
  EXPECT_FALSE(kernel::rope(q, k, ints({6}), table, 8, nullptr).ok());
  EXPECT_TRUE(kernel::rope(q, k, ints({5}), table, 8, nullptr).ok());
}

// ---------------------------------------------------------------------------------------------------
// kv_append + attention

// (n_tokens, pos, head_dim, n_kv_heads) with n_heads = 6: n_kv_heads 2 is GQA, 6 is MHA.
class AttentionTest : public ::testing::TestWithParam<std::tuple<int64_t, int, int, int>> {};

// Causal GQA reference: query i of a sequence (position first + i) over the sequence's rows [0, first + i].
// q: [n, n_heads * hd]; k, v: the sequence's rows [len, n_kv_heads * hd].
std::vector<double> attention_ref(const std::vector<double>& q, const std::vector<double>& k,
                                  const std::vector<double>& v, int64_t first, int64_t n, int n_heads, int n_kv_heads,
                                  int hd) {
  const int group = n_heads / n_kv_heads;
  const int64_t q_width = (int64_t)n_heads * hd, kv_width = (int64_t)n_kv_heads * hd;
  std::vector<double> ref(n * q_width, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int h = 0; h < n_heads; ++h) {
      const int64_t len = first + i + 1, kv_off = (int64_t)(h / group) * hd;
      std::vector<double> s(len);
      double max_s = -INFINITY, sum = 0;
      for (int64_t t = 0; t < len; ++t) {
        double dot = 0;
        for (int d = 0; d < hd; ++d) dot += q[i * q_width + h * hd + d] * k[t * kv_width + kv_off + d];
        s[t] = dot / std::sqrt((double)hd);
        max_s = std::max(max_s, s[t]);
      }
      for (double& e : s) sum += (e = std::exp(e - max_s));
      for (int64_t t = 0; t < len; ++t)
        for (int d = 0; d < hd; ++d) ref[i * q_width + h * hd + d] += s[t] / sum * v[t * kv_width + kv_off + d];
    }
  return ref;
}

TEST_P(AttentionTest, CausalGqaOverCacheMatchesReference) {
  const auto [n, pos, head_dim, n_kv_heads] = GetParam();
  const int n_heads = 6;
  const int64_t max_seq = 24, q_width = n_heads * head_dim, kv_width = n_kv_heads * head_dim;

  // Rows not yet written hold NaN: reading any of them (a causality bug) turns the output into NaN.
  Tensor k_cache = make(DType::kFp32, {max_seq, kv_width}), v_cache = make(DType::kFp32, {max_seq, kv_width});
  for (int64_t j = 0; j < k_cache.numel(); ++j)
    k_cache.ptr<float>()[j] = v_cache.ptr<float>()[j] = std::numeric_limits<float>::quiet_NaN();

  // Keys and values for positions 0..pos+n-1: a prefix written at 0, then the n new rows at pos.
  Tensor k_all = random_cpu({pos + n, kv_width}, 81), v_all = random_cpu({pos + n, kv_width}, 82);
  if (pos > 0) {
    Tensor k0 = k_all.slice_rows(0, pos), v0 = v_all.slice_rows(0, pos);
    ASSERT_TRUE(kernel::kv_append(k0, v0, k_cache, v_cache, ints({0}), nullptr).ok());
  }
  Tensor k_new = k_all.slice_rows(pos, pos + n), v_new = v_all.slice_rows(pos, pos + n);
  Tensor p = ints({pos});
  ASSERT_TRUE(kernel::kv_append(k_new, v_new, k_cache, v_cache, p, nullptr).ok());

  Tensor q = random_cpu({n, q_width}, 83), out = make(DType::kFp32, {n, q_width});
  Tensor scratch = make(DType::kFp32, {kernel::attention_scratch_floats(n, n_heads, head_dim, max_seq,
                                                                         base::DeviceType::kCPU)});
  ASSERT_TRUE(kernel::attention(q, k_cache, v_cache, p, n_heads, n_kv_heads, head_dim, scratch, out, nullptr).ok());

  const std::vector<double> ref = attention_ref(values(q), values(k_all), values(v_all), pos, n, n_heads, n_kv_heads,
                                                head_dim);
  EXPECT_TRUE(all_close(out, ref, 1e-5, 1e-4));
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Combine(::testing::Values<int64_t>(1, 7), ::testing::Values(0, 9),
                                            ::testing::Values(8, 64), ::testing::Values(2, 6)));

// Sequences' K and V rows scattered over a pool of pages [n_pages, page_size, kv_dim] at shuffled page
// ids; rows no sequence owns (two spare pages, the tails of last pages) are NaN, and table entries
// past a sequence's pages name a spare page, so a read outside the sequence shows in the output.
struct Pages {
  Tensor k, v;                 // fp32 [n_pages, page_size, kv_dim]
  Tensor table;                // int32 [batch, max_pages]
};

Pages scatter_pages(const std::vector<Tensor>& ks, const std::vector<Tensor>& vs, int64_t page_size, uint64_t seed) {
  const int64_t batch = (int64_t)ks.size(), kv_dim = ks[0].dim(1);
  int64_t total = 2, max_pages = 0;
  std::vector<int64_t> pages;
  for (const Tensor& k : ks) {
    pages.push_back((k.dim(0) + page_size - 1) / page_size);
    total += pages.back();
    max_pages = std::max(max_pages, pages.back() + 1);
  }
  std::vector<int32_t> perm(total);
  for (int64_t i = 0; i < total; ++i) perm[i] = (int32_t)i;
  std::shuffle(perm.begin(), perm.end(), std::mt19937(seed));
  Pages p{make(DType::kFp32, {total, page_size, kv_dim}), make(DType::kFp32, {total, page_size, kv_dim}),
          make(DType::kInt32, {batch, max_pages})};
  std::fill(p.k.ptr<float>(), p.k.ptr<float>() + p.k.numel(), std::numeric_limits<float>::quiet_NaN());
  std::fill(p.v.ptr<float>(), p.v.ptr<float>() + p.v.numel(), std::numeric_limits<float>::quiet_NaN());
  int32_t* table = p.table.ptr<int32_t>();
  std::fill(table, table + p.table.numel(), perm[total - 1]);
  int64_t next = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < pages[b]; ++j) table[b * max_pages + j] = perm[next++];
    for (int64_t t = 0; t < ks[b].dim(0); ++t) {
      const int64_t row = (int64_t)table[b * max_pages + t / page_size] * page_size + t % page_size;
      std::memcpy(p.k.ptr<float>() + row * kv_dim, ks[b].ptr<float>() + t * kv_dim, kv_dim * sizeof(float));
      std::memcpy(p.v.ptr<float>() + row * kv_dim, vs[b].ptr<float>() + t * kv_dim, kv_dim * sizeof(float));
    }
  }
  return p;
}

using testutil::attention_decode_batch;
using testutil::attention_paged;

// (n_tokens, pos, page_size): one sequence's prefill chunk or decode step through a page table.
class AttentionPagedTest : public ::testing::TestWithParam<std::tuple<int64_t, int, int>> {};

TEST_P(AttentionPagedTest, MatchesReference) {
  const auto [n, pos, page_size] = GetParam();
  const int n_heads = 6, n_kv_heads = 2, hd = 8;
  const int64_t kv_dim = n_kv_heads * hd;
  const Tensor k = random_cpu({pos + n, kv_dim}, 91), v = random_cpu({pos + n, kv_dim}, 92);
  Pages pages = scatter_pages({k}, {v}, page_size, 93);
  const int64_t max_len = pages.table.numel() * page_size;
  Tensor q = random_cpu({n, n_heads * hd}, 94, -3.f, 3.f), out = make(DType::kFp32, {n, n_heads * hd});
  Tensor scratch =
      make(DType::kFp32, {kernel::attention_scratch_floats(n, n_heads, hd, max_len, base::DeviceType::kCPU)});
  Tensor table = pages.table.view({pages.table.numel()});
  ASSERT_TRUE(attention_paged(q, pages.k, pages.v, table, ints({pos}), n_heads, n_kv_heads, hd, scratch, out,
                                      nullptr)
                  .ok());
  EXPECT_TRUE(all_close(out, attention_ref(values(q), values(k), values(v), pos, n, n_heads, n_kv_heads, hd), 1e-5,
                        1e-4));
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionPagedTest,
                         ::testing::Combine(::testing::Values<int64_t>(1, 7), ::testing::Values(0, 9, 30),
                                            ::testing::Values(1, 4, 5)));

// Sequences of lengths 1, 5, 16 and 23 in one pool, one query each (each sequence's last token).
TEST(Attention, DecodeBatchMatchesReferencePerSequence) {
  const int n_heads = 4, n_kv_heads = 2, hd = 8;
  const int64_t kv_dim = n_kv_heads * hd, width = n_heads * hd;
  const std::vector<int32_t> lens = {1, 5, 16, 23};
  const int64_t batch = (int64_t)lens.size();
  std::vector<Tensor> ks, vs;
  for (int32_t len : lens) {
    ks.push_back(random_cpu({len, kv_dim}, 100 + len));
    vs.push_back(random_cpu({len, kv_dim}, 200 + len));
  }
  for (int64_t page_size : {1, 4, 6}) {
    SCOPED_TRACE("page_size " + std::to_string(page_size));
    Pages pages = scatter_pages(ks, vs, page_size, 95);
    const int64_t max_len = pages.table.dim(1) * page_size;
    Tensor q = random_cpu({batch, width}, 96, -3.f, 3.f), out = make(DType::kFp32, {batch, width});
    Tensor scratch = make(DType::kFp32, {kernel::attention_batch_scratch_floats(batch, n_heads, hd, max_len,
                                                                                base::DeviceType::kCPU)});
    ASSERT_TRUE(attention_decode_batch(q, pages.k, pages.v, pages.table, ints(lens), n_heads, n_kv_heads, hd,
                                               scratch, out, nullptr)
                    .ok());
    const std::vector<double> qv = values(q);
    std::vector<double> ref;
    for (int64_t b = 0; b < batch; ++b) {
      const std::vector<double> qb(qv.begin() + b * width, qv.begin() + (b + 1) * width);
      const std::vector<double> rb = attention_ref(qb, values(ks[b]), values(vs[b]), lens[b] - 1, 1, n_heads, n_kv_heads, hd);
      ref.insert(ref.end(), rb.begin(), rb.end());
    }
    EXPECT_TRUE(all_close(out, ref, 1e-5, 1e-4));
  }
}

TEST(Attention, PagedRejectsBadTablesAndLengths) {
  const int hd = 8;
  Tensor q = random_cpu({2, 2 * hd}, 1), out = make(DType::kFp32, {2, 2 * hd});
  Tensor kp = random_cpu({3, 4, hd}, 2), vp = random_cpu({3, 4, hd}, 3);
  Tensor scratch = make(DType::kFp32, {64});
  Tensor table = make(DType::kInt32, {2, 2});
  for (int i = 0; i < 4; ++i) table.ptr<int32_t>()[i] = i % 3;
  EXPECT_TRUE(attention_decode_batch(q, kp, vp, table, ints({3, 8}), 2, 1, hd, scratch, out, nullptr).ok());
  EXPECT_FALSE(attention_decode_batch(q, kp, vp, table, ints({3, 9}), 2, 1, hd, scratch, out, nullptr).ok());  // 9 > 2 pages of 4
  EXPECT_FALSE(attention_decode_batch(q, kp, vp, table, ints({1}), 2, 1, hd, scratch, out, nullptr).ok());     // one length for two
  table.ptr<int32_t>()[3] = 3;  // only pages 0..2 exist
  EXPECT_FALSE(attention_decode_batch(q, kp, vp, table, ints({3, 8}), 2, 1, hd, scratch, out, nullptr).ok());
  Tensor one = q.slice_rows(0, 1), one_out = out.slice_rows(0, 1);
  Tensor row = make(DType::kInt32, {2});
  row.ptr<int32_t>()[0] = 0, row.ptr<int32_t>()[1] = 1;
  EXPECT_TRUE(attention_paged(one, kp, vp, row, ints({7}), 2, 1, hd, scratch, one_out, nullptr).ok());
  EXPECT_FALSE(attention_paged(one, kp, vp, row, ints({8}), 2, 1, hd, scratch, one_out, nullptr).ok());  // 8 + 1 > 8
}

TEST(Attention, RejectsBadHeadsAndSmallScratch) {
  const int64_t max_seq = 16;
  Tensor q = random_cpu({2, 6 * 8}, 1), out = make(DType::kFp32, {2, 6 * 8});
  Tensor kc = random_cpu({max_seq, 2 * 8}, 2), vc = random_cpu({max_seq, 2 * 8}, 3);
  Tensor scratch = make(DType::kFp32, {kernel::attention_scratch_floats(2, 6, 8, max_seq, base::DeviceType::kCPU)});
  Tensor p = ints({3});
  EXPECT_TRUE(kernel::attention(q, kc, vc, p, 6, 2, 8, scratch, out, nullptr).ok());
  EXPECT_FALSE(kernel::attention(q, kc, vc, p, 6, 4, 8, scratch, out, nullptr).ok());  // 4 does not divide 6
  EXPECT_FALSE(kernel::attention(q, kc, vc, p, 6, 2, 4, scratch, out, nullptr).ok());  // q width != 6 * 4
  Tensor small = make(DType::kFp32, {max_seq - 1});
  EXPECT_FALSE(kernel::attention(q, kc, vc, p, 6, 2, 8, small, out, nullptr).ok());
  EXPECT_FALSE(kernel::attention(q, kc, vc, ints({15}), 6, 2, 8, scratch, out, nullptr).ok());  // 15 + 2 > 16
}

// ---------------------------------------------------------------------------------------------------
// swiglu, add, softmax, argmax, convert

TEST(Swiglu, MatchesReference) {
  for (int64_t dim : {769, 770, 771}) {
    Tensor g = random_cpu({7, dim}, 91, -6.f, 6.f), u = random_cpu({7, dim}, 92), out = make(DType::kFp32, {7, dim});
    ASSERT_TRUE(kernel::swiglu(g, u, out, nullptr).ok());
    std::vector<double> ref = values(g);
    const std::vector<double> uv = values(u);
    for (size_t j = 0; j < ref.size(); ++j) ref[j] = ref[j] / (1.0 + std::exp(-ref[j])) * uv[j];
    EXPECT_TRUE(all_close(out, ref, 1e-6, 1e-5)) << "dim " << dim;
  }
}

TEST(Add, MatchesReferenceAndAllowsAliasing) {
  Tensor a = random_cpu({7, 771}, 101), b = random_cpu({7, 771}, 102);
  std::vector<double> ref = values(a);
  const std::vector<double> bv = values(b);
  for (size_t j = 0; j < ref.size(); ++j) ref[j] = (float)((float)ref[j] + (float)bv[j]);
  ASSERT_TRUE(kernel::add(a, b, a, nullptr).ok());  // out aliases a
  EXPECT_TRUE(all_close(a, ref, 0, 0));
}

TEST(Softmax, StableForLargeLogits) {
  for (int64_t cols : {1, 769, 771}) {
    Tensor x = random_cpu({7, cols}, 111, -50.f, 50.f);
    for (int64_t j = 0; j < cols; j += 3) x.ptr<float>()[j] += 1000.f;  // exp(1000) overflows without the max shift
    std::vector<double> ref = values(x);
    for (int64_t r = 0; r < 7; ++r) {
      double* row = ref.data() + r * cols;
      const double m = *std::max_element(row, row + cols);
      double sum = 0;
      for (int64_t j = 0; j < cols; ++j) sum += (row[j] = std::exp(row[j] - m));
      for (int64_t j = 0; j < cols; ++j) row[j] /= sum;
    }
    ASSERT_TRUE(kernel::softmax(x, nullptr).ok());
    EXPECT_TRUE(all_close(x, ref, 1e-7, 1e-5)) << "cols " << cols;
  }
}

TEST(Argmax, LowestIndexOnTies) {
  Tensor x = random_cpu({4, 771}, 121), out = make(DType::kInt32, {4});
  float* p = x.ptr<float>();
  p[0 * 771 + 5] = p[0 * 771 + 700] = 2.f;  // tie: expect 5
  p[1 * 771 + 770] = 3.f;                   // last element
  p[2 * 771 + 0] = 3.f;                     // first element
  for (int64_t j = 0; j < 771; ++j) p[3 * 771 + j] = -1.f;  // all equal: expect 0
  ASSERT_TRUE(kernel::argmax(x, out, nullptr).ok());
  EXPECT_EQ(std::vector<int32_t>(out.ptr<int32_t>(), out.ptr<int32_t>() + 4), (std::vector<int32_t>{5, 770, 0, 0}));
}

// Bitwise comparison: infinities (fp16 overflow) would defeat all_close's |got - ref|.
::testing::AssertionResult same_bits(const Tensor& got, const Tensor& want) {
  if (got.dtype() == want.dtype() && got.nbytes() == want.nbytes() &&
      std::memcmp(got.data(), want.data(), got.nbytes()) == 0)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << got.shape_string() << " differs from " << want.shape_string();
}

TEST(Convert, RoundsLikeTheHostConversions) {
  Tensor f = random_cpu({7, 771}, 131, -70000.f, 70000.f);  // |x| >= 65520 overflows fp16 to inf
  f.ptr<float>()[1] = 1e-7f;                              // an fp16 subnormal
  for (DType dt : {DType::kFp16, DType::kBf16}) {
    Tensor h = make(dt, {7, 771}), back = make(DType::kFp32, {7, 771});
    ASSERT_TRUE(kernel::convert(f, h, nullptr).ok());
    EXPECT_TRUE(same_bits(h, testutil::to_dtype_cpu(f, dt))) << base::dtype_name(dt);
    ASSERT_TRUE(kernel::convert(h, back, nullptr).ok());
    EXPECT_TRUE(same_bits(back, testutil::to_fp32_cpu(h))) << base::dtype_name(dt);
  }
  Tensor h = testutil::to_dtype_cpu(f, DType::kFp16), b = make(DType::kBf16, {7, 771});
  ASSERT_TRUE(kernel::convert(h, b, nullptr).ok());
  EXPECT_TRUE(same_bits(b, testutil::to_dtype_cpu(h, DType::kBf16)));
}

// ---------------------------------------------------------------------------------------------------
// The dispatcher rejects bad arguments with a Status instead of crashing.

TEST(Dispatch, RejectsMismatchedShapesAndDtypes) {
  Tensor x = random_cpu({3, 16}, 1), y = make(DType::kFp32, {3, 8});
  Tensor w_bad = random_cpu({8, 15}, 2), w = random_cpu({8, 16}, 3);
  EXPECT_FALSE(kernel::matmul(x, w_bad, Tensor(), 0, y, nullptr).ok());
  Tensor y_rows = make(DType::kFp32, {2, 8});
  EXPECT_FALSE(kernel::matmul(x, w, Tensor(), 0, y_rows, nullptr).ok());

  Quantised qw = quantise(random_cpu({8, 16}, 4), 8);
  EXPECT_TRUE(kernel::matmul(x, qw.q, qw.scales, 8, y, nullptr).ok());
  EXPECT_FALSE(kernel::matmul(x, qw.q, qw.scales, 5, y, nullptr).ok());   // 5 does not divide 16
  EXPECT_FALSE(kernel::matmul(x, qw.q, qw.scales, 4, y, nullptr).ok());   // scales are [8, 2], not [8, 4]
  EXPECT_FALSE(kernel::matmul(x, qw.q, Tensor(), 8, y, nullptr).ok());    // missing scales

  Tensor w_half = testutil::to_dtype_cpu(w, DType::kFp16);
  EXPECT_TRUE(kernel::matmul(x, w_half, Tensor(), 0, y, nullptr).ok());  // 16-bit weights on the CPU
  Tensor w_ints = make(DType::kInt32, {8, 16});
  EXPECT_FALSE(kernel::matmul(x, w_ints, Tensor(), 0, y, nullptr).ok());  // not a weight dtype

  Tensor x_half = testutil::to_dtype_cpu(x, DType::kFp16), o_half = make(DType::kFp16, {3, 16});
  EXPECT_FALSE(kernel::rmsnorm(x_half, random_cpu({16}, 5), 1e-5f, o_half, nullptr).ok());  // CPU activations fp32
  EXPECT_FALSE(kernel::rmsnorm(x, random_cpu({15}, 5), 1e-5f, x, nullptr).ok());

  Tensor out_bad = make(DType::kFp32, {3, 15});
  EXPECT_FALSE(kernel::add(x, x, out_bad, nullptr).ok());
  EXPECT_FALSE(kernel::swiglu(x, out_bad, x, nullptr).ok());
  EXPECT_FALSE(kernel::embedding(ints({0, 1}), random_cpu({4, 16}, 6), x, nullptr).ok());  // out has 3 rows
  EXPECT_FALSE(kernel::argmax(x, y, nullptr).ok());                                          // out must be int32
  EXPECT_FALSE(kernel::rope(x, x, ints({0}), rope_table(4, 6), 6, nullptr).ok());            // 6 does not divide 16

  Tensor kc = make(DType::kFp32, {4, 8});
  EXPECT_FALSE(kernel::kv_append(x, x, kc, kc, ints({0}), nullptr).ok());  // width 16 vs cache width 8
  EXPECT_FALSE(kernel::kv_append(y, y, kc, kc, ints({2}), nullptr).ok());  // rows 2..4 beyond a 4-row cache
  EXPECT_FALSE(kernel::kv_append(y, y, kc, kc, ints({-1}), nullptr).ok());
}

// Kernels allocate nothing: no memory from the project's allocators (scratch comes from the caller)
// and no heap allocation at all, counting every malloc and new of the process (heap_counter.h). The
// second round is counted: the first starts OpenMP's thread pool and OpenBLAS's buffers, once per
// process.
TEST(Dispatch, KernelsDoNotAllocate) {
  ASSERT_TRUE(testutil::heap_counter_works()) << "the heap counter is not linked into this test";
  const int64_t n = 7, dim = 48, max_seq = 16;
  Tensor x = random_cpu({n, dim}, 1), w = random_cpu({dim}, 2), y = make(DType::kFp32, {n, dim});
  Tensor wm = random_cpu({dim, dim}, 3), table = rope_table(max_seq, 8), kc = make(DType::kFp32, {max_seq, 16});
  Tensor vc = make(DType::kFp32, {max_seq, 16}), k = random_cpu({n, 16}, 4), ids = ints({0, 1, 2, 3, 4, 5, 6});
  Tensor emb = random_cpu({10, dim}, 5), am = make(DType::kInt32, {n}), h = make(DType::kBf16, {n, dim});
  Quantised qw = quantise(wm, 16);
  Tensor scratch = make(DType::kFp32, {kernel::attention_scratch_floats(n, 6, 8, max_seq, base::DeviceType::kCPU)});
  Tensor p = ints({2});
  Tensor x1 = x.slice_rows(0, 1), y1 = y.slice_rows(0, 1);  // the decode shapes (GEMV)
  auto run_all = [&] {
    ASSERT_TRUE(kernel::embedding(ids, emb, x, nullptr).ok());
    ASSERT_TRUE(kernel::rmsnorm(x, w, 1e-5f, y, nullptr).ok());
    ASSERT_TRUE(kernel::add_rmsnorm(x, y, w, 1e-5f, y, nullptr).ok());
    ASSERT_TRUE(kernel::matmul(x, wm, Tensor(), 0, y, nullptr).ok());
    ASSERT_TRUE(kernel::matmul(x1, wm, Tensor(), 0, y1, nullptr).ok());
    ASSERT_TRUE(kernel::matmul(x, qw.q, qw.scales, 16, y, nullptr).ok());
    ASSERT_TRUE(kernel::rope(x, k, p, table, 8, nullptr).ok());
    ASSERT_TRUE(kernel::kv_append(k, k, kc, vc, p, nullptr).ok());
    ASSERT_TRUE(kernel::attention(x, kc, vc, p, 6, 2, 8, scratch, y, nullptr).ok());
    ASSERT_TRUE(kernel::swiglu(x, y, y, nullptr).ok());
    ASSERT_TRUE(kernel::add(x, y, y, nullptr).ok());
    ASSERT_TRUE(kernel::softmax(y, nullptr).ok());
    ASSERT_TRUE(kernel::argmax(y, am, nullptr).ok());
    ASSERT_TRUE(kernel::convert(y, h, nullptr).ok());
  };
  run_all();
  auto* alloc = base::CPUAllocator::get();
  const int64_t before = alloc->allocations();
  testutil::HeapCounter heap;
  run_all();
  const int64_t heap_allocations = heap.count();
  EXPECT_EQ(heap_allocations, 0) << "heap allocations in one call of every kernel";
  EXPECT_EQ(alloc->allocations(), before);
}
