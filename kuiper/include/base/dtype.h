// Element types and devices, and the host-side fp16 / bf16 conversions used by the CPU path, the loader
// and the tests. The conversions round to nearest even, as the hardware does.
//
// Block types. GGUF files (llama.cpp's format) store weights in quantization blocks: a fixed number of
// consecutive values of a row packed with their scales into a fixed number of bytes. A block type's size
// is per block, not per element, so a count of values becomes bytes through dtype_bytes(), never by
// multiplying with dtype_size() (which is for element types only and is 0 for block types). A row of a
// block type is always a whole number of blocks. The layouts (kernels/quant_blocks.h decodes them):
//   q8_0  32 values in 34 bytes:  fp16 scale d, int8 q[32];                  x = d * q
//   q4_0  32 values in 18 bytes:  fp16 d, 16 bytes of 4-bit q;               x = d * (q - 8)
//   q4_k  256 values in 144 bytes: fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins for 8
//         sub-blocks of 32, 128 bytes of 4-bit q;                            x = d * sc * q - dmin * m
//   q6_k  256 values in 210 bytes: 128 bytes of the low 4 bits, 64 of the high 2 bits, int8 scales for
//         16 sub-blocks of 16, fp16 d;                                       x = d * sc * (q - 32)
#pragma once

#include <cstddef>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <string>

namespace base {

enum class DType : int32_t {
  kFp32 = 0, kFp16 = 1, kBf16 = 2, kInt8 = 3, kInt32 = 4,
  kQ8_0 = 5, kQ4_0 = 6, kQ4_K = 7, kQ6_K = 8,  // block types (above)
};
enum class DeviceType : int32_t { kCPU = 0, kCUDA = 1 };

constexpr bool is_block_type(DType t) {
  return t == DType::kQ8_0 || t == DType::kQ4_0 || t == DType::kQ4_K || t == DType::kQ6_K;
}

// Bytes of one element; 0 for block types (use dtype_bytes).
constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::kFp32: return 4;
    case DType::kFp16: return 2;
    case DType::kBf16: return 2;
    case DType::kInt8: return 1;
    case DType::kInt32: return 4;
    default: return 0;
  }
}

// Values per block: 1 for element types.
constexpr int64_t dtype_block_elems(DType t) {
  switch (t) {
    case DType::kQ8_0: case DType::kQ4_0: return 32;
    case DType::kQ4_K: case DType::kQ6_K: return 256;
    default: return 1;
  }
}

// Bytes per block: dtype_size for element types.
constexpr size_t dtype_block_bytes(DType t) {
  switch (t) {
    case DType::kQ8_0: return 34;
    case DType::kQ4_0: return 18;
    case DType::kQ4_K: return 144;
    case DType::kQ6_K: return 210;
    default: return dtype_size(t);
  }
}

// Bytes of n consecutive values (n a multiple of dtype_block_elems(t): a row is whole blocks).
constexpr uint64_t dtype_bytes(DType t, int64_t n) {
  return (uint64_t)(n / dtype_block_elems(t)) * dtype_block_bytes(t);
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFp32: return "fp32";
    case DType::kFp16: return "fp16";
    case DType::kBf16: return "bf16";
    case DType::kInt8: return "int8";
    case DType::kInt32: return "int32";
    case DType::kQ8_0: return "q8_0";
    case DType::kQ4_0: return "q4_0";
    case DType::kQ4_K: return "q4_k";
    case DType::kQ6_K: return "q6_k";
  }
  return "?";
}

// Parses "fp32", "fp16", "bf16", "int8", "int32", "q8_0", "q4_0", "q4_k", "q6_k"; false on anything else.
bool parse_dtype(const std::string& s, DType* out);

inline const char* device_name(DeviceType d) { return d == DeviceType::kCPU ? "cpu" : "cuda"; }

// IEEE binary16 <-> float.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) { mant <<= 1; --exp; }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));  // inf/nan
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520: overflow to inf
  if (absx < 0x38800000u) {  // below the smallest normal half: a subnormal in units of 2^-24
    float a;
    std::memcpy(&a, &absx, 4);
    // a * 2^24 is exact (power-of-two scaling) and below 1024; rint rounds to nearest even.
    return (uint16_t)(sign | (uint32_t)std::rint(a * 16777216.0f));
  }
  uint32_t h = ((absx >> 13) - ((127 - 15) << 10));
  const uint32_t rem = absx & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return (uint16_t)(sign | h);
}

// bfloat16 is the top half of a float32.
inline float bf16_to_float(uint16_t b) {
  const uint32_t bits = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);  // quiet nan
  const uint32_t lsb = (x >> 16) & 1u;
  x += 0x7fffu + lsb;
  return (uint16_t)(x >> 16);
}

}  // namespace base
