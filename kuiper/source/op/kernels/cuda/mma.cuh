// Tensor-core building blocks of the flash-attention kernels (sm_80+ instructions, built for sm_90):
//  - cp.async 16-byte copies global -> shared, zero-filling when the source is out of range;
//  - a swizzled shared-memory tile of rows of 16-bit elements, so ldmatrix reads 8 rows at one
//    column without bank conflicts;
//  - ldmatrix (plain and transposed) and mma.sync m16n8k16 with fp32 accumulation, fp16 or bf16.
//
// Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane = 4 g + t:
//   A (16 x 16, row-major): a0a1 = A[g][2t..2t+1], a2a3 = A[g+8][2t..], a4a5 = A[g][2t+8..], a6a7 = A[g+8][2t+8..]
//   B (16 x 8, k x n):      b0b1 = B[2t..2t+1][g], b2b3 = B[2t+8..2t+9][g]
//   C (16 x 8, fp32):       c0c1 = C[g][2t..2t+1], c2c3 = C[g+8][2t..2t+1]
// so a C tile of scores, rounded to 16 bits, is already the A fragment of the next product (P V).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace kernel::cuda {

// 16 bytes global -> shared, asynchronous; when !valid nothing is read and the 16 bytes are zeroed.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = (uint32_t)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// A tile of kRows rows of kCols 16-bit elements in shared memory, stored as 16-byte chunks with chunk
// c of row r at position c ^ (r % 8): the 8 rows an ldmatrix reads at one column then fall in 8
// different bank groups. kCols / 8 (chunks per row) must be a multiple of 8.
template <int kCols> struct SwizzledRows {
  static_assert(kCols % 64 == 0, "rows must be whole groups of 8 chunks");
  static constexpr int kChunks = kCols / 8;
  // Element offset of chunk `chunk` (elements chunk*8 .. chunk*8 + 7) of row r.
  static __device__ __forceinline__ int offset(int r, int chunk) { return r * kCols + ((chunk ^ (r & 7)) * 8); }
};

// Four 8x8 matrices of 16-bit elements: lane l gives the address of row l % 8 of matrix l / 8; register
// j receives matrix j, lane 4g + t holding its row g, columns 2t and 2t + 1 (.trans: row and column swapped).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem_row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem_row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// d += A B for one m16n8k16 tile, fp32 accumulation; T is __half or __nv_bfloat16.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "mma_m16n8k16: fp16 or bf16 operands");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats rounded to T and packed into one register, `lo` in the low half (the lower column).
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// Four int8 (bytes 0..3 of w) to two pairs of T, exactly: lo = (b0, b1), hi = (b2, b3), element 0 in the
// low half, without the conversion unit (16 conversions per clock per SM). u = b ^ 0x80 = b + 128.
// fp16: the half 0x64uu is 1024 + u, minus 1152 leaves b. bf16 (8 significant bits hold any int8): the
// fp32 0x4B0000uu is 2^23 + u, minus 2^23 + 128 leaves b exactly, whose upper half is its bf16.
template <typename T> __device__ __forceinline__ void int8x4_to_pairs(uint32_t w, uint32_t& lo, uint32_t& hi);
template <> __device__ __forceinline__ void int8x4_to_pairs<__half>(uint32_t w, uint32_t& lo, uint32_t& hi) {
  const uint32_t u = w ^ 0x80808080u;
  const uint32_t l = __byte_perm(u, 0x64646464u, 0x5140), h = __byte_perm(u, 0x64646464u, 0x7362);
  asm("sub.f16x2 %0, %1, %2;\n" : "=r"(lo) : "r"(l), "r"(0x64806480u));
  asm("sub.f16x2 %0, %1, %2;\n" : "=r"(hi) : "r"(h), "r"(0x64806480u));
}
template <>
__device__ __forceinline__ void int8x4_to_pairs<__nv_bfloat16>(uint32_t w, uint32_t& lo, uint32_t& hi) {
  const uint32_t u = w ^ 0x80808080u;
  const float f0 = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7650)) - 8388736.f;
  const float f1 = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7651)) - 8388736.f;
  const float f2 = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7652)) - 8388736.f;
  const float f3 = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7653)) - 8388736.f;
  lo = __byte_perm(__float_as_uint(f0), __float_as_uint(f1), 0x7632);
  hi = __byte_perm(__float_as_uint(f2), __float_as_uint(f3), 0x7632);
}

}  // namespace kernel::cuda
