// y = x W^T on the CPU for fp32, fp16, bf16 and int8 weights.
//
// The thread pool (thread_pool.h) splits the output rows into contiguous blocks, each computed start
// to end by one thread (so our own kernels' results do not depend on the thread count; OpenBLAS's may
// differ in the last bit, as its edge kernels depend on the block size):
//   fp32       decode (n == 1): our GEMV below; prefill: single-threaded OpenBLAS GEMM on the block.
//   fp16/bf16  the weights stay 16-bit in memory (half the bytes of fp32, so a model's RAM is its file
//              size) and are widened to fp32 in registers as they are read.
//   Our loops use AVX2 + FMA (+ F16C for fp16) when the CPU has them (checked once at run time), plain
//   C++ otherwise.
//   int8       group-wise dequantisation inside the dot product.
// Every weight row is read from memory once per call, whatever n is: the tokens are run against a row
// while it is hot in L1, four at a time.
#include <cblas.h>
#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "cpu_kernels.h"
#include "thread_pool.h"

namespace kernel::cpu {
namespace {

using base::DType;

// Runs body(o0, o1) on contiguous blocks of the rows [0, out), on up to `nt` threads.
template <class Body>
void for_row_blocks(int64_t out, int nt, const Body& body) {
  parallel_for(out, nt, body);
}

// ---------------------------------------------------------------------------------------------------
// fp32 weights, prefill: OpenBLAS GEMM, one thread, on this block of rows.
// x: fp32 [n, in]; w: fp32 [out, in]; y: fp32 [n, out]; rows [o0, o1).
void block_fp32(const float* x, const float* w, int64_t n, int64_t in, int64_t out, int64_t o0, int64_t o1,
                float* y) {
  const int rows = (int)(o1 - o0);
  if (rows <= 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, rows, (int)in, 1.f, x, (int)in, w + o0 * in,
              (int)in, 0.f, y + o0, (int)out);
}

// ---------------------------------------------------------------------------------------------------
// Float weights read by our own kernels: fp16 / bf16 always, fp32 for decode. Each path provides dot
// (one token) and dot4 (four tokens of stride ld) of one weight row w ([len], of the dtype W) with fp32
// token rows.

// The element type of a weight of dtype W: float for fp32, the raw 16 bits for fp16 / bf16.
template <DType W>
using Elem = std::conditional_t<W == DType::kFp32, float, uint16_t>;

// Plain C++: widen each weight with the exact scalar conversion.
template <DType W>
struct ScalarDot {
  static float widen(Elem<W> v) {
    if constexpr (W == DType::kFp32) return v;
    else if constexpr (W == DType::kFp16) return base::half_to_float(v);
    else return base::bf16_to_float(v);
  }
  static float dot(const Elem<W>* w, const float* x, int64_t len) {
    float acc = 0.f;
    for (int64_t k = 0; k < len; ++k) acc += widen(w[k]) * x[k];
    return acc;
  }
  static void dot4(const Elem<W>* w, const float* x, int64_t ld, int64_t len, float* d) {
    float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
    for (int64_t k = 0; k < len; ++k) {
      const float v = widen(w[k]);
      d0 += v * x[k], d1 += v * x[ld + k], d2 += v * x[2 * ld + k], d3 += v * x[3 * ld + k];
    }
    d[0] = d0, d[1] = d1, d[2] = d2, d[3] = d3;
  }
};

#define KP_AVX2 __attribute__((target("avx2,fma,f16c")))

// Eight weights as fp32: a plain load for fp32, vcvtph2ps for fp16; bf16 is the top half of an fp32.
template <DType W>
KP_AVX2 inline __m256 load8(const Elem<W>* w) {
  if constexpr (W == DType::kFp32) {
    return _mm256_loadu_ps(w);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
    if constexpr (W == DType::kFp16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

KP_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <DType W>
struct AvxDot {
  // Two accumulators hide the FMA latency; the tail (len % 8) is scalar.
  KP_AVX2 static float dot(const Elem<W>* w, const float* x, int64_t len) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= len; k += 16) {
      a0 = _mm256_fmadd_ps(load8<W>(w + k), _mm256_loadu_ps(x + k), a0);
      a1 = _mm256_fmadd_ps(load8<W>(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
    }
    if (k + 8 <= len) {
      a0 = _mm256_fmadd_ps(load8<W>(w + k), _mm256_loadu_ps(x + k), a0);
      k += 8;
    }
    float acc = hsum(_mm256_add_ps(a0, a1));
    for (; k < len; ++k) acc += ScalarDot<W>::widen(w[k]) * x[k];
    return acc;
  }
  // Each widened weight vector serves four tokens. Every token's sum is formed exactly as dot() forms
  // it (two accumulators over 16-wide steps, one 8-wide step, the same horizontal sum, the same scalar
  // tail), so a row's result does not depend on how many rows share the call: a sequence decodes the
  // same tokens alone or in a batch.
  KP_AVX2 static void dot4(const Elem<W>* w, const float* x, int64_t ld, int64_t len, float* d) {
    __m256 a0[4], a1[4];
    for (int t = 0; t < 4; ++t) a0[t] = _mm256_setzero_ps(), a1[t] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= len; k += 16) {
      const __m256 v0 = load8<W>(w + k), v1 = load8<W>(w + k + 8);
      for (int t = 0; t < 4; ++t) {
        a0[t] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x + t * ld + k), a0[t]);
        a1[t] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x + t * ld + k + 8), a1[t]);
      }
    }
    if (k + 8 <= len) {
      const __m256 v0 = load8<W>(w + k);
      for (int t = 0; t < 4; ++t) a0[t] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x + t * ld + k), a0[t]);
      k += 8;
    }
    for (int t = 0; t < 4; ++t) d[t] = hsum(_mm256_add_ps(a0[t], a1[t]));
    for (; k < len; ++k) {
      const float v = ScalarDot<W>::widen(w[k]);
      for (int t = 0; t < 4; ++t) d[t] += v * x[t * ld + k];
    }
  }
};

// AVX2 and FMA from the compiler's CPU model; F16C (CPUID leaf 1, ECX bit 29) asked directly, as
// clang's __builtin_cpu_supports does not know it.
bool has_avx2_f16c() {
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
    return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
}

// x: fp32 [n, in]; w: [out, in] of P's dtype; y: fp32 [n, out]; rows [o0, o1).
template <class P, class T>
void block_float(const float* x, const T* w, int64_t n, int64_t in, int64_t out, int64_t o0, int64_t o1, float* y) {
  for (int64_t o = o0; o < o1; ++o) {
    const T* wo = w + o * in;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      float d[4];
      P::dot4(wo, x + i * in, in, in, d);
      for (int t = 0; t < 4; ++t) y[(i + t) * out + o] = d[t];
    }
    for (; i < n; ++i) y[i * out + o] = P::dot(wo, x + i * in, in);
  }
}

template <DType W>
void matmul_float(const float* x, const Elem<W>* w, int64_t n, int64_t in, int64_t out, int nt, float* y) {
  const bool avx = has_avx2_f16c();
  for_row_blocks(out, nt, [&](int64_t o0, int64_t o1) {
    if (avx) block_float<AvxDot<W>>(x, w, n, in, out, o0, o1, y);
    else block_float<ScalarDot<W>>(x, w, n, in, out, o0, o1, y);
  });
}

// ---------------------------------------------------------------------------------------------------
// int8 weights. Dot products of one quantisation group with one token row (dot_q8) or four
// (dot_q8_x4, which widens each int8 weight once for all four). `omp simd` (-fopenmp-simd: no OpenMP
// runtime) lets the compiler split the fp32 sums into vector lanes (it may not reassociate without
// -ffast-math); the order is fixed at compile time, so results are the same on every run and for
// every thread count.
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

// x: fp32 [n, in]; q: int8 [out, in]; scales: fp32 [out, in / group]; y: fp32 [n, out]; rows [o0, o1).
//   y[i, o] = sum_g scales[o, g] * sum_{k in group g} q[o, k] * x[i, k]
// The scale is applied once per group instead of per element.
void block_int8(const float* x, const int8_t* q, const float* scales, int group, int64_t n, int64_t in,
                int64_t out, int64_t o0, int64_t o1, float* y) {
  const int64_t n_groups = in / group;
  for (int64_t o = o0; o < o1; ++o) {
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
  }
}

}  // namespace

// x: fp32 [n, in]; weight: fp32 / fp16 / bf16 [out, in] (scales empty) or int8 [out, in] with scales
// fp32 [out, in / group_size]; y: fp32 [n, out].
void matmul(const Tensor& x, const ConstTensor& weight, const ConstTensor& scales, int group_size, Tensor& y) {
  if (base::is_block_type(weight.dtype())) return matmul_quant(x, weight, y);
  const int64_t n = x.dim(0), in = x.dim(1), out = weight.dim(0);
  const float* xp = x.ptr<float>();
  float* yp = y.ptr<float>();
  // No more threads than rows, and none that would get less than kWorkPerThread multiply-adds.
  const int nt = (int)std::min<int64_t>(threads_for(n * in * out), out);
  switch (weight.dtype()) {
    case DType::kFp32: {
      const float* w = weight.ptr<float>();
      // Decode: our GEMV. OpenBLAS's sgemv costs more per call than these small products take: on
      // storyteller exported as fp32 it decoded at ~640 tok/s against ~1,800 with this loop (the fp16
      // original's). Prefill: OpenBLAS's GEMM, whose blocking wins once there are rows to share a panel.
      if (n == 1) matmul_float<DType::kFp32>(xp, w, n, in, out, nt, yp);
      else for_row_blocks(out, nt, [&](int64_t o0, int64_t o1) { block_fp32(xp, w, n, in, out, o0, o1, yp); });
      break;
    }
    case DType::kFp16:
      matmul_float<DType::kFp16>(xp, weight.ptr_u16(), n, in, out, nt, yp);
      break;
    case DType::kBf16:
      matmul_float<DType::kBf16>(xp, weight.ptr_u16(), n, in, out, nt, yp);
      break;
    default: {  // int8 (the dispatcher admits nothing else)
      const int8_t* q = weight.ptr<int8_t>();
      const float* s = scales.ptr<float>();
      for_row_blocks(out, nt, [&](int64_t o0, int64_t o1) {
        block_int8(xp, q, s, group_size, n, in, out, o0, o1, yp);
      });
      break;
    }
  }
}

}  // namespace kernel::cpu
