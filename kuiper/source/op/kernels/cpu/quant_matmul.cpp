// y = x W^T on the CPU for the GGUF block types (q8_0, q4_0, q4_k, q6_k), and their dequantization.
//
// Decode (one token) reads each weight row once and never widens it in memory: an AVX2 + FMA loop
// (checked once at run time) unpacks eight 4-, 6- or 8-bit values at a time to fp32 in registers and
// folds the block scales into per-sub-block sums:
//   q4_k  sum_j (d sc_j) (q . x)_j - (dmin m_j) (sum x)_j      over the 8 sub-blocks of 32
//   q6_k  sum_g (d sc_g) ((q - 32) . x)_g                      over the 16 sub-blocks of 16
//   q8_0 / q4_0  sum_b d_b (q . x)_b                           over the blocks of 32
// Prefill (several tokens), and any CPU without AVX2: each row is dequantized exactly (quant_blocks.h)
// into a per-thread buffer of one row of fp32 (a row, not the matrix) and multiplied with every token
// while it is in L1/L2. The thread pool splits the output rows as for the other weight types, so the
// result does not depend on the thread count.
//
// Built with -ffp-contract=off (kuiper/CMakeLists.txt): dequantize() must match the reference
// dequantizer bit for bit, which a fused multiply-add would not.
#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"
#include "kernels/quant_blocks.h"
#include "thread_pool.h"

namespace kernel::cpu {
namespace {

using base::DType;
namespace q = kernel::quant;

#define KP_AVX2 __attribute__((target("avx2,fma,f16c")))

bool has_avx2() {
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
    return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
}

KP_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

KP_AVX2 inline float f16(const uint8_t* p) { return _cvtsh_ss((unsigned short)(p[0] | (p[1] << 8))); }

// Eight bytes at p, zero-extended to eight int32.
KP_AVX2 inline __m256i u8x8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// ---------------------------------------------------------------------------------------------------
// One row (nb blocks) dotted with one fp32 token row x, AVX2.

KP_AVX2 float dot_q8_0(const uint8_t* row, const float* x, int64_t nb) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, row += 34, x += 32) {
    __m256 s = _mm256_setzero_ps();
    for (int k = 0; k < 32; k += 8) {
      const __m256i qi = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + q::kQ8_0Qs + k)));
      s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(qi), _mm256_loadu_ps(x + k), s);
    }
    acc = _mm256_fmadd_ps(s, _mm256_set1_ps(f16(row)), acc);
  }
  return hsum(acc);
}

KP_AVX2 float dot_q4_0(const uint8_t* row, const float* x, int64_t nb) {
  const __m256i lo4 = _mm256_set1_epi32(0xF), eight = _mm256_set1_epi32(8);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, row += 18, x += 32) {
    __m256 s = _mm256_setzero_ps();
    for (int k = 0; k < 16; k += 8) {
      const __m256i v = u8x8(row + q::kQ4_0Qs + k);
      const __m256i lo = _mm256_sub_epi32(_mm256_and_si256(v, lo4), eight);
      const __m256i hi = _mm256_sub_epi32(_mm256_srli_epi32(v, 4), eight);
      s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), _mm256_loadu_ps(x + k), s);
      s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), _mm256_loadu_ps(x + 16 + k), s);
    }
    acc = _mm256_fmadd_ps(s, _mm256_set1_ps(f16(row)), acc);
  }
  return hsum(acc);
}

KP_AVX2 float dot_q4_k(const uint8_t* row, const float* x, int64_t nb) {
  const __m256i lo4 = _mm256_set1_epi32(0xF);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, row += 144, x += 256) {
    const float d = f16(row), dmin = f16(row + 2);
    for (int c = 0; c < 4; ++c) {  // 64 values: sub-block 2c (low nibbles), 2c + 1 (high nibbles)
      const uint8_t* qs = row + q::kQ4_KQs + 32 * c;
      __m256 qx_lo = _mm256_setzero_ps(), qx_hi = _mm256_setzero_ps();
      __m256 x_lo = _mm256_setzero_ps(), x_hi = _mm256_setzero_ps();
      for (int k = 0; k < 32; k += 8) {
        const __m256i v = u8x8(qs + k);
        const __m256 xl = _mm256_loadu_ps(x + 64 * c + k), xh = _mm256_loadu_ps(x + 64 * c + 32 + k);
        qx_lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, lo4)), xl, qx_lo);
        qx_hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), xh, qx_hi);
        x_lo = _mm256_add_ps(x_lo, xl);
        x_hi = _mm256_add_ps(x_hi, xh);
      }
      int sc, m;
      q::q4k_scale_min(row + q::kQ4_KScales, 2 * c, &sc, &m);
      acc = _mm256_fmadd_ps(qx_lo, _mm256_set1_ps(d * sc), acc);
      acc = _mm256_fnmadd_ps(x_lo, _mm256_set1_ps(dmin * m), acc);
      q::q4k_scale_min(row + q::kQ4_KScales, 2 * c + 1, &sc, &m);
      acc = _mm256_fmadd_ps(qx_hi, _mm256_set1_ps(d * sc), acc);
      acc = _mm256_fnmadd_ps(x_hi, _mm256_set1_ps(dmin * m), acc);
    }
  }
  return hsum(acc);
}

KP_AVX2 float dot_q6_k(const uint8_t* row, const float* x, int64_t nb) {
  const __m256i lo4 = _mm256_set1_epi32(0xF), lo2 = _mm256_set1_epi32(3), bias = _mm256_set1_epi32(32);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, row += 210, x += 256) {
    const float d = f16(row + q::kQ6_KD);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = row + 64 * h;
      const uint8_t* qh = row + q::kQ6_KQh + 32 * h;
      for (int g = 0; g < 8; ++g) {  // 16 values r = 16g .. 16g + 15 of this half, one scale
        __m256 s = _mm256_setzero_ps();
        for (int r = 16 * g; r < 16 * g + 16; r += 8) {
          const __m256i lo = _mm256_and_si256(_mm256_srl_epi32(u8x8(ql + r % 64), _mm_cvtsi32_si128(4 * (r / 64))), lo4);
          const __m256i hi = _mm256_and_si256(_mm256_srl_epi32(u8x8(qh + r % 32), _mm_cvtsi32_si128(2 * (r / 32))), lo2);
          const __m256i qv = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), bias);
          s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(qv), _mm256_loadu_ps(x + 128 * h + r), s);
        }
        acc = _mm256_fmadd_ps(s, _mm256_set1_ps(d * (float)(int8_t)row[q::kQ6_KScales + 8 * h + g]), acc);
      }
    }
  }
  return hsum(acc);
}

KP_AVX2 float dot_f32(const float* w, const float* x, int64_t len) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
  }
  float acc = hsum(_mm256_add_ps(a0, a1));
  for (; k < len; ++k) acc += w[k] * x[k];
  return acc;
}

float dot_f32_scalar(const float* w, const float* x, int64_t len) {
  float acc = 0.f;
  for (int64_t k = 0; k < len; ++k) acc += w[k] * x[k];
  return acc;
}

float dot_avx(DType t, const uint8_t* row, const float* x, int64_t in) {
  switch (t) {
    case DType::kQ8_0: return dot_q8_0(row, x, in / 32);
    case DType::kQ4_0: return dot_q4_0(row, x, in / 32);
    case DType::kQ4_K: return dot_q4_k(row, x, in / 256);
    default: return dot_q6_k(row, x, in / 256);
  }
}

template <DType QT> void dequantize_row_t(const uint8_t* row, int64_t n, float* y) {
  constexpr int64_t kElems = base::dtype_block_elems(QT);
  constexpr size_t bytes = base::dtype_block_bytes(QT);
  for (int64_t b = 0; b < n / kElems; ++b) q::dequantize_block<QT>(row + b * bytes, y + b * kElems);
}

// The thread's buffer for one dequantized row (grows at the first call with a wider row, which the
// model's warm-up makes; no allocation after that).
float* row_buffer(int64_t n) {
  thread_local std::vector<float> buf;
  if ((int64_t)buf.size() < n) buf.resize(n);
  return buf.data();
}

}  // namespace

void dequantize_row(DType t, const uint8_t* row, int64_t n, float* y) {
  switch (t) {
    case DType::kQ8_0: dequantize_row_t<DType::kQ8_0>(row, n, y); break;
    case DType::kQ4_0: dequantize_row_t<DType::kQ4_0>(row, n, y); break;
    case DType::kQ4_K: dequantize_row_t<DType::kQ4_K>(row, n, y); break;
    case DType::kQ6_K: dequantize_row_t<DType::kQ6_K>(row, n, y); break;
    case DType::kFp32: std::copy_n(reinterpret_cast<const float*>(row), n, y); break;
    case DType::kFp16:
      for (int64_t i = 0; i < n; ++i) y[i] = q::fp16(row + 2 * i);
      break;
    default:  // bf16 (the dispatcher admits weight dtypes only)
      for (int64_t i = 0; i < n; ++i) y[i] = base::bf16_to_float((uint16_t)(row[2 * i] | (row[2 * i + 1] << 8)));
      break;
  }
}

// w: [rows, cols] fp32 / fp16 / bf16 / block type; out: fp32 [rows, cols].
void dequantize(const ConstTensor& w, Tensor& out) {
  const int64_t rows = w.numel() / w.dim(-1), cols = w.dim(-1);
  const uint64_t row_bytes = base::dtype_bytes(w.dtype(), cols);
  const uint8_t* src = static_cast<const uint8_t*>(w.data());
  float* dst = out.ptr<float>();
  parallel_for(rows, threads_for(rows * cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) dequantize_row(w.dtype(), src + r * row_bytes, cols, dst + r * cols);
  });
}

// x: fp32 [n, in]; w: block type [out, in]; y: fp32 [n, out].
void matmul_quant(const Tensor& x, const ConstTensor& w, Tensor& y) {
  const int64_t n = x.dim(0), in = x.dim(1), out = w.dim(0);
  const DType t = w.dtype();
  const uint64_t row_bytes = base::dtype_bytes(t, in);
  const uint8_t* wp = static_cast<const uint8_t*>(w.data());
  const float* xp = x.ptr<float>();
  float* yp = y.ptr<float>();
  const bool avx = has_avx2();
  const int nt = (int)std::min<int64_t>(threads_for(n * in * out), out);
  parallel_for(out, nt, [&](int64_t o0, int64_t o1) {
    if (n == 1 && avx) {
      for (int64_t o = o0; o < o1; ++o) yp[o] = dot_avx(t, wp + o * row_bytes, xp, in);
      return;
    }
    float* row = row_buffer(in);
    for (int64_t o = o0; o < o1; ++o) {
      dequantize_row(t, wp + o * row_bytes, in, row);
      for (int64_t i = 0; i < n; ++i)
        yp[i * out + o] = avx ? dot_f32(row, xp + i * in, in) : dot_f32_scalar(row, xp + i * in, in);
    }
  });
}

}  // namespace kernel::cpu
