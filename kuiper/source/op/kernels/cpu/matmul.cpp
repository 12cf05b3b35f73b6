// y = x W^T for fp32 weights (OpenBLAS) and int8 group-wise weights (dequantised on the fly).
#include <cblas.h>

#include "cpu_kernels.h"

namespace kernel::cpu {
namespace {

// x: fp32 [n, in]; W: fp32 [out, in]; y: fp32 [n, out]. One BLAS call for the whole batch: a GEMV
// for decode (n == 1, where GEMM's panel packing is pure overhead), otherwise a GEMM with W transposed.
void matmul_fp32(const float* x, const float* w, int64_t n, int64_t in, int64_t out, float* y) {
  if (n == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)out, (int)in, 1.f, w, (int)in, x, 1, 0.f, y, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)out, (int)in, 1.f, x, (int)in, w, (int)in,
              0.f, y, (int)out);
}

// Dot products of one quantisation group with one token row (dot_q8) or four (dot_q8_x4, which
// widens each int8 weight once for all four). `omp simd` lets the compiler split the fp32 sums into
// vector lanes (it may not reassociate without -ffast-math); the order is fixed at compile time, so
// results are the same on every run and for every thread count.
inline float dot_q8(const int8_t* q, const float* x, int len) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int k = 0; k < len; ++k) acc += (float)q[k] * x[k];
  return acc;
}

// x: four rows of stride `ld`.
inline void dot_q8_x4(const int8_t* q, const float* x, int64_t ld, int len, float* d) {
  float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
  const float *x0 = x, *x1 = x + ld, *x2 = x + 2 * ld, *x3 = x + 3 * ld;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
  for (int k = 0; k < len; ++k) {
    const float w = (float)q[k];
    d0 += w * x0[k];
    d1 += w * x1[k];
    d2 += w * x2[k];
    d3 += w * x3[k];
  }
  d[0] = d0, d[1] = d1, d[2] = d2, d[3] = d3;
}

// x: fp32 [n, in]; q: int8 [out, in]; scales: fp32 [out, in / group]; y: fp32 [n, out].
//   y[i, o] = sum_g scales[o, g] * sum_{k in group g} q[o, k] * x[i, k]
// The scale is applied once per group instead of per element. Threads split the output rows in
// contiguous blocks; all tokens are processed against a row while it is hot in L1 (four at a time),
// so each weight row is read from memory once per call whatever n is.
void matmul_int8(const float* x, const int8_t* q, const float* scales, int group, int64_t n, int64_t in,
                 int64_t out, float* y) {
  const int64_t n_groups = in / group;
  parallel_for(out, true, [&](int64_t o) {
    const int8_t* qo = q + o * in;
    const float* so = scales + o * n_groups;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      float acc[4] = {0.f, 0.f, 0.f, 0.f}, d[4];
      for (int64_t g = 0; g < n_groups; ++g) {
        dot_q8_x4(qo + g * group, x + i * in + g * group, in, group, d);
        for (int t = 0; t < 4; ++t) acc[t] += so[g] * d[t];
      }
      for (int t = 0; t < 4; ++t) y[(i + t) * out + o] = acc[t];
    }
    for (; i < n; ++i) {  // decode (n == 1) and the last n % 4 tokens
      const float* xi = x + i * in;
      float acc = 0.f;
      for (int64_t g = 0; g < n_groups; ++g) acc += so[g] * dot_q8(qo + g * group, xi + g * group, group);
      y[i * out + o] = acc;
    }
  });
}

}  // namespace

// x: fp32 [n, in]; weight: fp32 [out, in] (scales empty) or int8 [out, in] with scales fp32
// [out, in / group_size]; y: fp32 [n, out].
void matmul(const Tensor& x, const ConstTensor& weight, const ConstTensor& scales, int group_size, Tensor& y) {
  const int64_t n = x.dim(0), in = x.dim(1), out = weight.dim(0);
  if (weight.dtype() == base::DType::kInt8) {
    matmul_int8(x.ptr<float>(), weight.ptr<int8_t>(), scales.ptr<float>(), group_size, n, in, out, y.ptr<float>());
  } else {
    matmul_fp32(x.ptr<float>(), weight.ptr<float>(), n, in, out, y.ptr<float>());
  }
}

}  // namespace kernel::cpu
