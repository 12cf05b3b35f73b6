// The GGUF quantization blocks (base/dtype.h lists them): byte layouts and the exact dequantization
// of one value, shared by the CPU and CUDA kernels (compiled by both g++ and nvcc).
//
// "Exact" means bit for bit what llama.cpp's reference dequantizer and the `gguf` Python package
// compute, with the same fp32 roundings in the same order:
//   q8_0  d * q                        q4_0  d * (q - 8)
//   q4_k  (d * sc) * q - (dmin * m)    q6_k  (d * sc) * (q - 32)
// Each product and difference is rounded on its own: no fused multiply-add (nvcc would contract them,
// so device code uses __fmul_rn / __fsub_rn; the CPU file that calls these is built with
// -ffp-contract=off). test_gguf checks every type against the gguf package on both devices.
//
// The fast paths (the matrix-vector kernels) do not go through value(): they decode many values at
// once and fold the scales into their sums, which is not bit-exact but is the same arithmetic.
#pragma once

#include <cstdint>

#include "base/dtype.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define KP_HD __host__ __device__ __forceinline__
#else
#define KP_HD inline
#endif

namespace kernel::quant {

// Byte offsets inside one block.
constexpr int kQ8_0Qs = 2;                     // q8_0: fp16 d at 0, int8 q[32] at 2
constexpr int kQ4_0Qs = 2;                     // q4_0: fp16 d at 0, q[16] at 2 (low nibbles: values 0..15)
constexpr int kQ4_KScales = 4, kQ4_KQs = 16;   // q4_k: fp16 d at 0, fp16 dmin at 2, scales[12], qs[128]
constexpr int kQ6_KQh = 128, kQ6_KScales = 192, kQ6_KD = 208;  // q6_k: ql[128], qh[64], int8 sc[16], fp16 d

KP_HD float fp16(const uint8_t* p) {
  const uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  return base::half_to_float(h);
#endif
}

// Rounded fp32 product and difference, never fused.
KP_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
KP_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

// q4_k: the 6-bit scale and min of sub-block j (0..7) of the 12 packed bytes: j < 4 in the low 6 bits
// of bytes j and j + 4; j >= 4 in the nibbles of byte j + 4, topped up by the high 2 bits of bytes
// j - 4 (scale) and j (min).
KP_HD void q4k_scale_min(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// q4_k: the 4-bit q of value i (0..255): values [64c, 64c + 32) are the low nibbles of qs[32c ..
// 32c + 32), values [64c + 32, 64c + 64) their high nibbles.
KP_HD int q4k_q(const uint8_t* blk, int i) {
  const uint8_t b = blk[kQ4_KQs + 32 * (i / 64) + i % 32];
  return (i / 32) % 2 == 0 ? (b & 0xF) : (b >> 4);
}

// q6_k: the 6-bit q (0..63) of value i: in each half h of 128 values, value h*128 + r takes its low
// 4 bits from ql[64h + r % 64] (low nibble for r < 64, high nibble above) and its high 2 bits from
// qh[32h + r % 32] (bits 2 * (r / 32) and up).
KP_HD int q6k_q(const uint8_t* blk, int i) {
  const int h = i / 128, r = i % 128;
  const int lo = (blk[64 * h + r % 64] >> (4 * (r / 64))) & 0xF;
  const int hi = (blk[kQ6_KQh + 32 * h + r % 32] >> (2 * (r / 32))) & 3;
  return lo | (hi << 4);
}

// Value i of the block at `blk`, exactly as the reference dequantizer computes it.
template <base::DType QT> KP_HD float value(const uint8_t* blk, int i) {
  if constexpr (QT == base::DType::kQ8_0) {
    return mul_rn(fp16(blk), (float)(int8_t)blk[kQ8_0Qs + i]);
  } else if constexpr (QT == base::DType::kQ4_0) {
    const uint8_t b = blk[kQ4_0Qs + i % 16];
    return mul_rn(fp16(blk), (float)((i < 16 ? (b & 0xF) : (b >> 4)) - 8));
  } else if constexpr (QT == base::DType::kQ4_K) {
    int sc, m;
    q4k_scale_min(blk + kQ4_KScales, i / 32, &sc, &m);
    const float dsc = mul_rn(fp16(blk), (float)sc), dm = mul_rn(fp16(blk + 2), (float)m);
    return sub_rn(mul_rn(dsc, (float)q4k_q(blk, i)), dm);
  } else {
    static_assert(QT == base::DType::kQ6_K, "a block type");
    const float dsc = mul_rn(fp16(blk + kQ6_KD), (float)(int8_t)blk[kQ6_KScales + i / 16]);
    return mul_rn(dsc, (float)(q6k_q(blk, i) - 32));
  }
}

// All values of one block into y[block_elems], exactly as value() (the scales computed once per
// sub-block; the roundings are the same). Host code.
template <base::DType QT> inline void dequantize_block(const uint8_t* blk, float* y) {
  if constexpr (QT == base::DType::kQ8_0) {
    const float d = fp16(blk);
    for (int i = 0; i < 32; ++i) y[i] = d * (float)(int8_t)blk[kQ8_0Qs + i];
  } else if constexpr (QT == base::DType::kQ4_0) {
    const float d = fp16(blk);
    for (int i = 0; i < 16; ++i) {
      y[i] = d * (float)((blk[kQ4_0Qs + i] & 0xF) - 8);
      y[i + 16] = d * (float)((blk[kQ4_0Qs + i] >> 4) - 8);
    }
  } else if constexpr (QT == base::DType::kQ4_K) {
    const float d = fp16(blk), dmin = fp16(blk + 2);
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      q4k_scale_min(blk + kQ4_KScales, j, &sc, &m);
      const float dsc = d * (float)sc, dm = dmin * (float)m;
      for (int i = 32 * j; i < 32 * j + 32; ++i) y[i] = dsc * (float)q4k_q(blk, i) - dm;
    }
  } else {
    const float d = fp16(blk + kQ6_KD);
    for (int g = 0; g < 16; ++g) {
      const float dsc = d * (float)(int8_t)blk[kQ6_KScales + g];
      for (int i = 16 * g; i < 16 * g + 16; ++i) y[i] = dsc * (float)(q6k_q(blk, i) - 32);
    }
  }
}

}  // namespace kernel::quant
