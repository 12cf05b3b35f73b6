// CUDA kernels (through the kernel:: API) against float64 references computed here from the same rounded
// inputs: random fp32 values are rounded to the activation dtype first, and the reference reads those
// rounded values, so the only differences left are the kernels' fp32 arithmetic and the rounding of
// their outputs. Outputs are poisoned with 0xFF bytes (NaN in fp32/fp16/bf16, -1 in int32) before each
// call, so an element a kernel fails to write cannot pass.
//
// Tolerances are atol + rtol * |ref|. Results rounded once to the activation dtype get: fp32 ~1e-5
// (fp32 arithmetic), fp16 ~2e-3 (half an ulp is 2^-11 ~ 4.9e-4 relative), bf16 ~1e-2 (half an ulp is
// 2^-8 ~ 3.9e-3 relative). Conversions and copies must be exact.
//
// Uploads go through the legacy stream (Tensor::copy_to, cudaMemset); the kernels run on a non-blocking
// stream, so every test settles the device between the two.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "base/cuda_utils.h"
#include "op/kernels.h"
#include "test_util.h"

namespace {

using base::DType;
using tensor::Tensor;

#define ASSERT_OK(expr)                                   \
  do {                                                    \
    const ::base::Status kp_st_ = (expr);                 \
    ASSERT_TRUE(kp_st_.ok()) << #expr << ": " << kp_st_.message(); \
  } while (0)

#define ASSERT_CUDA(expr)                                                            \
  do {                                                                               \
    const cudaError_t kp_err_ = (expr);                                              \
    ASSERT_EQ(kp_err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(kp_err_); \
  } while (0)

const DType kActDtypes[] = {DType::kFp32, DType::kFp16, DType::kBf16};

struct Tol {
  double atol, rtol;
};

// One rounding of an O(1) result to `dt` after fp32 arithmetic (see the file comment).
Tol tol_for(DType dt) {
  switch (dt) {
    case DType::kFp16: return {1e-3, 2e-3};
    case DType::kBf16: return {1e-2, 1e-2};
    default: return {1e-5, 1e-5};
  }
}

// The value a kernel stores when it rounds the fp32 result `v` to `dt`.
double round_to(DType dt, double v) {
  const float f = (float)v;
  switch (dt) {
    case DType::kFp16: return base::half_to_float(base::float_to_half(f));
    case DType::kBf16: return base::bf16_to_float(base::float_to_bf16(f));
    default: return f;
  }
}

std::vector<double> round_all(DType dt, std::vector<double> v) {
  for (double& x : v) x = round_to(dt, x);
  return v;
}

std::vector<double> values_of(const Tensor& t) {
  const Tensor f = testutil::to_fp32_cpu(t);
  return std::vector<double>(f.ptr<float>(), f.ptr<float>() + f.numel());
}

// A GPU tensor with every byte 0xFF.
Tensor poisoned(DType dt, std::vector<int64_t> shape) {
  Tensor t;
  EXPECT_TRUE(Tensor::create(dt, std::move(shape), base::CUDAAllocator::get(0), &t).ok());
  EXPECT_EQ(cudaMemset(t.data(), 0xFF, t.nbytes()), cudaSuccess);
  return t;
}

// A copy of host tensor `h` on the GPU, starting one element past a 256-byte boundary, so the kernels'
// 16-byte vector paths must be refused in favour of the scalar ones.
Tensor to_gpu_misaligned(const Tensor& h) {
  Tensor big;
  EXPECT_TRUE(Tensor::create(h.dtype(), {h.numel() + 16}, base::CUDAAllocator::get(0), &big).ok());
  Tensor view = Tensor::from_buffer(big.buffer(), big.byte_offset() + base::dtype_size(h.dtype()), h.dtype(),
                                    h.shape());
  EXPECT_TRUE(h.copy_to(view).ok());
  return view;
}

// Input data: the GPU tensor and exactly the same values in double.
struct Data {
  Tensor gpu;
  std::vector<double> v;
};

Data upload_host(const Tensor& h, bool misaligned) {
  return {misaligned ? to_gpu_misaligned(h) : testutil::to_gpu(h), values_of(h)};
}

// Uniform [lo, hi) values from `seed`, rounded to `dt`.
Data make_data(std::vector<int64_t> shape, uint64_t seed, DType dt, float lo = -1.f, float hi = 1.f,
               bool misaligned = false) {
  return upload_host(testutil::to_dtype_cpu(testutil::random_cpu(std::move(shape), seed, lo, hi), dt), misaligned);
}

// `v` (rounded to `dt`) as a GPU tensor.
Data upload_values(const std::vector<double>& v, std::vector<int64_t> shape, DType dt) {
  Tensor f;
  EXPECT_TRUE(Tensor::create(DType::kFp32, std::move(shape), base::CPUAllocator::get(), &f).ok());
  for (int64_t i = 0; i < f.numel(); ++i) f.ptr<float>()[i] = (float)v[i];
  return upload_host(testutil::to_dtype_cpu(f, dt), false);
}

Tensor int32_gpu(const std::vector<int32_t>& v) {
  Tensor h;
  EXPECT_TRUE(Tensor::create(DType::kInt32, {(int64_t)v.size()}, base::CPUAllocator::get(), &h).ok());
  std::copy(v.begin(), v.end(), h.ptr<int32_t>());
  return testutil::to_gpu(h);
}

std::vector<int32_t> int32_host(const Tensor& g) {
  Tensor h;
  EXPECT_TRUE(Tensor::create(DType::kInt32, g.shape(), base::CPUAllocator::get(), &h).ok());
  EXPECT_TRUE(g.copy_to(h).ok());
  return std::vector<int32_t>(h.ptr<int32_t>(), h.ptr<int32_t>() + h.numel());
}

// fp32 [max_seq, head_dim / 2, 2] table of (cos t, sin t), t = p * theta^(-2j / head_dim).
Tensor make_cos_sin(int max_seq, int head_dim, std::vector<double>* values) {
  Tensor h;
  EXPECT_TRUE(Tensor::create(DType::kFp32, {max_seq, head_dim / 2, 2}, base::CPUAllocator::get(), &h).ok());
  float* p = h.ptr<float>();
  for (int s = 0; s < max_seq; ++s)
    for (int j = 0; j < head_dim / 2; ++j) {
      const double t = s * std::pow(10000.0, -2.0 * j / head_dim);
      p[(s * head_dim / 2 + j) * 2] = (float)std::cos(t);
      p[(s * head_dim / 2 + j) * 2 + 1] = (float)std::sin(t);
    }
  *values = std::vector<double>(p, p + h.numel());
  return testutil::to_gpu(h);
}

// ---------------------------------------------------------------------------------------------------
// float64 references.

std::vector<double> rmsnorm_ref(const std::vector<double>& x, const std::vector<double>& w, int64_t n, int64_t dim,
                                double eps) {
  std::vector<double> out(x.size());
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t d = 0; d < dim; ++d) ss += x[i * dim + d] * x[i * dim + d];
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    for (int64_t d = 0; d < dim; ++d) out[i * dim + d] = x[i * dim + d] * inv * w[d];
  }
  return out;
}

std::vector<double> matmul_ref(const std::vector<double>& x, const std::vector<double>& w, int64_t n, int64_t in,
                               int64_t out) {
  std::vector<double> y(n * out);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t k = 0; k < in; ++k) s += x[i * in + k] * w[o * in + k];
      y[i * out + o] = s;
    }
  return y;
}

// Rotates rows of width `width` (heads of head_dim) in place, positions pos .. pos + n - 1.
void rope_ref(std::vector<double>& x, int64_t n, int64_t width, int head_dim, int pos,
              const std::vector<double>& cos_sin) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t p = 0; p < width / 2; ++p) {
      const int64_t j = p % (head_dim / 2);
      const double c = cos_sin[((pos + i) * (head_dim / 2) + j) * 2], s = cos_sin[((pos + i) * (head_dim / 2) + j) * 2 + 1];
      double& a = x[i * width + 2 * p];
      double& b = x[i * width + 2 * p + 1];
      const double a0 = a, b0 = b;
      a = a0 * c - b0 * s;
      b = a0 * s + b0 * c;
    }
}

// Causal GQA: query i (position pos + i) over cache rows [0, pos + i].
std::vector<double> attention_ref(const std::vector<double>& q, const std::vector<double>& kc,
                                  const std::vector<double>& vc, int pos, int n, int n_heads, int n_kv_heads,
                                  int hd) {
  const int group = n_heads / n_kv_heads, kv_dim = n_kv_heads * hd;
  std::vector<double> out((size_t)n * n_heads * hd);
  std::vector<double> sc;
  for (int i = 0; i < n; ++i)
    for (int h = 0; h < n_heads; ++h) {
      const int g = h / group, len = pos + i + 1;
      const double* qh = &q[((size_t)i * n_heads + h) * hd];
      sc.assign(len, 0);
      double mx = -INFINITY;
      for (int t = 0; t < len; ++t) {
        double s = 0;
        for (int d = 0; d < hd; ++d) s += qh[d] * kc[(size_t)t * kv_dim + g * hd + d];
        sc[t] = s / std::sqrt((double)hd);
        mx = std::max(mx, sc[t]);
      }
      double sum = 0;
      for (int t = 0; t < len; ++t) sum += (sc[t] = std::exp(sc[t] - mx));
      for (int d = 0; d < hd; ++d) {
        double o = 0;
        for (int t = 0; t < len; ++t) o += sc[t] * vc[(size_t)t * kv_dim + g * hd + d];
        out[((size_t)i * n_heads + h) * hd + d] = o / sum;
      }
    }
  return out;
}

// ---------------------------------------------------------------------------------------------------

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testutil::gpu_count() == 0) return;  // the test body skips
    ASSERT_OK(stream_.create(0));
  }
  kernel::Stream stream() const { return stream_.get(); }
  // Uploads and poisoning (legacy stream) must land before kernels on our non-blocking stream run.
  static void settle() { ASSERT_CUDA(cudaDeviceSynchronize()); }
  void finish() {
    ASSERT_CUDA(cudaStreamSynchronize(stream_.get()));
    ASSERT_CUDA(cudaGetLastError());
  }
  base::CudaStream stream_;
};

TEST_F(CudaKernels, Embedding) {
  KP_SKIP_WITHOUT_GPU();
  const int64_t vocab = 37;
  const std::vector<int32_t> ids = {3, 0, 36, -5, 1000, 17};
  const std::vector<int64_t> rows = {3, 0, 36, 0, 36, 17};  // out-of-range ids clamp on the GPU
  const Tensor tokens = int32_gpu(ids);
  for (int64_t dim : {770, 64}) {
    for (DType tdt : kActDtypes) {
      for (DType odt : kActDtypes) {
        SCOPED_TRACE(std::string("dim ") + std::to_string(dim) + " table " + base::dtype_name(tdt) + " out " +
                     base::dtype_name(odt));
        const Data table = make_data({vocab, dim}, 11 + dim, tdt);
        Tensor out = poisoned(odt, {(int64_t)ids.size(), dim});
        settle();
        ASSERT_OK(kernel::embedding(tokens, table.gpu, out, stream()));
        finish();
        std::vector<double> ref;
        for (int64_t r : rows)
          for (int64_t d = 0; d < dim; ++d) ref.push_back(round_to(odt, table.v[r * dim + d]));
        EXPECT_TRUE(testutil::all_close(out, ref, 0, 0));  // a conversion: exact
      }
    }
  }
}

TEST_F(CudaKernels, RmsNorm) {
  KP_SKIP_WITHOUT_GPU();
  const float eps = 1e-5f;
  for (DType dt : kActDtypes)
    for (int64_t n : {1, 3})
      for (int64_t dim : {769, 770, 771, 1024}) {
        for (bool misaligned : {false, true}) {
          if (misaligned && dim != 1024) continue;  // 1024 is the size that would take the vector path
          SCOPED_TRACE(std::string(base::dtype_name(dt)) + " n " + std::to_string(n) + " dim " +
                       std::to_string(dim) + (misaligned ? " misaligned" : ""));
          const Data x = make_data({n, dim}, 100 + dim, dt, -2.f, 2.f, misaligned);
          const Data w = make_data({dim}, 200 + dim, DType::kFp32, 0.5f, 1.5f);
          Tensor out = poisoned(dt, {n, dim});
          settle();
          ASSERT_OK(kernel::rmsnorm(x.gpu, w.gpu, eps, out, stream()));
          finish();
          const Tol tol = tol_for(dt);
          EXPECT_TRUE(testutil::all_close(out, rmsnorm_ref(x.v, w.v, n, dim, eps), tol.atol, tol.rtol));
        }
      }
}

TEST_F(CudaKernels, AddRmsNorm) {
  KP_SKIP_WITHOUT_GPU();
  const float eps = 1e-5f;
  for (DType dt : kActDtypes)
    for (int64_t n : {1, 3})
      for (int64_t dim : {769, 770, 771, 1024}) {
        SCOPED_TRACE(std::string(base::dtype_name(dt)) + " n " + std::to_string(n) + " dim " + std::to_string(dim));
        Data res = make_data({n, dim}, 300 + dim, dt, -2.f, 2.f);
        const Data delta = make_data({n, dim}, 400 + dim, dt);
        const Data w = make_data({dim}, 500 + dim, DType::kFp32, 0.5f, 1.5f);
        Tensor out = poisoned(dt, {n, dim});
        settle();
        ASSERT_OK(kernel::add_rmsnorm(res.gpu, delta.gpu, w.gpu, eps, out, stream()));
        finish();
        // The residual is stored rounded, and the norm reads the stored values.
        std::vector<double> r(res.v.size());
        for (size_t i = 0; i < r.size(); ++i) r[i] = round_to(dt, res.v[i] + delta.v[i]);
        EXPECT_TRUE(testutil::all_close(res.gpu, r, 0, 0));  // one fp32 add, one rounding: exact
        const Tol tol = tol_for(dt);
        EXPECT_TRUE(testutil::all_close(out, rmsnorm_ref(r, w.v, n, dim, eps), tol.atol, tol.rtol));
      }
}

// out may alias delta: the model may normalise into the buffer that held the layer's output.
TEST_F(CudaKernels, AddRmsNormOutAliasesDelta) {
  KP_SKIP_WITHOUT_GPU();
  const DType dt = DType::kFp16;
  const int64_t n = 2, dim = 1024;
  Data res = make_data({n, dim}, 601, dt, -2.f, 2.f);
  Data delta = make_data({n, dim}, 602, dt);
  const Data w = make_data({dim}, 603, DType::kFp32, 0.5f, 1.5f);
  settle();
  ASSERT_OK(kernel::add_rmsnorm(res.gpu, delta.gpu, w.gpu, 1e-5f, delta.gpu, stream()));
  finish();
  std::vector<double> r(res.v.size());
  for (size_t i = 0; i < r.size(); ++i) r[i] = round_to(dt, res.v[i] + delta.v[i]);
  const Tol tol = tol_for(dt);
  EXPECT_TRUE(testutil::all_close(delta.gpu, rmsnorm_ref(r, w.v, n, dim, 1e-5), tol.atol, tol.rtol));
}

// Accumulation over `in` products of O(1) values: y is O(10), so atol is looser than for O(1) results.
// fp32 stays strict: cuBLAS runs fp32 GEMMs in full fp32 (no TF32).
Tol matmul_tol(DType dt) {
  switch (dt) {
    case DType::kFp16: return {2e-3, 2e-3};
    case DType::kBf16: return {1e-2, 1e-2};
    default: return {1e-4, 1e-5};
  }
}

struct MatmulCase {
  int64_t in, out;
  int group;  // int8 weights only
};

TEST_F(CudaKernels, MatmulFloatWeights) {
  KP_SKIP_WITHOUT_GPU();
  // (1024, 300): every 16-byte vector path; 771: the scalar GEMV fallback (odd row length); 4104: the
  // GEMV's double-buffered loop over several batches of loads, the last one partial.
  const MatmulCase cases[] = {{1024, 300, 0}, {771, 129, 0}, {4104, 37, 0}};
  // n <= 4: GEMV (1, 3, 4); n > 4: cuBLAS (weights of the activation dtype) or the tiled kernel.
  const int64_t ns[] = {1, 3, 4, 5, 17, 64};
  for (DType dt : kActDtypes)
    for (DType wdt : kActDtypes)
      for (const MatmulCase& c : cases)
        for (int64_t n : ns) {
          SCOPED_TRACE(std::string("x ") + base::dtype_name(dt) + " W " + base::dtype_name(wdt) + " n " +
                       std::to_string(n) + " in " + std::to_string(c.in) + " out " + std::to_string(c.out));
          const Data x = make_data({n, c.in}, 700 + n, dt);
          const Data w = make_data({c.out, c.in}, 800 + c.in, wdt);
          Tensor y = poisoned(dt, {n, c.out});
          settle();
          ASSERT_OK(kernel::matmul(x.gpu, w.gpu, Tensor(), 0, y, stream()));
          finish();
          const Tol tol = matmul_tol(dt);
          EXPECT_TRUE(testutil::all_close(y, matmul_ref(x.v, w.v, n, c.in, c.out), tol.atol, tol.rtol));
        }
}

TEST_F(CudaKernels, MatmulInt8Weights) {
  KP_SKIP_WITHOUT_GPU();
  // group 64: vector GEMV (16 int8 per load inside one group); group 8 and in 770: scalar fallback.
  // n > 4 with fp16/bf16 activations, in % 128 == 0 and group % 32 == 0: the tensor-core GEMM, with
  // partial row blocks (out 300, 77) and token tiles of 16 (n <= 16) and 64 (n 17, 64, 130: 3 tiles, the
  // last partial); group 128 spans a whole pipeline stage; in 1040 (group 16): the tiled fallback, and
  // a GEMV whose only load batch is partial. fp32 activations: always the tiled GEMM.
  const MatmulCase cases[] = {{1024, 300, 64}, {1024, 300, 8}, {770, 129, 70},
                              {1280, 77, 32},  {2048, 64, 128}, {1040, 33, 16}};
  const int64_t ns[] = {1, 3, 4, 5, 16, 17, 64, 130};
  for (const MatmulCase& c : cases) {
    Tensor q, s;
    ASSERT_OK(Tensor::create(DType::kInt8, {c.out, c.in}, base::CPUAllocator::get(), &q));
    ASSERT_OK(Tensor::create(DType::kFp32, {c.out, c.in / c.group}, base::CPUAllocator::get(), &s));
    std::mt19937_64 rng(900 + c.group);
    std::uniform_int_distribution<int> qd(-127, 127);
    std::uniform_real_distribution<float> sd(0.002f, 0.02f);
    for (int64_t i = 0; i < q.numel(); ++i) q.ptr<int8_t>()[i] = (int8_t)qd(rng);
    for (int64_t i = 0; i < s.numel(); ++i) s.ptr<float>()[i] = sd(rng);
    std::vector<double> w(q.numel());  // W[o, k] = q[o, k] * scales[o, k / group]
    for (int64_t o = 0; o < c.out; ++o)
      for (int64_t k = 0; k < c.in; ++k)
        w[o * c.in + k] = (double)q.ptr<int8_t>()[o * c.in + k] * s.ptr<float>()[o * (c.in / c.group) + k / c.group];
    const Tensor qg = testutil::to_gpu(q), sg = testutil::to_gpu(s);
    for (DType dt : kActDtypes)
      for (int64_t n : ns) {
        SCOPED_TRACE(std::string("x ") + base::dtype_name(dt) + " int8 W, n " + std::to_string(n) + " in " +
                     std::to_string(c.in) + " group " + std::to_string(c.group));
        const Data x = make_data({n, c.in}, 1000 + n, dt);
        Tensor y = poisoned(dt, {n, c.out});
        settle();
        ASSERT_OK(kernel::matmul(x.gpu, qg, sg, c.group, y, stream()));
        finish();
        const Tol tol = matmul_tol(dt);
        EXPECT_TRUE(testutil::all_close(y, matmul_ref(x.v, w, n, c.in, c.out), tol.atol, tol.rtol));
      }
  }
}

// matmul_swiglu: the fused GEMVs (vector GEMV for float weights and int8 with group % 16 == 0, the
// tensor-core one for int8 with group % 64 == 0, n <= 4) and the unfused path (n 5; int8 group 8: the
// scalar GEMV) against swiglu(x W1^T, x W3^T) in double. hidden 300: partial blocks in both kernels.
// The kernels round gate and up to the activation dtype before swiglu, as the separate kernels would,
// hence three roundings in the tolerance.
TEST_F(CudaKernels, MatmulSwiglu) {
  KP_SKIP_WITHOUT_GPU();
  const int64_t in = 1024, hidden = 300;
  struct Case {
    DType w;
    int group;
  };
  const Case cases[] = {{DType::kFp16, 0}, {DType::kBf16, 0}, {DType::kInt8, 64}, {DType::kInt8, 32}, {DType::kInt8, 8}};
  for (const Case& c : cases) {
    Tensor wh, sh;  // host weights (and scales for int8)
    std::vector<double> w(2 * hidden * in);
    if (c.w == DType::kInt8) {
      ASSERT_OK(Tensor::create(DType::kInt8, {2 * hidden, in}, base::CPUAllocator::get(), &wh));
      ASSERT_OK(Tensor::create(DType::kFp32, {2 * hidden, in / c.group}, base::CPUAllocator::get(), &sh));
      std::mt19937_64 rng(2100 + c.group);
      std::uniform_int_distribution<int> qd(-127, 127);
      std::uniform_real_distribution<float> sd(0.0003f, 0.001f);
      for (int64_t i = 0; i < wh.numel(); ++i) wh.ptr<int8_t>()[i] = (int8_t)qd(rng);
      for (int64_t i = 0; i < sh.numel(); ++i) sh.ptr<float>()[i] = sd(rng);
      for (int64_t o = 0; o < 2 * hidden; ++o)
        for (int64_t k = 0; k < in; ++k)
          w[o * in + k] = (double)wh.ptr<int8_t>()[o * in + k] * sh.ptr<float>()[o * (in / c.group) + k / c.group];
    } else {
      wh = testutil::to_dtype_cpu(testutil::random_cpu({2 * hidden, in}, 2200, -0.1f, 0.1f), c.w);
      w = values_of(wh);
    }
    const Tensor wg = testutil::to_gpu(wh), sg = sh.empty() ? Tensor() : testutil::to_gpu(sh);
    const DType acts[] = {c.w == DType::kInt8 ? DType::kFp16 : c.w, DType::kBf16};
    for (DType dt : acts)
      for (int64_t n : {1, 2, 4, 5}) {
        SCOPED_TRACE(std::string("w ") + base::dtype_name(c.w) + " group " + std::to_string(c.group) + " x " +
                     base::dtype_name(dt) + " n " + std::to_string(n));
        if (c.w != DType::kInt8 && dt != c.w) continue;  // float weights run in their own dtype
        const Data x = make_data({n, in}, 2300 + n, dt);
        Tensor out = poisoned(dt, {n, hidden}), gu = poisoned(dt, {n, 2 * hidden});
        settle();
        ASSERT_OK(kernel::matmul_swiglu(x.gpu, wg, sg, c.group, gu, out, stream()));
        finish();
        const std::vector<double> y = matmul_ref(x.v, w, n, in, 2 * hidden);
        std::vector<double> ref(n * hidden);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < hidden; ++j) {
            const double g = y[i * 2 * hidden + j], u = y[i * 2 * hidden + hidden + j];
            ref[i * hidden + j] = g / (1.0 + std::exp(-g)) * u;
          }
        const Tol tol = matmul_tol(dt);
        EXPECT_TRUE(testutil::all_close(out, ref, 3 * tol.atol, 3 * tol.rtol));
      }
  }
}

// rope_kv_append gives bit for bit what rope then kv_append give (those are checked against float64
// references above): rotated q and k, and the cache rows [pos, pos + n) with every other row untouched.
TEST_F(CudaKernels, RopeKvAppendEqualsRopeThenAppend) {
  KP_SKIP_WITHOUT_GPU();
  const int max_seq = 16;
  struct Case {
    int n_heads, n_kv_heads, hd, n, pos;
  };
  const Case cases[] = {{4, 2, 8, 1, 0}, {4, 2, 64, 3, 5}, {4, 1, 128, 1, 15}, {8, 8, 64, 4, 12}};
  for (DType dt : kActDtypes)
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(base::dtype_name(dt)) + " heads " + std::to_string(c.n_heads) + "/" +
                   std::to_string(c.n_kv_heads) + " hd " + std::to_string(c.hd) + " n " + std::to_string(c.n) +
                   " pos " + std::to_string(c.pos));
      std::vector<double> cs;
      const Tensor cos_sin = make_cos_sin(max_seq, c.hd, &cs);
      const int64_t qw = (int64_t)c.n_heads * c.hd, kw = (int64_t)c.n_kv_heads * c.hd;
      Data q1 = make_data({c.n, qw}, 2400, dt), q2 = make_data({c.n, qw}, 2400, dt);
      Data k1 = make_data({c.n, kw}, 2401, dt), k2 = make_data({c.n, kw}, 2401, dt);
      const Data v = make_data({c.n, kw}, 2402, dt);
      Tensor kc1 = poisoned(dt, {max_seq, kw}), vc1 = poisoned(dt, {max_seq, kw});
      Tensor kc2 = poisoned(dt, {max_seq, kw}), vc2 = poisoned(dt, {max_seq, kw});
      const Tensor pos = int32_gpu({c.pos});
      settle();
      ASSERT_OK(kernel::rope_kv_append(q1.gpu, k1.gpu, v.gpu, kc1, vc1, pos, cos_sin, c.hd, stream()));
      ASSERT_OK(kernel::rope(q2.gpu, k2.gpu, pos, cos_sin, c.hd, stream()));
      ASSERT_OK(kernel::kv_append(k2.gpu, v.gpu, kc2, vc2, pos, stream()));
      finish();
      const std::pair<const Tensor*, const Tensor*> pairs[] = {{&q1.gpu, &q2.gpu}, {&k1.gpu, &k2.gpu}, {&kc1, &kc2},
                                                               {&vc1, &vc2}};
      for (const auto& [a, b] : pairs) {
        Tensor ha, hb;
        ASSERT_OK(Tensor::create(dt, a->shape(), base::CPUAllocator::get(), &ha));
        ASSERT_OK(Tensor::create(dt, b->shape(), base::CPUAllocator::get(), &hb));
        ASSERT_OK(a->copy_to(ha));
        ASSERT_OK(b->copy_to(hb));
        EXPECT_EQ(std::memcmp(ha.data(), hb.data(), ha.nbytes()), 0) << a->shape_string();
      }
    }
}

// A misaligned activation row must take the scalar GEMV and still be right.
TEST_F(CudaKernels, MatmulMisalignedActivations) {
  KP_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes)
    for (int64_t n : {1, 2}) {
      SCOPED_TRACE(std::string(base::dtype_name(dt)) + " n " + std::to_string(n));
      const Data x = make_data({n, 1024}, 1100, dt, -1.f, 1.f, /*misaligned=*/true);
      const Data w = make_data({96, 1024}, 1101, dt);
      Tensor y = poisoned(dt, {n, 96});
      settle();
      ASSERT_OK(kernel::matmul(x.gpu, w.gpu, Tensor(), 0, y, stream()));
      finish();
      const Tol tol = matmul_tol(dt);
      EXPECT_TRUE(testutil::all_close(y, matmul_ref(x.v, w.v, n, 1024, 96), tol.atol, tol.rtol));
    }
}

TEST_F(CudaKernels, Rope) {
  KP_SKIP_WITHOUT_GPU();
  const int max_seq = 16;
  struct Case {
    int n_heads, n_kv_heads, hd, n, pos;
  };
  const Case cases[] = {{4, 2, 8, 1, 0}, {4, 2, 8, 3, 5}, {2, 2, 64, 1, 15}, {4, 2, 64, 3, 5}, {4, 1, 128, 3, 13}};
  for (DType dt : kActDtypes)
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(base::dtype_name(dt)) + " heads " + std::to_string(c.n_heads) + "/" +
                   std::to_string(c.n_kv_heads) + " hd " + std::to_string(c.hd) + " n " + std::to_string(c.n) +
                   " pos " + std::to_string(c.pos));
      std::vector<double> cs;
      const Tensor cos_sin = make_cos_sin(max_seq, c.hd, &cs);
      const int64_t qw = (int64_t)c.n_heads * c.hd, kw = (int64_t)c.n_kv_heads * c.hd;
      Data q = make_data({c.n, qw}, 1200 + c.hd, dt);
      Data k = make_data({c.n, kw}, 1300 + c.hd, dt);
      const Tensor pos = int32_gpu({c.pos});
      settle();
      ASSERT_OK(kernel::rope(q.gpu, k.gpu, pos, cos_sin, c.hd, stream()));
      finish();
      rope_ref(q.v, c.n, qw, c.hd, c.pos, cs);
      rope_ref(k.v, c.n, kw, c.hd, c.pos, cs);
      const Tol tol = tol_for(dt);
      EXPECT_TRUE(testutil::all_close(q.gpu, q.v, tol.atol, tol.rtol));
      EXPECT_TRUE(testutil::all_close(k.gpu, k.v, tol.atol, tol.rtol));
    }
}

TEST_F(CudaKernels, KvAppend) {
  KP_SKIP_WITHOUT_GPU();
  const int64_t max_seq = 16;
  struct Case {
    int64_t kv_dim, n;
    int pos;
    bool fits;
  };
  // kv_dim 6 in fp16/bf16 is 12 bytes a row: the element-wise copy. pos 15 with 3 rows does not fit
  // and must write nothing.
  const Case cases[] = {{128, 1, 0, true}, {128, 3, 7, true}, {128, 1, 15, true}, {6, 3, 7, true}, {128, 3, 15, false}};
  for (DType dt : kActDtypes)
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(base::dtype_name(dt)) + " kv_dim " + std::to_string(c.kv_dim) + " n " +
                   std::to_string(c.n) + " pos " + std::to_string(c.pos));
      const Data k = make_data({c.n, c.kv_dim}, 1400, dt);
      const Data v = make_data({c.n, c.kv_dim}, 1401, dt);
      Tensor kc = poisoned(dt, {max_seq, c.kv_dim}), vc = poisoned(dt, {max_seq, c.kv_dim});
      const Tensor pos = int32_gpu({c.pos});
      settle();
      ASSERT_OK(kernel::kv_append(k.gpu, v.gpu, kc, vc, pos, stream()));
      finish();
      for (int which = 0; which < 2; ++which) {
        const Tensor& cache = which == 0 ? kc : vc;
        const Data& src = which == 0 ? k : v;
        Tensor host;
        ASSERT_OK(Tensor::create(dt, cache.shape(), base::CPUAllocator::get(), &host));
        ASSERT_OK(cache.copy_to(host));
        const Tensor srch = testutil::to_dtype_cpu(testutil::to_fp32_cpu(src.gpu), dt);
        const size_t row_bytes = c.kv_dim * base::dtype_size(dt);
        const auto* bytes = static_cast<const uint8_t*>(host.data());
        for (int64_t r = 0; r < max_seq; ++r) {
          const bool written = c.fits && r >= c.pos && r < c.pos + c.n;
          if (written) {
            EXPECT_EQ(std::memcmp(bytes + r * row_bytes, static_cast<const uint8_t*>(srch.data()) + (r - c.pos) * row_bytes,
                                  row_bytes),
                      0)
                << (which ? "v" : "k") << " cache row " << r << " differs from the appended row";
          } else {
            EXPECT_TRUE(std::all_of(bytes + r * row_bytes, bytes + (r + 1) * row_bytes, [](uint8_t b) { return b == 0xFF; }))
                << (which ? "v" : "k") << " cache row " << r << " was written";
          }
        }
      }
    }
}

TEST_F(CudaKernels, KvAppendRejectsOtherCacheDtype) {
  KP_SKIP_WITHOUT_GPU();
  const Data k = make_data({1, 64}, 1500, DType::kFp32);
  Tensor kc = poisoned(DType::kFp16, {8, 64}), vc = poisoned(DType::kFp16, {8, 64});
  const Tensor pos = int32_gpu({0});
  settle();
  const base::Status st = kernel::kv_append(k.gpu, k.gpu, kc, vc, pos, stream());
  EXPECT_EQ(st.code(), base::StatusCode::kInvalidArgument) << st.message();
}

// Runs attention for n queries at positions pos .. pos + n - 1 over a cache whose rows [0, pos + n) hold
// random data and whose later rows are NaN (the kernel must never read them), against attention_ref.
void check_attention(kernel::Stream stream, DType dt, int n_heads, int n_kv_heads, int hd, int n, int pos,
                     int max_seq, uint64_t seed) {
  SCOPED_TRACE(std::string(base::dtype_name(dt)) + " heads " + std::to_string(n_heads) + "/" +
               std::to_string(n_kv_heads) + " hd " + std::to_string(hd) + " n " + std::to_string(n) + " pos " +
               std::to_string(pos) + " max_seq " + std::to_string(max_seq));
  const int64_t kv_dim = (int64_t)n_kv_heads * hd, live = pos + n;
  ASSERT_LE(live, max_seq) << "test case does not fit its cache";
  // q in [-3, 3] against k in [-1, 1] gives scores of standard deviation ~1: a peaked, non-trivial softmax.
  const Data q = make_data({n, (int64_t)n_heads * hd}, seed, dt, -3.f, 3.f);
  const Data k = make_data({live, kv_dim}, seed + 1, dt);
  const Data v = make_data({live, kv_dim}, seed + 2, dt);
  Tensor kc = poisoned(dt, {max_seq, kv_dim}), vc = poisoned(dt, {max_seq, kv_dim});
  Tensor kc_live = kc.slice_rows(0, live), vc_live = vc.slice_rows(0, live);
  ASSERT_OK(k.gpu.copy_to(kc_live));
  ASSERT_OK(v.gpu.copy_to(vc_live));
  const int64_t scratch_n = kernel::attention_scratch_floats(n, n_heads, hd, max_seq, base::DeviceType::kCUDA);
  Tensor scratch = poisoned(DType::kFp32, {std::max<int64_t>(scratch_n, 1)});
  Tensor out = poisoned(dt, {n, (int64_t)n_heads * hd});
  const Tensor pos_t = int32_gpu({pos});
  ASSERT_CUDA(cudaDeviceSynchronize());
  ASSERT_OK(kernel::attention(q.gpu, kc, vc, pos_t, n_heads, n_kv_heads, hd, scratch, out, stream));
  ASSERT_CUDA(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  ASSERT_CUDA(cudaGetLastError());
  // Outputs are convex combinations of v in [-1, 1]; fp32 allows for expf and long fp32 sums.
  const Tol tol = dt == DType::kFp32 ? Tol{2e-5, 1e-4} : dt == DType::kFp16 ? Tol{2e-3, 2e-3} : Tol{1e-2, 1e-2};
  EXPECT_TRUE(testutil::all_close(out, attention_ref(q.v, k.v, v.v, pos, n, n_heads, n_kv_heads, hd), tol.atol,
                                  tol.rtol));
}

TEST_F(CudaKernels, AttentionPrefill) {
  KP_SKIP_WITHOUT_GPU();
  struct Case {
    int n_heads, n_kv_heads, hd, n, pos;
  };
  const Case cases[] = {
      {8, 4, 8, 3, 0},     // stories260K shape
      {8, 4, 8, 17, 5},
      {4, 4, 64, 17, 0},   // MHA
      {4, 4, 64, 40, 30},  // rows of one block straddle key tiles
      {8, 2, 128, 17, 5},  // GQA, group 4
      {8, 1, 32, 3, 33},   // group 8
      {6, 2, 16, 9, 2},    // group 3: blocks mix queries
  };
  for (DType dt : kActDtypes)
    for (const Case& c : cases) check_attention(stream(), dt, c.n_heads, c.n_kv_heads, c.hd, c.n, c.pos, 128, 1600);
}

// A prefill chunk after a long context: 64 queries at positions 3000 .. 3063.
TEST_F(CudaKernels, AttentionPrefillLongContext) {
  KP_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) check_attention(stream(), dt, 8, 2, 128, 64, 3000, 4096, 1700);
}

// Decode. fp32 and head_dim 8 .. 32 take the CUDA-core kernel, fp16 / bf16 at 64 and 128 the tensor-core
// one (AttentionFlashDecode has its own edges). The CUDA-core kernel splits the keys [0, pos] over a
// cluster of 8 blocks (a cache of 4096 rows), each block's warps
// taking batches of 8 or 16 keys (fp32 / 16-bit, head_dim 128) up to 256 (head_dim 8). Positions where
// some blocks or warps get no key (0, 1, 31), where chunks end mid-batch (127 .. 129, 2047, 2048), a long
// context and the last row. Heads per block: 1 (MHA), 2 (group 2; group 3: two blocks, one half
// empty; groups 4 and 12 with few KV heads, Llama-3-8B's 32/8 among them), 4 with 8 warps (group 4
// with 16 KV heads).
TEST_F(CudaKernels, AttentionDecode) {
  KP_SKIP_WITHOUT_GPU();
  struct Case {
    int n_heads, n_kv_heads, hd;
  };
  const Case cases[] = {{8, 2, 128}, {4, 4, 64}, {8, 4, 8},     {12, 1, 16},
                        {6, 2, 32},  {32, 8, 128}, {64, 16, 64}, {64, 16, 128}};
  for (DType dt : kActDtypes)
    for (const Case& c : cases)
      for (int pos : {0, 1, 31, 32, 127, 128, 129, 2047, 2048, 3000, 4095})
        check_attention(stream(), dt, c.n_heads, c.n_kv_heads, c.hd, 1, pos, 4096, 1800 + pos);
}

// Short caches get fewer blocks per cluster (64 rows: 2, 128: 4); every row must still be reached.
TEST_F(CudaKernels, AttentionDecodeShortCache) {
  KP_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes)
    for (int max_seq : {16, 64, 128})
      for (int pos : {0, 5, max_seq / 2, max_seq - 1}) {
        check_attention(stream(), dt, 4, 4, 64, 1, pos, max_seq, 1900 + pos);
        check_attention(stream(), dt, 8, 2, 128, 1, pos, max_seq, 1950 + pos);
      }
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core attention (fp16 / bf16, head_dim 64 and 128: flash_attention.cu) and the paged layouts.

const DType kFlashDtypes[] = {DType::kFp16, DType::kBf16};

// Tolerance of attention outputs (convex combinations of v in [-1, 1]). The tensor-core kernels round
// the softmax weights to the activation dtype before P V (FlashAttention-2 does the same), which adds
// about half an ulp of relative error per weight; averaged over the keys it stays inside these.
Tol attention_tol(DType dt) {
  return dt == DType::kFp32 ? Tol{2e-5, 1e-4} : dt == DType::kFp16 ? Tol{2e-3, 2e-3} : Tol{1e-2, 1e-2};
}

// Prefill chunks through the flash kernel: n = 2 .. 2048 queries, chunks after a context (pos > 0,
// tile-aligned or not), MHA and groups 3, 4 and 8, both head sizes. Row blocks are 64 (query, head)
// rows and key tiles 64 keys, so n * group around multiples of 64 and pos + n around multiples of 64
// are the causal edges: a tile that some rows of a block see and others do not.
TEST_F(CudaKernels, AttentionFlashPrefill) {
  KP_SKIP_WITHOUT_GPU();
  struct Case {
    int n_heads, n_kv_heads, hd, n, pos, max_seq;
  };
  const Case cases[] = {
      {4, 4, 64, 2, 0, 64},       {4, 4, 128, 17, 0, 64},     {4, 4, 128, 64, 0, 128},
      {4, 4, 64, 65, 0, 128},     {2, 2, 128, 130, 63, 256},  {8, 2, 128, 16, 64, 128},   // group 4
      {8, 2, 64, 31, 100, 256},   {16, 2, 128, 8, 5, 64},     {16, 2, 64, 9, 55, 128},    // group 8
      {6, 2, 128, 21, 11, 64},    {8, 1, 64, 200, 1000, 1280},                             // group 3, 8
      {4, 1, 128, 512, 1536, 2048},                                                       // a chunk at 1536
      {2, 2, 64, 2048, 0, 2048},  {8, 1, 64, 2048, 0, 2048},                             // a whole 2048 prompt
  };
  uint64_t seed = 3000;
  for (DType dt : kFlashDtypes)
    for (const Case& c : cases) check_attention(stream(), dt, c.n_heads, c.n_kv_heads, c.hd, c.n, c.pos, c.max_seq, seed++);
}

// Decode through the split-K kernel: the chunk count is fixed by the cache length (here up to 64 with
// a 32768-row cache) and the chunk length by the position, so positions around multiples of the
// 64-key tile and of the chunk, and the last row, are the edges; a single chunk writes the output
// itself, several go through the combine kernel.
TEST_F(CudaKernels, AttentionFlashDecode) {
  KP_SKIP_WITHOUT_GPU();
  struct Case {
    int n_heads, n_kv_heads, hd, max_seq;
  };
  // Caches longer than 4,096 rows: shorter contiguous ones decode on the CUDA-core kernel (attention.cu).
  const Case cases[] = {{32, 32, 128, 8192}, {8, 2, 64, 8192}, {32, 8, 128, 8192}, {16, 2, 128, 4352},
                        {40, 2, 64, 8192}};  // group 20: two row blocks of 16 heads, the second with 4
  for (DType dt : kFlashDtypes)
    for (const Case& c : cases)
      for (int pos : {0, 15, 16, 63, 64, 65, 127, 1000, 2047, 4095})
        if (pos < c.max_seq)
          check_attention(stream(), dt, c.n_heads, c.n_kv_heads, c.hd, 1, pos, c.max_seq, 3100 + pos);
}

// Llama-3-8B's attention shape at the end of a 32K context (and early in it, with the same cache).
TEST_F(CudaKernels, AttentionFlashDecodeLongContext) {
  KP_SKIP_WITHOUT_GPU();
  for (DType dt : kFlashDtypes)
    for (int pos : {16, 32767}) check_attention(stream(), dt, 32, 8, 128, 1, pos, 32768, 3200 + pos);
}

// A pool of pages holding `batch` sequences' K and V rows at scrambled page ids; every other row of the
// pool is NaN, so reading a row outside a sequence's pages (or past its length) shows in the output.
struct PagePool {
  Tensor k, v;                 // dt [n_pages, page_size, kv_dim] on the GPU
  std::vector<int32_t> table;  // [batch, max_pages]; entries past a sequence's pages name a NaN page
  int max_pages = 0;
};

PagePool make_pool(DType dt, const std::vector<std::vector<double>>& ks, const std::vector<std::vector<double>>& vs,
                   int64_t kv_dim, int page_size, uint64_t seed) {
  const int batch = (int)ks.size();
  std::vector<int> pages(batch);
  int total = 2;  // two pages no sequence owns
  PagePool pool;
  for (int b = 0; b < batch; ++b) {
    const int64_t len = (int64_t)ks[b].size() / kv_dim;
    pages[b] = (int)((len + page_size - 1) / page_size);
    total += pages[b];
    pool.max_pages = std::max(pool.max_pages, pages[b] + 1);
  }
  std::vector<int32_t> perm(total);
  for (int i = 0; i < total; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), std::mt19937(seed));
  Tensor hk, hv;
  EXPECT_TRUE(Tensor::create(DType::kFp32, {total, page_size, kv_dim}, base::CPUAllocator::get(), &hk).ok());
  EXPECT_TRUE(Tensor::create(DType::kFp32, {total, page_size, kv_dim}, base::CPUAllocator::get(), &hv).ok());
  std::fill(hk.ptr<float>(), hk.ptr<float>() + hk.numel(), std::nanf(""));
  std::fill(hv.ptr<float>(), hv.ptr<float>() + hv.numel(), std::nanf(""));
  pool.table.assign((size_t)batch * pool.max_pages, perm[total - 1]);
  int next = 0;
  for (int b = 0; b < batch; ++b) {
    for (int j = 0; j < pages[b]; ++j) pool.table[(size_t)b * pool.max_pages + j] = perm[next++];
    const int64_t len = (int64_t)ks[b].size() / kv_dim;
    for (int64_t t = 0; t < len; ++t) {
      const int64_t row = (int64_t)pool.table[(size_t)b * pool.max_pages + t / page_size] * page_size + t % page_size;
      for (int64_t d = 0; d < kv_dim; ++d) {
        hk.ptr<float>()[row * kv_dim + d] = (float)ks[b][t * kv_dim + d];
        hv.ptr<float>()[row * kv_dim + d] = (float)vs[b][t * kv_dim + d];
      }
    }
  }
  pool.k = testutil::to_gpu(testutil::to_dtype_cpu(hk, dt));
  pool.v = testutil::to_gpu(testutil::to_dtype_cpu(hv, dt));
  return pool;
}

using testutil::attention_decode_batch;
using testutil::attention_paged;

// attention_paged: n queries at pos .. pos + n - 1 of one sequence whose pages are scrambled.
void check_attention_paged(kernel::Stream stream, DType dt, int n_heads, int n_kv_heads, int hd, int n, int pos,
                           int page_size, uint64_t seed) {
  SCOPED_TRACE(std::string("paged ") + base::dtype_name(dt) + " heads " + std::to_string(n_heads) + "/" +
               std::to_string(n_kv_heads) + " hd " + std::to_string(hd) + " n " + std::to_string(n) + " pos " +
               std::to_string(pos) + " page " + std::to_string(page_size));
  const int64_t kv_dim = (int64_t)n_kv_heads * hd, live = pos + n;
  const Data q = make_data({n, (int64_t)n_heads * hd}, seed, dt, -3.f, 3.f);
  const Data k = make_data({live, kv_dim}, seed + 1, dt);
  const Data v = make_data({live, kv_dim}, seed + 2, dt);
  PagePool pool = make_pool(dt, {k.v}, {v.v}, kv_dim, page_size, seed + 3);
  const Tensor table = int32_gpu(pool.table);
  const int64_t max_len = (int64_t)pool.max_pages * page_size;
  const int64_t scratch_n = kernel::attention_scratch_floats(n, n_heads, hd, max_len, base::DeviceType::kCUDA);
  Tensor scratch = poisoned(DType::kFp32, {std::max<int64_t>(scratch_n, 1)});
  Tensor out = poisoned(dt, {n, (int64_t)n_heads * hd});
  const Tensor pos_t = int32_gpu({pos});
  ASSERT_CUDA(cudaDeviceSynchronize());
  ASSERT_OK(attention_paged(q.gpu, pool.k, pool.v, table, pos_t, n_heads, n_kv_heads, hd, scratch, out, stream));
  ASSERT_CUDA(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  ASSERT_CUDA(cudaGetLastError());
  const Tol tol = attention_tol(dt);
  EXPECT_TRUE(testutil::all_close(out, attention_ref(q.v, k.v, v.v, pos, n, n_heads, n_kv_heads, hd), tol.atol,
                                  tol.rtol));
}

// Pages of 1 (every row its own page), 7 (pages straddle the 64-key tiles) and 16 rows; prefill and
// decode; the tensor-core kernels (fp16 / bf16, head_dim 64 / 128) and the CUDA-core ones (fp32,
// head_dim 32).
TEST_F(CudaKernels, AttentionPaged) {
  KP_SKIP_WITHOUT_GPU();
  struct Case {
    int n_heads, n_kv_heads, hd, n, pos, page_size;
  };
  const Case cases[] = {{4, 4, 128, 70, 0, 16},  {8, 2, 64, 33, 100, 7}, {8, 1, 128, 1, 300, 16},
                        {4, 4, 64, 1, 64, 1},    {8, 2, 128, 1, 1000, 7}, {8, 2, 32, 20, 40, 16},
                        {4, 4, 32, 1, 77, 7}};
  uint64_t seed = 3300;
  for (DType dt : kActDtypes)
    for (const Case& c : cases) check_attention_paged(stream(), dt, c.n_heads, c.n_kv_heads, c.hd, c.n, c.pos, c.page_size, seed++);
}

// attention_decode_batch: sequences of different lengths (one key, a tile edge, a long one) sharing one
// scrambled pool; each row of the output must match its own sequence's reference.
TEST_F(CudaKernels, AttentionDecodeBatch) {
  KP_SKIP_WITHOUT_GPU();
  const std::vector<int> lens = {1, 17, 64, 65, 3000};
  struct Case {
    int n_heads, n_kv_heads, hd, page_size;
  };
  const Case cases[] = {{8, 2, 128, 16}, {4, 4, 64, 7}, {32, 8, 128, 64}, {8, 2, 32, 16}};
  uint64_t seed = 3400;
  for (DType dt : kActDtypes)
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(base::dtype_name(dt)) + " heads " + std::to_string(c.n_heads) + "/" +
                   std::to_string(c.n_kv_heads) + " hd " + std::to_string(c.hd) + " page " + std::to_string(c.page_size));
      const int batch = (int)lens.size();
      const int64_t width = (int64_t)c.n_heads * c.hd, kv_dim = (int64_t)c.n_kv_heads * c.hd;
      const Data q = make_data({batch, width}, seed++, dt, -3.f, 3.f);
      std::vector<std::vector<double>> ks, vs;
      for (int len : lens) {
        ks.push_back(make_data({len, kv_dim}, seed++, dt).v);
        vs.push_back(make_data({len, kv_dim}, seed++, dt).v);
      }
      PagePool pool = make_pool(dt, ks, vs, kv_dim, c.page_size, seed++);
      Tensor table_h;
      ASSERT_OK(Tensor::create(DType::kInt32, {batch, pool.max_pages}, base::CPUAllocator::get(), &table_h));
      std::copy(pool.table.begin(), pool.table.end(), table_h.ptr<int32_t>());
      const Tensor table = testutil::to_gpu(table_h);
      const Tensor seq_lens = int32_gpu(std::vector<int32_t>(lens.begin(), lens.end()));
      const int64_t max_len = (int64_t)pool.max_pages * c.page_size;
      const int64_t scratch_n =
          kernel::attention_batch_scratch_floats(batch, c.n_heads, c.hd, max_len, base::DeviceType::kCUDA);
      Tensor scratch = poisoned(DType::kFp32, {std::max<int64_t>(scratch_n, 1)});
      Tensor out = poisoned(dt, {batch, width});
      ASSERT_CUDA(cudaDeviceSynchronize());
      ASSERT_OK(attention_decode_batch(q.gpu, pool.k, pool.v, table, seq_lens, c.n_heads, c.n_kv_heads, c.hd,
                                               scratch, out, stream()));
      finish();
      std::vector<double> ref;
      for (int b = 0; b < batch; ++b) {
        const std::vector<double> qb(q.v.begin() + b * width, q.v.begin() + (b + 1) * width);
        const std::vector<double> rb = attention_ref(qb, ks[b], vs[b], lens[b] - 1, 1, c.n_heads, c.n_kv_heads, c.hd);
        ref.insert(ref.end(), rb.begin(), rb.end());
      }
      const Tol tol = attention_tol(dt);
      EXPECT_TRUE(testutil::all_close(out, ref, tol.atol, tol.rtol));
    }
}

TEST_F(CudaKernels, AttentionPagedRejectsBadTables) {
  KP_SKIP_WITHOUT_GPU();
  const int hd = 64;
  const Data q = make_data({2, 2 * hd}, 3500, DType::kFp16);
  Tensor kp = poisoned(DType::kFp16, {4, 16, hd}), vp = poisoned(DType::kFp16, {4, 16, hd});
  Tensor scratch = poisoned(DType::kFp32, {1 << 16});
  Tensor out = poisoned(DType::kFp16, {2, 2 * hd});
  const Tensor pos = int32_gpu({0}), lens = int32_gpu({1, 1});
  const Tensor float_table = poisoned(DType::kFp32, {2});
  settle();
  EXPECT_FALSE(attention_paged(q.gpu, kp, vp, float_table, pos, 2, 1, hd, scratch, out, stream()).ok());
  const Tensor table3 = int32_gpu({0, 1, 2});  // 3 ids cannot be 2 sequences' tables
  EXPECT_FALSE(attention_decode_batch(q.gpu, kp, vp, table3, lens, 2, 1, hd, scratch, out, stream()).ok());
}

TEST_F(CudaKernels, AttentionRejectsUnsupportedHeadDim) {
  KP_SKIP_WITHOUT_GPU();
  const int hd = 96, max_seq = 8;
  const Data q = make_data({1, 2 * hd}, 1900, DType::kFp16);
  Tensor kc = poisoned(DType::kFp16, {max_seq, hd}), vc = poisoned(DType::kFp16, {max_seq, hd});
  Tensor scratch = poisoned(
      DType::kFp32, {std::max<int64_t>(1, kernel::attention_scratch_floats(1, 2, hd, max_seq, base::DeviceType::kCUDA))});
  Tensor out = poisoned(DType::kFp16, {1, 2 * hd});
  const Tensor pos = int32_gpu({0});
  settle();
  const base::Status st = kernel::attention(q.gpu, kc, vc, pos, 2, 1, hd, scratch, out, stream());
  EXPECT_EQ(st.code(), base::StatusCode::kInvalidArgument) << st.message();
}

TEST_F(CudaKernels, Swiglu) {
  KP_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes)
    for (int64_t cols : {771, 1024})
      for (bool misaligned : {false, true}) {
        SCOPED_TRACE(std::string(base::dtype_name(dt)) + " cols " + std::to_string(cols) + (misaligned ? " misaligned" : ""));
        const Data g = make_data({3, cols}, 2000 + cols, dt, -6.f, 6.f, misaligned);
        const Data u = make_data({3, cols}, 2100 + cols, dt, -2.f, 2.f);
        Tensor out = poisoned(dt, {3, cols});
        settle();
        ASSERT_OK(kernel::swiglu(g.gpu, u.gpu, out, stream()));
        finish();
        std::vector<double> ref(g.v.size());
        for (size_t i = 0; i < ref.size(); ++i) ref[i] = g.v[i] / (1.0 + std::exp(-g.v[i])) * u.v[i];
        const Tol tol = tol_for(dt);
        EXPECT_TRUE(testutil::all_close(out, ref, tol.atol, tol.rtol));
      }
}

TEST_F(CudaKernels, Add) {
  KP_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes)
    for (int64_t cols : {771, 1024})
      for (bool in_place : {false, true}) {
        SCOPED_TRACE(std::string(base::dtype_name(dt)) + " cols " + std::to_string(cols) + (in_place ? " in place" : ""));
        Data a = make_data({3, cols}, 2200 + cols, dt, -4.f, 4.f);
        const Data b = make_data({3, cols}, 2300 + cols, dt);
        Tensor out = in_place ? a.gpu : poisoned(dt, {3, cols});
        settle();
        ASSERT_OK(kernel::add(a.gpu, b.gpu, out, stream()));
        finish();
        std::vector<double> ref(a.v.size());
        for (size_t i = 0; i < ref.size(); ++i) ref[i] = round_to(dt, a.v[i] + b.v[i]);
        EXPECT_TRUE(testutil::all_close(out, ref, 0, 0));  // one fp32 add, one rounding: exact
      }
}

TEST_F(CudaKernels, Convert) {
  KP_SKIP_WITHOUT_GPU();
  for (DType from : kActDtypes)
    for (DType to : kActDtypes)
      for (int64_t cols : {771, 1024})
        for (bool misaligned : {false, true}) {
          SCOPED_TRACE(std::string(base::dtype_name(from)) + " -> " + base::dtype_name(to) + " cols " +
                       std::to_string(cols) + (misaligned ? " misaligned" : ""));
          const Data in = make_data({2, cols}, 2400 + cols, from, -300.f, 300.f, misaligned);
          Tensor out = poisoned(to, {2, cols});
          settle();
          ASSERT_OK(kernel::convert(in.gpu, out, stream()));
          finish();
          EXPECT_TRUE(testutil::all_close(out, round_all(to, in.v), 0, 0));  // round to nearest even: exact
        }
}

TEST_F(CudaKernels, Softmax) {
  KP_SKIP_WITHOUT_GPU();
  for (int64_t cols : {771, 32000}) {
    SCOPED_TRACE("cols " + std::to_string(cols));
    Data x = make_data({3, cols}, 2500 + cols, DType::kFp32, -20.f, 20.f);
    settle();
    ASSERT_OK(kernel::softmax(x.gpu, stream()));
    finish();
    std::vector<double> ref(x.v.size());
    for (int64_t r = 0; r < 3; ++r) {
      const double* row = &x.v[r * cols];
      const double mx = *std::max_element(row, row + cols);
      double sum = 0;
      for (int64_t i = 0; i < cols; ++i) sum += std::exp(row[i] - mx);
      for (int64_t i = 0; i < cols; ++i) ref[r * cols + i] = std::exp(row[i] - mx) / sum;
    }
    // Probabilities span e^-40 .. 1: relative error of expf and the fp32 sum, tiny atol.
    EXPECT_TRUE(testutil::all_close(x.gpu, ref, 1e-9, 1e-5));
  }
}

TEST_F(CudaKernels, Argmax) {
  KP_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes)
    for (int64_t cols : {771, 32000}) {
      SCOPED_TRACE(std::string(base::dtype_name(dt)) + " cols " + std::to_string(cols));
      Tensor f = testutil::random_cpu({4, cols}, 2600 + cols, -1.f, 1.f);
      float* p = f.ptr<float>();
      p[1 * cols + 700] = 5.f;  // row 1: a tie, the lower index wins
      p[1 * cols + 5] = 5.f;
      std::fill(p + 2 * cols, p + 3 * cols, 0.25f);  // row 2: all equal -> 0
      p[3 * cols + cols - 1] = 7.f;                   // row 3: the last element
      const Data x = upload_host(testutil::to_dtype_cpu(f, dt), false);
      Tensor out = poisoned(DType::kInt32, {4});
      settle();
      ASSERT_OK(kernel::argmax(x.gpu, out, stream()));
      finish();
      const std::vector<int32_t> got = int32_host(out);
      for (int64_t r = 0; r < 4; ++r) {
        // Reference on the rounded values (bf16 rounding makes ties common), lowest index on ties.
        int64_t best = 0;
        for (int64_t i = 1; i < cols; ++i)
          if (x.v[r * cols + i] > x.v[r * cols + best]) best = i;
        EXPECT_EQ(got[r], best) << "row " << r;
      }
      EXPECT_EQ(got[1], 5);
      EXPECT_EQ(got[2], 0);
      EXPECT_EQ(got[3], cols - 1);
    }
}

// One decode step (rope -> kv_append -> attention -> matmul, n = 1) captured once in a CUDA graph and
// replayed at several positions, pos being updated on the device between replays: every replay must
// match a reference step at that position, and the results must change with it.
TEST_F(CudaKernels, DecodeStepGraphReplay) {
  KP_SKIP_WITHOUT_GPU();
  const int n_heads = 4, n_kv_heads = 2, hd = 64, max_seq = 256, n_out = 96;
  const int64_t dim = n_heads * hd, kv_dim = n_kv_heads * hd;
  for (DType dt : {DType::kFp32, DType::kBf16}) {
    SCOPED_TRACE(base::dtype_name(dt));
    std::vector<double> cs;
    const Tensor cos_sin = make_cos_sin(max_seq, hd, &cs);
    // The whole cache holds data, so replays may jump between positions; each writes its own row.
    Data kc = make_data({max_seq, kv_dim}, 2700, dt), vc = make_data({max_seq, kv_dim}, 2701, dt);
    const Data w = make_data({n_out, dim}, 2702, dt);
    Tensor q = poisoned(dt, {1, dim}), k = poisoned(dt, {1, kv_dim}), v = poisoned(dt, {1, kv_dim});
    Tensor pos = poisoned(DType::kInt32, {1});
    Tensor att = poisoned(dt, {1, dim}), y = poisoned(dt, {1, n_out});
    Tensor scratch = poisoned(
        DType::kFp32,
        {std::max<int64_t>(1, kernel::attention_scratch_floats(1, n_heads, hd, max_seq, base::DeviceType::kCUDA))});
    settle();

    const cudaStream_t s = static_cast<cudaStream_t>(stream());
    cudaGraph_t graph_raw = nullptr;
    ASSERT_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    base::Status st = kernel::rope(q, k, pos, cos_sin, hd, s);
    if (st.ok()) st = kernel::kv_append(k, v, kc.gpu, vc.gpu, pos, s);
    if (st.ok()) st = kernel::attention(q, kc.gpu, vc.gpu, pos, n_heads, n_kv_heads, hd, scratch, att, s);
    if (st.ok()) st = kernel::matmul(att, w.gpu, Tensor(), 0, y, s);
    const cudaError_t end = cudaStreamEndCapture(s, &graph_raw);  // always leave capture mode
    std::unique_ptr<CUgraph_st, decltype(&cudaGraphDestroy)> graph(graph_raw, &cudaGraphDestroy);
    ASSERT_OK(st);
    ASSERT_CUDA(end);
    cudaGraphExec_t exec_raw = nullptr;
    ASSERT_CUDA(cudaGraphInstantiate(&exec_raw, graph.get(), 0));
    std::unique_ptr<CUgraphExec_st, decltype(&cudaGraphExecDestroy)> exec(exec_raw, &cudaGraphExecDestroy);

    std::vector<double> prev_y;
    uint64_t seed = 2800;
    for (int32_t p : {0, 100, 127, 128, 200, 255}) {
      SCOPED_TRACE("pos " + std::to_string(p));
      const Tensor hq = testutil::to_dtype_cpu(testutil::random_cpu({1, dim}, seed++, -3.f, 3.f), dt);
      const Tensor hk = testutil::to_dtype_cpu(testutil::random_cpu({1, kv_dim}, seed++), dt);
      const Tensor hv = testutil::to_dtype_cpu(testutil::random_cpu({1, kv_dim}, seed++), dt);
      ASSERT_CUDA(cudaMemcpyAsync(q.data(), hq.data(), hq.nbytes(), cudaMemcpyHostToDevice, s));
      ASSERT_CUDA(cudaMemcpyAsync(k.data(), hk.data(), hk.nbytes(), cudaMemcpyHostToDevice, s));
      ASSERT_CUDA(cudaMemcpyAsync(v.data(), hv.data(), hv.nbytes(), cudaMemcpyHostToDevice, s));
      ASSERT_CUDA(cudaMemcpyAsync(pos.data(), &p, sizeof(p), cudaMemcpyHostToDevice, s));
      ASSERT_CUDA(cudaMemsetAsync(att.data(), 0xFF, att.nbytes(), s));
      ASSERT_CUDA(cudaMemsetAsync(y.data(), 0xFF, y.nbytes(), s));
      ASSERT_CUDA(cudaGraphLaunch(exec.get(), s));
      ASSERT_CUDA(cudaStreamSynchronize(s));

      // Reference step. The kernels store rotated q and k in the activation dtype and attention's
      // output too; the reference rounds at the same places.
      std::vector<double> rq = values_of(hq), rk = values_of(hk);
      const std::vector<double> rv = values_of(hv);
      rope_ref(rq, 1, dim, hd, p, cs);
      rope_ref(rk, 1, kv_dim, hd, p, cs);
      rq = round_all(dt, rq);
      rk = round_all(dt, rk);
      std::copy(rk.begin(), rk.end(), kc.v.begin() + p * kv_dim);
      std::copy(rv.begin(), rv.end(), vc.v.begin() + p * kv_dim);
      const std::vector<double> ref_att = attention_ref(rq, kc.v, vc.v, p, 1, n_heads, n_kv_heads, hd);
      const std::vector<double> ref_y = matmul_ref(round_all(dt, ref_att), w.v, 1, dim, n_out);

      // bf16: a rotated value may round to the neighbouring bf16 number (fp32 vs float64 rotation), and
      // such one-ulp differences feed through attention into y.
      const Tol t_att = dt == DType::kFp32 ? Tol{2e-5, 1e-4} : Tol{1e-2, 1e-2};
      const Tol t_y = dt == DType::kFp32 ? Tol{1e-4, 1e-4} : Tol{3e-2, 1.5e-2};
      EXPECT_TRUE(testutil::all_close(kc.gpu.slice_rows(p, p + 1), rk, t_att.atol, t_att.rtol));
      EXPECT_TRUE(testutil::all_close(att, ref_att, t_att.atol, t_att.rtol));
      const std::vector<double> got_y = values_of(y);
      EXPECT_TRUE(testutil::all_close(y, ref_y, t_y.atol, t_y.rtol));
      if (!prev_y.empty()) {
        double diff = 0;
        for (size_t i = 0; i < got_y.size(); ++i) diff = std::max(diff, std::fabs(got_y[i] - prev_y[i]));
        EXPECT_GT(diff, 0.1) << "the replay at a new position gave (nearly) the previous result";
      }
      prev_y = got_y;
    }
  }
}

}  // namespace
