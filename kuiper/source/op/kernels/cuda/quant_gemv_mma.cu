// Decode GEMV of the GGUF block types on the tensor cores: y = x W^T for n <= 4 tokens, fp16 / bf16
// activations, W in q4_k, q6_k or q8_0 blocks ([out, in], GGUF's layout, read in place).
//
// Why: the warp-per-row kernel of quant_matmul.cu converts every 4- or 6-bit value to fp32 (16
// conversions per clock per SM) and multiplies it on the FP32 pipe; it ran Llama-2-7B Q4_K_M at 17% of
// the bandwidth limit on an H200. Here the values become fp16 / bf16 pairs with one LOP3 a pair (the bias
// trick below; q6_k's 6-bit values take two and shifts), the products run on the tensor cores, and the
// block scales are applied once per group to the tensor cores' fp32 partial sums.
//
// Layout (as gemv_int8_mma_kernel in matmul.cu): a block owns 16 output rows, one m16 tile (A = W,
// B = x^T, C = y^T), or two tiles (32 rows) for q4_k on large matrices. Its warps split the row into
// steps of 256 values (a k-quant super-block, eight q8_0 blocks), warp w taking steps w, w + kWarps, ...;
// lane (g = lane / 4, t = lane % 4) works on rows g and g + 8 of each tile. With several tokens, lane
// g < NT supplies token g's activations (C's columns are tokens). With one token, C's 8 columns carry the
// 8 scale groups of a step instead: lane (g, t) supplies group g's values and zeros in the other groups'
// MMAs, so it ends a step holding groups 2t and 2t + 1 of its rows and decodes only those scales. The
// warps' sums meet in shared memory.
//
// The bias trick: OR-ing a 4-bit value u into the mantissa of C (fp16 1024.0 = 0x6400, bf16 128.0 =
// 0x4300) gives the number C + u exactly, so a 32-bit word of 4 bytes b0..b3 gives the pairs
// (b0, b2) and (b1, b3) with one AND-OR each. The MMA then sums (C + u) x, and C sum(x) is taken off
// with the scales: sum(x) per group comes, for one token, from the lanes' own x values (a warp
// reduction), and for several from a second MMA of the same B with an A of ones. The k order inside
// an MMA is free as long as A and B agree: lane t's pair (b0, b2) fills k slots (2t, 2t + 1), so x is
// permuted the same way (two byte permutes per 4 values). Per group j of a row:
//   q4_k:  y += (d sc_j) sum(u x) - (dmin m_j) sum(x)            (u: 4 bits, 32 values per group)
//   q6_k:  y += (d sc_j) sum((u - 32) x)                         (u: 6 bits, 16 values per group)
//   q8_0:  y += d sum(q x)                                       (int8x4_to_pairs, exact, no bias)
// Every scale product is the reference's own fp32 product (d * sc), so only the summation order and the
// fp32 cancellation of C sum(x) (~2^-17 of the sums) differ from the exact dequantized product.
//
// Every step goes through shared memory: the warp copies its rows' bytes of a step with coalesced
// 16-byte cp.async, one step ahead (two buffers; deeper pipelines measured no faster: the kernel is bound
// by instruction issue, docs/benchmarks.md), and lanes read their words there. The copy takes the
// 16-byte-aligned window around each row's step, so an unaligned type's tensor must be readable up to
// 15 bytes past its end (the loader pads every tensor to 256 bytes; the caller checks). With one token,
// the block first copies x into shared memory too. The first steps' weights are requested before
// pdl_wait() (no kernel writes weights).
#include <algorithm>
#include <climits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/quant_gemv_mma.h"
#include "kernels/quant_blocks.h"

namespace kernel::cuda {
namespace {

using base::DType;
namespace q = kernel::quant;

constexpr int kRows = 16;  // output rows per block (one m16 tile)

// The bias trick's constants for T.
template <typename T>
struct Bias;
template <>
struct Bias<__half> {
  static constexpr uint32_t kWord = 0x64006400u;  // (1024, 1024)
  static constexpr float kC = 1024.f;
  static constexpr uint32_t kOnes = 0x3C003C00u;  // (1, 1)
};
template <>
struct Bias<__nv_bfloat16> {
  static constexpr uint32_t kWord = 0x43004300u;  // (128, 128)
  static constexpr float kC = 128.f;
  static constexpr uint32_t kOnes = 0x3F803F80u;
};

// Fragment of 4 activations (halves x0..x3 in x01 = (x0, x1), x23 = (x2, x3)) in the order of the
// bias-trick pairs: b0 = (x0, x2) for k slots (2t, 2t + 1), b1 = (x1, x3) for (2t + 8, 2t + 9).
__device__ __forceinline__ void x_pairs(uint32_t x01, uint32_t x23, uint32_t& b0, uint32_t& b1) {
  b0 = __byte_perm(x01, x23, 0x5410);
  b1 = __byte_perm(x01, x23, 0x7632);
}

// (a & mask) | c in one LOP3. Written as C, nvcc emits two when mask and c are both constants (a LOP3
// takes one immediate); here c is a register operand, which ptxas keeps in a register (run 15's SASS:
// 128 of the Q4_K step's 440 instructions were these pairs).
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(mask), "r"(c));
  return d;
}

// P += A B and S += ones B for one m16n8k16 tile.
template <typename T>
__device__ __forceinline__ void mma_with_sum(float (&p)[4], float (&s)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
  constexpr uint32_t o = Bias<T>::kOnes;
  const uint32_t ones[4] = {o, o, o, o};
  mma_m16n8k16<T>(p, a, b0, b1);
  mma_m16n8k16<T>(s, ones, b0, b1);
}

// acc += sp * P - e * S on the C fragment: elements 0, 1 are row g (scale index 0), 2, 3 row g + 8
// (index 1); elements 1 and 3 are token 2t + 1, never used with one token.
template <int NT>
__device__ __forceinline__ void fold(float (&acc)[4], const float (&p)[4], const float (&s)[4], const float (&sp)[2],
                                     const float (&e)[2]) {
  acc[0] = fmaf(sp[0], p[0], fmaf(-e[0], s[0], acc[0]));
  acc[2] = fmaf(sp[1], p[2], fmaf(-e[1], s[2], acc[2]));
  if constexpr (NT > 1) {
    acc[1] = fmaf(sp[0], p[1], fmaf(-e[0], s[1], acc[1]));
    acc[3] = fmaf(sp[1], p[3], fmaf(-e[1], s[3], acc[3]));
  }
}

// One token (NT = 1): the 8 columns of B carry the 8 scale groups of a step instead of 8 tokens. Lane
// (g, t) supplies its token's values of group g (column g) and zeros for the MMAs of other groups, so
// C[row][n] accumulates group n's sum for every row, and lane (g, t) ends the step holding groups 2t and
// 2t + 1 of rows g and g + 8: it decodes only those 4 scales (not all 16 of its rows), and its fold is
// 4 FMA pairs a step. The row's total is then the sum over the 4 lanes t (shuffles, at the end).
__device__ __forceinline__ uint32_t column_of(bool mine, uint32_t v) { return mine ? v : 0u; }

// One token: lane (g, t) holds v, its part of group g's sum(x); returns groups 2t and 2t + 1's sums.
__device__ __forceinline__ float2 group_sums(float v, int t) {
  v += __shfl_xor_sync(0xFFFFFFFFu, v, 1);
  v += __shfl_xor_sync(0xFFFFFFFFu, v, 2);  // lanes (g, *): group g's sum
  return make_float2(__shfl_sync(0xFFFFFFFFu, v, 8 * t), __shfl_sync(0xFFFFFFFFu, v, 8 * t + 4));
}
// Sum of the N values of T in words w.
template <typename T, int N, typename Word>
__device__ __forceinline__ float sum_of(const Word& w) {
  float f[N];
  unpack_floats<T, N>(&w, f);
  float v = 0.f;
#pragma unroll
  for (int j = 0; j < N; ++j) v += f[j];
  return v;
}

// Byte k of w as a float, without the conversion unit: 0x4B0000bb is 2^23 + b.
__device__ __forceinline__ float byte_plus_2p23(uint32_t w, int k) {
  return __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7650 + k));
}
constexpr float k2p23 = 8388608.f;

__device__ __forceinline__ float half_lo(uint32_t w) {
  return __half2float(__ushort_as_half((unsigned short)(w & 0xFFFF)));
}
__device__ __forceinline__ float half_hi(uint32_t w) {
  return __half2float(__ushort_as_half((unsigned short)(w >> 16)));
}

// A row's step in shared memory: it starts at byte `off` (even) of the word array `w`. Reads are at
// byte o + 4 dw of the row, o a constant of the call site (after unrolling) and dw a lane's word offset,
// so a read needs only the row's word index and funnel shift for o = 0 or 2 (mod 4), worked out once a
// step: two loads and a funnel shift a word, no address arithmetic. Index arithmetic on the shared
// array, not pointer casts, keeps the loads shared-memory loads.
struct SRow {
  const uint32_t* w;
  uint32_t wb0, sh0;  // word of byte off, and the shift within it (bits)
  uint32_t wb2, sh2;  // the same for byte off + 2
};
__device__ __forceinline__ SRow srow(const uint32_t* w, uint32_t off) {
  return SRow{w, off >> 2, (off & 3) * 8, (off + 2) >> 2, ((off + 2) & 3) * 8};
}
__device__ __forceinline__ uint32_t word_of(const SRow& r, int o, uint32_t dw, uint32_t* sh) {
  *sh = (o & 3) == 0 ? r.sh0 : r.sh2;
  return ((o & 3) == 0 ? r.wb0 + (o >> 2) : r.wb2 + ((o - 2) >> 2)) + dw;
}
// The 4 / 8 / 2 bytes at byte o + 4 dw of row r.
__device__ __forceinline__ uint32_t lds32(const SRow& r, int o, uint32_t dw = 0) {
  uint32_t sh;
  const uint32_t j = word_of(r, o, dw, &sh);
  return __funnelshift_r(r.w[j], r.w[j + 1], sh);
}
__device__ __forceinline__ uint2 lds64(const SRow& r, int o, uint32_t dw = 0) {
  uint32_t sh;
  const uint32_t j = word_of(r, o, dw, &sh);
  const uint32_t w0 = r.w[j], w1 = r.w[j + 1], w2 = r.w[j + 2];
  return make_uint2(__funnelshift_r(w0, w1, sh), __funnelshift_r(w1, w2, sh));
}
__device__ __forceinline__ float lds_half(const SRow& r, int o, uint32_t dw = 0) {
  uint32_t sh;
  const uint32_t j = word_of(r, o, dw, &sh);
  return __half2float(__ushort_as_half((unsigned short)(r.w[j] >> sh)));
}

// ---------------------------------------------------------------------------------------------------
// One step per type: compute() folds the step of rows g and g + 8 (index r = 0, 1), staged in shared
// memory (the kernel below), into acc; x: T [in] of this lane's token (only read when has_x). Types with
// kTwoTiles take one token through compute_tiles() instead, for 1 or 2 tiles of 16 rows.

template <DType QT, typename T>
struct Step;

// q4_k, 256 values (144 bytes) a step: fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins, qs[128]
// whose 32-byte chunk c holds sub-block 2c in its low nibbles and 2c + 1 in its high ones. Lane t takes
// bytes 8t .. 8t + 7 of every chunk: values 8t .. 8t + 7 of all 8 sub-blocks.
template <typename T>
struct Step<DType::kQ4_K, T> {
  static constexpr int kValues = 256, kStepBytes = 144, kStages = 2;
  static constexpr bool kAligned = true;  // 144-byte blocks keep every step of an aligned row aligned
  template <int NT>
  static constexpr bool kGroupColumns = NT == 1;
  static constexpr bool kTwoTiles = true;  // one token: compute_tiles() takes 2 row tiles
  struct Frag {
    uint4 head[2];   // d, dmin, scales
    uint2 qs[2][4];  // [row][chunk]
  };
  // fp16 reads a high nibble in place (C + 16 u, no shift); bf16's mantissa has no room, so it shifts.
  static constexpr bool kHiInPlace = std::is_same_v<T, __half>;
  static constexpr float kHiMul = kHiInPlace ? 16.f : 1.f;

  // The lane's words of rows g, g + 8 from their staged copies (16-byte aligned: q4_k rows are).
  static __device__ __forceinline__ Frag frag_of(const SRow& ra, const SRow& rb, int t) {
    Frag f;
    const SRow rows[2] = {ra, rb};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      f.head[r] = *reinterpret_cast<const uint4*>(rows[r].w + rows[r].wb0);
#pragma unroll
      for (int c = 0; c < 4; ++c)
        f.qs[r][c] = *reinterpret_cast<const uint2*>(rows[r].w + rows[r].wb0 + (q::kQ4_KQs + 32 * c) / 4 + 2 * t);
    }
    return f;
  }

  // Pairs of sub-block 2c (lo) and 2c + 1 (hi) from word w of a row: [0] = (b0, b2), [1] = (b1, b3).
  static __device__ __forceinline__ void pairs(uint32_t w, uint32_t (&lo)[2], uint32_t (&hi)[2]) {
    constexpr uint32_t B = Bias<T>::kWord;
    const uint32_t w8 = w >> 8;
    lo[0] = and_or(w, 0x000F000Fu, B);
    lo[1] = and_or(w8, 0x000F000Fu, B);
    if constexpr (kHiInPlace) {
      hi[0] = and_or(w, 0x00F000F0u, B);
      hi[1] = and_or(w8, 0x00F000F0u, B);
    } else {
      hi[0] = and_or(w >> 4, 0x000F000Fu, B);
      hi[1] = and_or(w >> 12, 0x000F000Fu, B);
    }
  }

  // Packed 6-bit scales and mins of sub-blocks 4h .. 4h + 3 (one byte each) from a block's head.
  static __device__ __forceinline__ void packed_scales(const uint4& h, int half, uint32_t* sc, uint32_t* mn) {
    *sc = half == 0 ? h.y & 0x3F3F3F3Fu : (h.w & 0x0F0F0F0Fu) | ((h.y >> 2) & 0x30303030u);
    *mn = half == 0 ? h.z & 0x3F3F3F3Fu : ((h.w >> 4) & 0x0F0F0F0Fu) | ((h.z >> 2) & 0x30303030u);
  }
  // The factors of sub-blocks 4h + k (low nibbles) and 4h + k + 1 (high) of packed words sc, mn:
  // y += sp P - e S, with P the MMA's sum of (C + u) x (C + 16 u for fp16's high nibbles) and S sum(x).
  // d * sc and dmin * m are the reference's own products (fma with 2^23 + byte, exact).
  static __device__ __forceinline__ void factors(uint32_t sc, uint32_t mn, int k, float d, float dmin, float (&sp)[2],
                                                 float (&e)[2]) {
    const float dsl = fmaf(byte_plus_2p23(sc, k), d, -k2p23 * d);
    const float dml = fmaf(byte_plus_2p23(mn, k), dmin, -k2p23 * dmin);
    const float dsh = fmaf(byte_plus_2p23(sc, k + 1), d, -k2p23 * d);
    const float dmh = fmaf(byte_plus_2p23(mn, k + 1), dmin, -k2p23 * dmin);
    sp[0] = dsl, e[0] = fmaf(Bias<T>::kC, dsl, dml);
    sp[1] = dsh * (1.f / kHiMul), e[1] = fmaf(Bias<T>::kC / kHiMul, dsh, dmh);
  }

  // NT = 1, kTiles row tiles of 16 (rows 16 k + g, + 8); the 8 MMA columns are the 8 sub-blocks
  // (column_of above). The activations' fragments, their column selection and sum(x) are worked out
  // once and shared by the tiles.
  template <int kTiles>
  static __device__ __forceinline__ void compute1(const Frag (&f)[kTiles], const T* x, int s, int g, int t,
                                                  float (&acc)[kTiles][4]) {
    const uint4 xv = *reinterpret_cast<const uint4*>(x + (int64_t)s * 256 + 32 * g + 8 * t);  // sub-block g
    uint32_t xb[2][2];
    x_pairs(xv.x, xv.y, xb[0][0], xb[0][1]);
    x_pairs(xv.z, xv.w, xb[1][0], xb[1][1]);
    // Two independent accumulator chains a tile (the low and the high nibbles' MMAs), added at the end.
    float p[kTiles][4] = {}, p2[kTiles][4] = {};
#pragma unroll
    for (int c = 0; c < 4; ++c)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const uint32_t bl0 = column_of(g == 2 * c, xb[half][0]), bl1 = column_of(g == 2 * c, xb[half][1]);
        const uint32_t bh0 = column_of(g == 2 * c + 1, xb[half][0]), bh1 = column_of(g == 2 * c + 1, xb[half][1]);
#pragma unroll
        for (int k = 0; k < kTiles; ++k) {
          uint32_t la[2], ha[2], lb[2], hb[2];
          pairs(half == 0 ? f[k].qs[0][c].x : f[k].qs[0][c].y, la, ha);
          pairs(half == 0 ? f[k].qs[1][c].x : f[k].qs[1][c].y, lb, hb);
          const uint32_t alo[4] = {la[0], lb[0], la[1], lb[1]}, ahi[4] = {ha[0], hb[0], ha[1], hb[1]};
          mma_m16n8k16<T>(p[k], alo, bl0, bl1);
          mma_m16n8k16<T>(p2[k], ahi, bh0, bh1);
        }
      }
    // sum(x) of sub-blocks 2t, 2t + 1 (the same for every row), from the lanes' own x values.
    const float2 sx = group_sums(sum_of<T, 8>(xv), t);
    // This lane's sub-blocks 2t (low nibbles) and 2t + 1 (high): packed word t / 2, bytes 2 (t % 2), + 1.
    const int kb = 2 * (t % 2);
#pragma unroll
    for (int k = 0; k < kTiles; ++k)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const uint4 h = f[k].head[r];
        uint32_t sc, mn;
        packed_scales(h, t / 2, &sc, &mn);
        float sp[2], e[2];
        factors(sc, mn, kb, half_lo(h.x), half_hi(h.x), sp, e);
        const float pl = p[k][2 * r] + p2[k][2 * r], ph = p[k][2 * r + 1] + p2[k][2 * r + 1];
        acc[k][2 * r] = fmaf(sp[0], pl, fmaf(-e[0], sx.x, acc[k][2 * r]));
        acc[k][2 * r + 1] = fmaf(sp[1], ph, fmaf(-e[1], sx.y, acc[k][2 * r + 1]));
      }
  }

  // Several row tiles (one token only).
  template <int kTiles>
  static __device__ __forceinline__ void compute_tiles(const SRow (&rows)[kTiles][2], const T* x, int s, int g, int t,
                                                       float (&acc)[kTiles][4]) {
    Frag f[kTiles];
#pragma unroll
    for (int k = 0; k < kTiles; ++k) f[k] = frag_of(rows[k][0], rows[k][1], t);
    compute1<kTiles>(f, x, s, g, t, acc);
  }

  // Several tokens (C's columns are tokens; one token goes through compute_tiles()).
  template <int NT>
  static __device__ __forceinline__ void compute(const SRow& ra, const SRow& rb, const T* x, bool has_x, int s,
                                                 int /*g*/, int t, float (&acc)[4]) {
    static_assert(NT > 1, "one token: compute_tiles()");
    const Frag f = frag_of(ra, rb, t);
    // Scales: sc[r][h] / mn[r][h] pack the 6-bit scales / mins of sub-blocks 4h .. 4h + 3 of row r.
    uint32_t sc[2][2], mn[2][2];
    float d[2], dmin[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      d[r] = half_lo(f.head[r].x), dmin[r] = half_hi(f.head[r].x);
#pragma unroll
      for (int h = 0; h < 2; ++h) packed_scales(f.head[r], h, &sc[r][h], &mn[r][h]);
    }
    const T* xs = x + (int64_t)s * 256 + 8 * t;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      uint4 xl = make_uint4(0, 0, 0, 0), xh = make_uint4(0, 0, 0, 0);
      if (has_x) {
        xl = *reinterpret_cast<const uint4*>(xs + 64 * c);
        xh = *reinterpret_cast<const uint4*>(xs + 64 * c + 32);
      }
      float pl[4] = {0.f, 0.f, 0.f, 0.f}, sl[4] = {0.f, 0.f, 0.f, 0.f};
      float ph[4] = {0.f, 0.f, 0.f, 0.f}, sh[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // bytes 4 half .. 4 half + 3 of the lane's 8
        uint32_t la[2], ha[2], lb[2], hb[2];
        pairs(half == 0 ? f.qs[0][c].x : f.qs[0][c].y, la, ha);
        pairs(half == 0 ? f.qs[1][c].x : f.qs[1][c].y, lb, hb);
        uint32_t b0, b1, c0, c1;
        x_pairs(half == 0 ? xl.x : xl.z, half == 0 ? xl.y : xl.w, b0, b1);
        x_pairs(half == 0 ? xh.x : xh.z, half == 0 ? xh.y : xh.w, c0, c1);
        const uint32_t alo[4] = {la[0], lb[0], la[1], lb[1]}, ahi[4] = {ha[0], hb[0], ha[1], hb[1]};
        mma_with_sum<T>(pl, sl, alo, b0, b1);
        mma_with_sum<T>(ph, sh, ahi, c0, c1);
      }
      // Sub-blocks 2c (bytes 2 (c % 2) of packed word c / 2) and 2c + 1.
      float spl[2], el[2], sph[2], eh[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float sp[2], e[2];
        factors(sc[r][c / 2], mn[r][c / 2], 2 * (c % 2), d[r], dmin[r], sp, e);
        spl[r] = sp[0], el[r] = e[0], sph[r] = sp[1], eh[r] = e[1];
      }
      fold<NT>(acc, pl, sl, spl, el);
      fold<NT>(acc, ph, sh, sph, eh);
    }
  }
};

// q6_k and q8_0 blocks (210 and 34 bytes) are only 2-byte aligned: lanes read their words from the
// staged rows at the row's byte shift (two aligned words and a funnel shift, lds32). Reading them
// straight from global memory with 4-byte loads measured 1.4x slower for q8_0 (run 11 against 12).
//
// q6_k, 256 values (210 bytes) a step: ql[128], qh[64], int8 scales[16], fp16 d. Half h (values
// 128 h ..) uses ql[64 h ..], qh[32 h ..], scales[8 h ..]; its value 32 k + l (k = 0..3, l = 0..31) has
// low 4 bits from ql[l] (k = 0, 2: low / high nibble) or ql[l + 32] (k = 1, 3), high 2 bits from bits
// 2k, 2k + 1 of qh[l], and scale scales[l / 16 + 2 k]. One MMA covers one scale: the 16 values
// l = 16 i .. 16 i + 15 of one k; lane t takes l = 16 i + 4t .. + 3.
template <typename T>
struct Step<DType::kQ6_K, T> {
  static constexpr int kValues = 256, kStepBytes = 210, kStages = 2;
  static constexpr bool kAligned = false;
  template <int NT>
  static constexpr bool kGroupColumns = NT == 1;
  static constexpr bool kTwoTiles = false;

  // Pairs (b0, b2), (b1, b3) of the 6-bit values of kind k from an ql word and a qh word: C + u.
  template <int K>
  static __device__ __forceinline__ void pairs(uint32_t ql, uint32_t qh, uint32_t (&p)[2]) {
    constexpr uint32_t B = Bias<T>::kWord;
    constexpr int kLo = (K >= 2) ? 4 : 0;  // nibble of ql
    // bits 2K, 2K + 1 of bytes 0 / 2 go to bits 4, 5 of the halves; of bytes 1 / 3 likewise.
    const uint32_t h02 = (2 * K <= 4) ? (qh << (4 - 2 * K)) : (qh >> (2 * K - 4));
    const uint32_t h13 = qh >> (4 + 2 * K);
    p[0] = and_or(h02, 0x00300030u, and_or(ql >> kLo, 0x000F000Fu, B));
    p[1] = and_or(h13, 0x00300030u, and_or(ql >> (kLo + 8), 0x000F000Fu, B));
  }

  // The kind-K pairs of rows g and g + 8 as an A fragment.
  template <int K>
  static __device__ __forceinline__ void a_of(const uint32_t (&ql)[2][2], const uint32_t (&qh)[2], uint32_t (&a)[4]) {
    uint32_t pa[2], pb[2];
    pairs<K>(ql[0][K % 2], qh[0], pa);
    pairs<K>(ql[1][K % 2], qh[1], pb);
    a[0] = pa[0], a[1] = pb[0], a[2] = pa[1], a[3] = pb[1];
  }

  // This lane's ql words (at l, l + 32) and qh word of rows g, g + 8 for half h, l = 16 i + 4 t.
  static __device__ __forceinline__ void words(const SRow (&rows)[2], int h, int i, int t, uint32_t (&ql)[2][2],
                                               uint32_t (&qh)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      ql[r][0] = lds32(rows[r], 64 * h + 16 * i, t);
      ql[r][1] = lds32(rows[r], 64 * h + 32 + 16 * i, t);
      qh[r] = lds32(rows[r], q::kQ6_KQh + 32 * h + 16 * i, t);
    }
  }
  // a_of<k> for a k known only after unrolling.
  static __device__ __forceinline__ void a_of(int k, const uint32_t (&ql)[2][2], const uint32_t (&qh)[2],
                                              uint32_t (&a)[4]) {
    switch (k) {
      case 0:
        a_of<0>(ql, qh, a);
        break;
      case 1:
        a_of<1>(ql, qh, a);
        break;
      case 2:
        a_of<2>(ql, qh, a);
        break;
      default:
        a_of<3>(ql, qh, a);
        break;
    }
  }

  // NT = 1, per half: columns are its 8 scale groups j = i + 2 k (column_of above).
  static __device__ __forceinline__ void compute1(const SRow& ra, const SRow& rb, const T* x, int s, int g, int t,
                                                  float (&acc)[4]) {
    const SRow rows[2] = {ra, rb};
    float d[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) d[r] = lds_half(rows[r], q::kQ6_KD);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // Group g of this half: values 32 (g / 2) + 16 (g % 2) + 4t .. + 3.
      const uint2 xv =
          *reinterpret_cast<const uint2*>(x + (int64_t)s * 256 + 128 * h + 32 * (g / 2) + 16 * (g % 2) + 4 * t);
      uint32_t xb0, xb1;
      x_pairs(xv.x, xv.y, xb0, xb1);
      float pi[2][4] = {};  // two independent chains (i = 0, 1), added below
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        uint32_t ql[2][2], qh[2];
        words(rows, h, i, t, ql, qh);
#pragma unroll
        for (int k = 0; k < 4; ++k) {  // group i + 2 k
          uint32_t a[4];
          a_of(k, ql, qh, a);
          mma_m16n8k16<T>(pi[i], a, column_of(g == i + 2 * k, xb0), column_of(g == i + 2 * k, xb1));
        }
      }
      float p[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) p[e] = pi[0][e] + pi[1][e];
      // sum(x) of this half's groups 2t, 2t + 1 (the same for both rows), from the lanes' own x values.
      const float2 sx = group_sums(sum_of<T, 4>(xv), t);
      const float sm[4] = {sx.x, sx.y, sx.x, sx.y};
      // This lane's groups 2t, 2t + 1: scales 8 h + 2t, + 1 (word 2 h + t / 2, bytes 2 (t % 2), + 1).
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const uint32_t word = lds32(rows[r], q::kQ6_KScales + 8 * h, t / 2) ^ 0x80808080u;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const float sp = d[r] * (byte_plus_2p23(word, 2 * (t % 2) + j) - (k2p23 + 128.f));  // d * sc
          acc[2 * r + j] = fmaf(sp, p[2 * r + j], fmaf(-sp * (Bias<T>::kC + 32.f), sm[2 * r + j], acc[2 * r + j]));
        }
      }
    }
  }

  // ra, rb: the step's 210 bytes of rows g and g + 8 in shared memory.
  template <int NT>
  static __device__ __forceinline__ void compute(const SRow& ra, const SRow& rb, const T* x, bool has_x, int s, int g,
                                                 int t, float (&acc)[4]) {
    if constexpr (NT == 1) {
      compute1(ra, rb, x, s, g, t, acc);
    } else {
      compute_n<NT>(ra, rb, x, has_x, s, t, acc);
    }
  }

  // Several tokens: C's columns are tokens, one MMA (and its ones-MMA for sum(x)) a scale group.
  template <int NT>
  static __device__ __forceinline__ void compute_n(const SRow& ra, const SRow& rb, const T* x, bool has_x, int s, int t,
                                                   float (&acc)[4]) {
    const SRow rows[2] = {ra, rb};
    float d[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) d[r] = lds_half(rows[r], q::kQ6_KD);
    const T* xs = x + (int64_t)s * 256 + 4 * t;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        uint32_t ql[2][2], qh[2], scw[2];
        words(rows, h, i, t, ql, qh);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const int j = i + 2 * k;  // scale 8 h + j: word 2 h + j / 4, byte j % 4
          if (k == 0 || k == 2) {
#pragma unroll
            for (int r = 0; r < 2; ++r) scw[r] = lds32(rows[r], q::kQ6_KScales + 4 * (2 * h + j / 4)) ^ 0x80808080u;
          }
          uint2 xv = make_uint2(0, 0);
          if (has_x) xv = *reinterpret_cast<const uint2*>(xs + 128 * h + 32 * k + 16 * i);
          uint32_t b0, b1;
          x_pairs(xv.x, xv.y, b0, b1);
          uint32_t a[4];
          a_of(k, ql, qh, a);
          float p[4] = {0.f, 0.f, 0.f, 0.f}, sm[4] = {0.f, 0.f, 0.f, 0.f};
          mma_with_sum<T>(p, sm, a, b0, b1);
          float sp[2], e[2];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const float scf = byte_plus_2p23(scw[r], j % 4) - (k2p23 + 128.f);  // the int8 scale, exactly
            sp[r] = d[r] * scf;                                                 // the reference's d * sc
            e[r] = sp[r] * (Bias<T>::kC + 32.f);
          }
          fold<NT>(acc, p, sm, sp, e);
        }
      }
  }
};

// q8_0, eight 34-byte blocks (256 values) a step: fp16 d, int8 q[32] each. Lane t takes q[8t .. 8t + 7]
// of every block; int8x4_to_pairs gives (b0, b1), (b2, b3) in order, so x needs no permute, and the
// conversion is exact (no bias to take off). One token: the MMA columns are the 8 blocks.
template <typename T>
struct Step<DType::kQ8_0, T> {
  static constexpr int kBlocks = 8, kValues = 32 * kBlocks, kStepBytes = 34 * kBlocks, kStages = 2;
  static constexpr bool kAligned = false;
  template <int NT>
  static constexpr bool kGroupColumns = NT == 1;
  static constexpr bool kTwoTiles = false;

  // The A fragment of half `half` (bytes 4 half .. + 3 of the lane's 8) of block b, rows g and g + 8.
  static __device__ __forceinline__ void a_of(const SRow& ra, const SRow& rb, int b, int t, uint32_t (&a)[2][4]) {
    const uint2 qa = lds64(ra, 34 * b + q::kQ8_0Qs, 2 * t), qb = lds64(rb, 34 * b + q::kQ8_0Qs, 2 * t);
    // rows (g, g+8) x slots (2t, 2t+1 | 2t+8, 2t+9) <- bytes (0, 1 | 2, 3)
    int8x4_to_pairs<T>(qa.x, a[0][0], a[0][2]);
    int8x4_to_pairs<T>(qb.x, a[0][1], a[0][3]);
    int8x4_to_pairs<T>(qa.y, a[1][0], a[1][2]);
    int8x4_to_pairs<T>(qb.y, a[1][1], a[1][3]);
  }

  template <int NT>
  static __device__ __forceinline__ void compute(const SRow& ra, const SRow& rb, const T* x, bool has_x, int s, int g,
                                                 int t, float (&acc)[4]) {
    if constexpr (NT == 1) {
      const uint4 xv = *reinterpret_cast<const uint4*>(x + (int64_t)s * kValues + 32 * g + 8 * t);  // block g
      float pe[4] = {0.f, 0.f, 0.f, 0.f}, po[4] = {0.f, 0.f, 0.f, 0.f};  // even / odd blocks: two chains
#pragma unroll
      for (int b = 0; b < kBlocks; ++b) {
        uint32_t a[2][4];
        a_of(ra, rb, b, t, a);
        float(&p)[4] = b % 2 == 0 ? pe : po;
        mma_m16n8k16<T>(p, a[0], column_of(g == b, xv.x), column_of(g == b, xv.y));
        mma_m16n8k16<T>(p, a[1], column_of(g == b, xv.z), column_of(g == b, xv.w));
      }
      // This lane's blocks 2t, 2t + 1 of rows g, g + 8.
      const SRow rows[2] = {ra, rb};
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int j = 0; j < 2; ++j)
          acc[2 * r + j] = fmaf(lds_half(rows[r], 34 * j, 17 * t), pe[2 * r + j] + po[2 * r + j], acc[2 * r + j]);
    } else {
#pragma unroll
      for (int b = 0; b < kBlocks; ++b) {
        uint32_t a[2][4];
        a_of(ra, rb, b, t, a);
        uint4 xv = make_uint4(0, 0, 0, 0);
        if (has_x) xv = *reinterpret_cast<const uint4*>(x + (int64_t)s * kValues + 32 * b + 8 * t);
        float p[4] = {0.f, 0.f, 0.f, 0.f};
        mma_m16n8k16<T>(p, a[0], xv.x, xv.y);
        mma_m16n8k16<T>(p, a[1], xv.z, xv.w);
        const float da = lds_half(ra, 34 * b), db = lds_half(rb, 34 * b);
        acc[0] = fmaf(da, p[0], acc[0]);
        acc[2] = fmaf(db, p[2], acc[2]);
        acc[1] = fmaf(da, p[1], acc[1]);
        acc[3] = fmaf(db, p[3], acc[3]);
      }
    }
  }
};

// Shared-memory window of one step of one row: the 16-byte words covering kStepBytes (from any 2-byte
// shift, unless the type's steps are aligned), the row stride in words and the kStages buffers of a
// warp. Strides: odd for the 4-byte reads of the unaligned types (8 rows in 8 groups of 4 banks);
// q4_k's 8-byte reads want rows 8 banks apart, 10 words (40 banks).
template <DType QT, typename T>
struct Window {
  using S = Step<QT, T>;
  static constexpr int kWords = S::kAligned ? S::kStepBytes / 16 : (S::kStepBytes + 14 + 15) / 16;
  static constexpr int kStride = S::kAligned ? kWords + 1 : kWords | 1;
  static constexpr int kStages = S::kStages;
  static constexpr int kWarpBytesPerTile = kStages * kRows * kStride * 16;
};

// x: T [NT, in]; w: QT [out, in] (row_bytes a row); y: T [NT, out]. grid = ceil(out / (16 kTiles)) blocks
// of kWarps warps; dynamic shared memory smem_bytes() below. in % kValues == 0. 128 registers at most: 16
// warps on an SM.
// kSwiglu (one tile): w = [W1; W3] (out = 2 hidden rows) and y: T [NT, hidden] = swiglu(x W1^T, x W3^T),
// as gemv_int8_mma_kernel in matmul.cu: the tile's rows 0..7 are the gate features o0 .. o0 + 7, its
// rows 8..15 the up features hidden + o0 ..; grid = ceil(hidden / 8). Only the rows and the epilogue
// differ, so each feature's two sums are those of the plain kernel.
template <DType QT, typename T, int NT, int kWarps, int kTiles, bool kSwiglu = false>
static __global__ void __launch_bounds__(kWarps* kWarpSize, 16 / kWarps)
    gemv_quant_mma_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, T* __restrict__ y, int in, int out,
                          int64_t row_bytes) {
  static_assert(NT <= 4, "the decode GEMV takes up to 4 tokens");
  using S = Step<QT, T>;
  static_assert(kTiles == 1 || (NT == 1 && S::kTwoTiles), "row tiles: one token, types with compute_tiles()");
  static_assert(kTiles == 1 || !kSwiglu, "swiglu: one tile of 8 gate and 8 up rows");
  constexpr int kBlockRows = kRows * kTiles;  // 16 rows a tile; lane (g, t): rows 16 k + g, + 8 of tile k
  constexpr int kHalf = kRows / 2;            // kSwiglu: features a block
  __shared__ float red[kWarps][kBlockRows][NT];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int hidden = out / 2;
  const int o0 = blockIdx.x * (kSwiglu ? kHalf : kBlockRows);
  // The weight row of the block's row r. Rows past the end are clamped to the last one: loaded, never
  // stored. row_lo: the low bits of the lane's rows' addresses (their byte shifts).
  auto w_row = [&](int r) {
    if constexpr (kSwiglu) return (r < kHalf ? 0 : hidden) + min(o0 + r % kHalf, hidden - 1);
    return min(o0 + r, out - 1);
  };
  auto row_at = [&](int r) { return w + (int64_t)w_row(r) * row_bytes; };
  uint32_t row_lo[kTiles][2];
#pragma unroll
  for (int k = 0; k < kTiles; ++k)
#pragma unroll
    for (int r = 0; r < 2; ++r) row_lo[k][r] = (uint32_t) reinterpret_cast<uintptr_t>(row_at(16 * k + g + 8 * r));
  const bool has_x = g < NT;
  const T* xr = x + (int64_t)(has_x ? g : 0) * in;  // one token: its copy in shared memory (below)
  const int n_steps = in / S::kValues;
  // C fragment of each tile: (row g, tokens 2t, 2t+1), (row g+8, tokens 2t, 2t+1); one token: groups.
  float acc[kTiles][4] = {};

  // The step pipeline: kStages buffers a warp, step s + (kStages - 1) kWarps copied while step s is
  // computed. Every iteration commits one cp.async group (maybe empty), so waiting for all but the
  // newest kStages - 1 groups means this step's buffer has landed.
  using Win = Window<QT, T>;
  extern __shared__ uint4 stage[];  // [kWarps][kStages][kBlockRows][kStride]
  uint4* mine = stage + warp * Win::kStages * kBlockRows * Win::kStride;
  // Step s of the block's rows into buffer `buf`: lane l copies words i = l, l + 32, ... of the rows'
  // windows (row i / kWords, word i % kWords). Its rows' offsets from the block's first row and its
  // words' places in a buffer are worked out once: a step then costs an add and a mask per copy.
  constexpr int kCopies = (kBlockRows * Win::kWords + kWarpSize - 1) / kWarpSize;
  const uint8_t* block_rows = w + (int64_t)o0 * row_bytes;
  uint32_t src_off[kCopies];  // row r_i's byte offset from block_rows (r clamped to the last row)
  int dst_word[kCopies];      // word of the copy in a buffer, -1: none
#pragma unroll
  for (int j = 0; j < kCopies; ++j) {
    const int i = lane + j * kWarpSize, r = i / Win::kWords;
    src_off[j] = (uint32_t)((int64_t)(w_row(r) - o0) * row_bytes);  // < 2^32: quant_gemv_mma_swiglu_takes()
    dst_word[j] = i < kBlockRows * Win::kWords ? r * Win::kStride + i % Win::kWords : -1;
  }
  auto load = [&](int s, int buf) {
    uint4* dst = mine + buf * kBlockRows * Win::kStride;
#pragma unroll
    for (int j = 0; j < kCopies; ++j) {
      if (dst_word[j] < 0) continue;
      const int c = (lane + j * kWarpSize) % Win::kWords;
      const uintptr_t row = reinterpret_cast<uintptr_t>(block_rows) + src_off[j] + (uint32_t)s * S::kStepBytes;
      const uint8_t* base = reinterpret_cast<const uint8_t*>(S::kAligned ? row : row & ~uintptr_t(15));
      cp_async_16(dst + dst_word[j], base + 16 * c, true);
    }
  };
  // This lane's rows of step s in buffer `buf`, at their byte shifts.
  auto rows_of = [&](int s, int buf, SRow(&rows)[kTiles][2]) {
    const uint32_t* words = reinterpret_cast<const uint32_t*>(stage);
    const uint32_t b0 = (warp * Win::kStages + buf) * kBlockRows * Win::kStride * 16;  // the buffer's byte offset
#pragma unroll
    for (int k = 0; k < kTiles; ++k)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const uint32_t shift = (row_lo[k][r] + (uint32_t)s * S::kStepBytes) & 15;
        rows[k][r] = srow(words, b0 + (16 * k + g + 8 * r) * Win::kStride * 16 + shift);
      }
  };
#pragma unroll
  for (int i = 0; i < Win::kStages - 1; ++i) {  // weights only: allowed before pdl_wait()
    if (warp + i * kWarps < n_steps) load(warp + i * kWarps, i);
    cp_async_commit();
  }
  pdl_wait();
  if constexpr (NT == 1) {
    // One token: x (in values) is copied once into shared memory after the stage buffers, so that the
    // steps read it at shared-memory latency.
    T* xs = reinterpret_cast<T*>(stage + kWarps * Win::kStages * kBlockRows * Win::kStride);
    for (int i = threadIdx.x; i < in / 8; i += kWarps * kWarpSize) cp_async_16(xs + 8 * i, x + 8 * i, true);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    xr = xs;
  }
  int buf = 0;
  for (int s = warp; s < n_steps; s += kWarps) {
    const int ahead = s + (Win::kStages - 1) * kWarps;
    if (ahead < n_steps) load(ahead, (buf + Win::kStages - 1) % Win::kStages);
    cp_async_commit();
    cp_async_wait<Win::kStages - 1>();
    __syncwarp();
    SRow rows[kTiles][2];
    rows_of(s, buf, rows);
    if constexpr (NT == 1 && S::kTwoTiles) {
      S::template compute_tiles<kTiles>(rows, xr, s, g, t, acc);
    } else {
      S::template compute<NT>(rows[0][0], rows[0][1], xr, has_x, s, g, t, acc[0]);
    }
    __syncwarp();  // every lane is done with `buf` before a later load overwrites it
    buf = (buf + 1) % Win::kStages;
  }
  cp_async_wait<0>();
  pdl_trigger();

#pragma unroll
  for (int k = 0; k < kTiles; ++k) {
    if constexpr (S::template kGroupColumns<NT>) {  // lane t holds its groups' part of rows g, g + 8
      float ya = acc[k][0] + acc[k][1], yb = acc[k][2] + acc[k][3];
#pragma unroll
      for (int m = 1; m < 4; m *= 2)
        ya += __shfl_xor_sync(0xFFFFFFFFu, ya, m), yb += __shfl_xor_sync(0xFFFFFFFFu, yb, m);
      if (t == 0) red[warp][16 * k + g][0] = ya, red[warp][16 * k + g + 8][0] = yb;
    } else {  // C columns are tokens
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int n = 2 * t + j;
        if (n < NT) {
          red[warp][16 * k + g][n] = acc[k][j];
          red[warp][16 * k + g + 8][n] = acc[k][2 + j];
        }
      }
    }
  }
  __syncthreads();
  auto row_sum = [&](int r, int n) {  // block row r's sum for token n, over the warps
    float v = 0.f;
#pragma unroll
    for (int wi = 0; wi < kWarps; ++wi) v += red[wi][r][n];
    return v;
  };
  if constexpr (kSwiglu) {
    for (int e = threadIdx.x; e < kHalf * NT; e += kWarps * kWarpSize) {
      const int r = e % kHalf, n = e / kHalf;
      if (o0 + r < hidden)
        y[(int64_t)n * hidden + o0 + r] = from_float<T>(swiglu_of<T>(row_sum(r, n), row_sum(r + kHalf, n)));
    }
  } else {
    for (int e = threadIdx.x; e < kBlockRows * NT; e += kWarps * kWarpSize) {
      const int r = e % kBlockRows, n = e / kBlockRows;
      if (o0 + r < out) y[(int64_t)n * out + o0 + r] = from_float<T>(row_sum(r, n));
    }
  }
}

// Dynamic shared memory: the stage buffers, and for one token its activations (in values).
constexpr int kMaxStagedX = 32768;  // values of x a one-token launch copies (64 KiB of fp16 / bf16)
template <DType QT, typename T, int NT, int kWarps, int kTiles>
size_t smem_bytes(int in) {  // (the same with kSwiglu)
  return (size_t)kWarps * kTiles * Window<QT, T>::kWarpBytesPerTile + (NT == 1 ? (size_t)in * sizeof(T) : 0);
}

// The kernel instance, its dynamic shared memory allowed once.
template <DType QT, typename T, int NT, int kWarps, int kTiles, bool kSwiglu>
auto kernel_of() {
  auto k = gemv_quant_mma_kernel<QT, T, NT, kWarps, kTiles, kSwiglu>;
  static const bool once = [&] {
    const size_t most = smem_bytes<QT, T, NT, kWarps, kTiles>(kMaxStagedX);
    if (most > 48 * 1024) cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)most);
    return true;
  }();
  (void)once;
  return k;
}

// Blocks of the kernel resident on the whole GPU at once (computed once per instantiation).
template <DType QT, typename T, int NT, int kWarps, int kTiles, bool kSwiglu = false>
int resident_blocks() {
  static const int blocks = [] {
    int per_sm = 0, dev = 0, sms = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    // (with the x of a 14336-wide input, the widest of the Llama shapes)
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel_of<QT, T, NT, kWarps, kTiles, kSwiglu>(),
                                                  kWarps * kWarpSize, smem_bytes<QT, T, NT, kWarps, kTiles>(14336));
    return std::max(1, per_sm * sms);
  }();
  return blocks;
}

// 4 or 8 warps a block. Rows of at most 16 steps (in <= 4096) take 4 when the grid fills at least half
// a wave of 4-warp blocks: with 8, each warp has only 2 steps, too few for one step's copy to hide
// behind the other's arithmetic (run 31, docs/perf_notes.md section 9: 28672 x 4096 q4_k 28.1 -> 23.1
// us, the q6_k classifier 183 -> 143; wider rows lose with 4). Otherwise the one whose last wave of
// blocks is fuller (8 on ties: more bytes in flight per row), as int8_mma_warps() in matmul.cu.
// KUIPER_QUANT_GEMV_WARPS=4|8 pins it for measurements.
template <DType QT, typename T, int NT, int kTiles, bool kSwiglu>
int warps_for(int64_t blocks, int n_steps) {
  static const int pinned = [] {
    const char* e = std::getenv("KUIPER_QUANT_GEMV_WARPS");
    return e != nullptr ? std::atoi(e) : 0;
  }();
  if (pinned == 4 || pinned == 8) return pinned;
  const int resident4 = resident_blocks<QT, T, NT, 4, kTiles, kSwiglu>();
  constexpr int kFewSteps = 2 * 8;  // 2 steps for each of 8 warps
  if (n_steps <= kFewSteps && 2 * blocks >= resident4) return 4;
  auto fill = [&](int resident) {
    const int64_t waves = (blocks + resident - 1) / resident;
    return (double)blocks / (double)(waves * resident);
  };
  return fill(resident4) >
                 fill(resident_blocks<QT, T, NT, 8, kTiles, kSwiglu>()) + 0.02
             ? 4
             : 8;
}

// kSwiglu: y is [NT, out / 2] = swiglu(x W1^T, x W3^T) of w = [W1; W3] (see the kernel).
template <DType QT, typename T, int NT, int kTiles, bool kSwiglu = false>
Status launch_tiles(const T* x, const uint8_t* w, T* y, int in, int out, int64_t row_bytes, cudaStream_t stream) {
  const int64_t blocks = kSwiglu ? ceil_div(out / 2, kRows / 2) : ceil_div(out, kRows * kTiles);
  const dim3 grid((unsigned)blocks);
  if (warps_for<QT, T, NT, kTiles, kSwiglu>(blocks, in / Step<QT, T>::kValues) == 4)
    return launch_kernel(kernel_of<QT, T, NT, 4, kTiles, kSwiglu>(), grid, 4 * kWarpSize,
                         smem_bytes<QT, T, NT, 4, kTiles>(in), stream, 1, x, w, y, in, out, row_bytes);
  return launch_kernel(kernel_of<QT, T, NT, 8, kTiles, kSwiglu>(), grid, 8 * kWarpSize,
                       smem_bytes<QT, T, NT, 8, kTiles>(in), stream, 1, x, w, y, in, out, row_bytes);
}

// Two row tiles a block (q4_k, one token) when their grid still fills the GPU with one wave of 8-warp
// blocks (the 4096-row matrices of a 7B would not: 128 blocks): the activations' share of a step's work
// is then paid once for 32 rows. KUIPER_QUANT_GEMV_TILES=1|2 pins it for measurements. kSwiglu: one tile
// (launch_tiles).
template <DType QT, typename T, int NT, bool kSwiglu>
Status launch_nt(const T* x, const uint8_t* w, T* y, int in, int out, int64_t row_bytes, cudaStream_t stream) {
  if constexpr (NT == 1 && Step<QT, T>::kTwoTiles && !kSwiglu) {
    static const int pinned = [] {
      const char* e = std::getenv("KUIPER_QUANT_GEMV_TILES");
      return e != nullptr ? std::atoi(e) : 0;
    }();
    const bool two = pinned == 2 || (pinned != 1 && ceil_div(out, 2 * kRows) >= resident_blocks<QT, T, NT, 8, 2>());
    if (two) return launch_tiles<QT, T, NT, 2>(x, w, y, in, out, row_bytes, stream);
  }
  return launch_tiles<QT, T, NT, 1, kSwiglu>(x, w, y, in, out, row_bytes, stream);
}

template <DType QT, typename T, bool kSwiglu>
Status launch_typed(const Tensor& x, const ConstTensor& weight, Tensor& y, cudaStream_t stream) {
  const int n = (int)x.dim(0), in = (int)x.dim(1), out = (int)weight.dim(0);
  const int64_t row_bytes = (int64_t)base::dtype_bytes(QT, in);
  const T* xp = static_cast<const T*>(x.data());
  const uint8_t* wp = static_cast<const uint8_t*>(weight.data());
  T* yp = static_cast<T*>(y.data());
  switch (n) {
    case 1:
      return launch_nt<QT, T, 1, kSwiglu>(xp, wp, yp, in, out, row_bytes, stream);
    case 2:
      return launch_nt<QT, T, 2, kSwiglu>(xp, wp, yp, in, out, row_bytes, stream);
    case 3:
      return launch_nt<QT, T, 3, kSwiglu>(xp, wp, yp, in, out, row_bytes, stream);
    default:
      return launch_nt<QT, T, 4, kSwiglu>(xp, wp, yp, in, out, row_bytes, stream);
  }
}

// The instance for the activations' and the weight's types (fp16 / bf16; q4_k, q6_k, q8_0).
template <bool kSwiglu>
Status launch_block_type(const char* op, const Tensor& x, const ConstTensor& weight, Tensor& y, cudaStream_t stream) {
  const DType qt = weight.dtype();
  return dispatch_float(x.dtype(), op, [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float>) {
      return base::Internal(std::string(op) + ": the tensor-core block GEMV takes fp16 / bf16 activations");
    } else {
      switch (qt) {
        case DType::kQ4_K:
          return launch_typed<DType::kQ4_K, T, kSwiglu>(x, weight, y, stream);
        case DType::kQ6_K:
          return launch_typed<DType::kQ6_K, T, kSwiglu>(x, weight, y, stream);
        case DType::kQ8_0:
          return launch_typed<DType::kQ8_0, T, kSwiglu>(x, weight, y, stream);
        default:
          return base::Internal(std::string(op) + ": no tensor-core GEMV for " + base::dtype_name(qt));
      }
    }
  });
}

// Whether matmul_swiglu() on a block type runs the fused kernel (the default: one kernel a layer fewer,
// measured 1.1% faster on Llama-2-7B Q4_K_M, run 23) or, with KUIPER_QUANT_SWIGLU=separate, the GEMV and
// the swiglu kernel one after the other (for measurements).
bool swiglu_chosen() {
  static const bool fused = [] {
    const char* e = std::getenv("KUIPER_QUANT_SWIGLU");
    return e == nullptr || std::string(e) != "separate";
  }();
  return fused;
}

// Which decode GEMV the block types use: this one (default) or quant_matmul.cu's warp-per-row kernel,
// KUIPER_QUANT_GEMV=mma|vec, for measurements.
bool mma_chosen() {
  static const bool mma = [] {
    const char* e = std::getenv("KUIPER_QUANT_GEMV");
    return !(e != nullptr && std::string(e) == "vec");
  }();
  return mma;
}

}  // namespace

bool quant_gemv_mma_takes(const Tensor& x, const ConstTensor& weight) {
  const DType qt = weight.dtype();
  if (qt != DType::kQ4_K && qt != DType::kQ6_K && qt != DType::kQ8_0) return false;
  if (x.dtype() != DType::kFp16 && x.dtype() != DType::kBf16) return false;
  if (!mma_chosen() || x.dim(0) < 1 || x.dim(0) > kQuantMmaMaxTokens) return false;
  if (x.dim(0) == 1 && x.dim(1) > kMaxStagedX) return false;
  const int64_t in = x.dim(1), step = 256;
  if (in % step != 0 || in > INT_MAX || weight.dim(0) > INT_MAX) return false;
  // 16-byte loads of q4_k rows (144 bytes a block keeps every row 16-byte aligned); q6_k / q8_0 copy
  // the aligned 16-byte words around each step, up to 15 bytes past the tensor.
  const uint64_t room = weight.buffer()->size() - weight.byte_offset();
  const bool vec_x = is_aligned(x.data(), 16);
  if (qt == DType::kQ4_K) return vec_x && is_aligned(weight.data(), 16);
  return vec_x && is_aligned(weight.data(), 2) && room >= weight.nbytes() + 16;
}

Status quant_gemv_mma(const Tensor& x, const ConstTensor& weight, Tensor& y, cudaStream_t stream) {
  return launch_block_type<false>("matmul", x, weight, y, stream);
}

bool quant_gemv_mma_swiglu_takes(const Tensor& x, const ConstTensor& w13) {
  if (!quant_gemv_mma_takes(x, w13) || w13.dim(0) % 2 != 0) return false;
  // A block's up rows lie hidden rows past its gate rows: the copies keep that offset in 32 bits.
  const uint64_t row_bytes = base::dtype_bytes(w13.dtype(), x.dim(1));
  return (uint64_t)(w13.dim(0) / 2 + kRows) * row_bytes < (1ull << 32);
}

Status quant_gemv_mma_swiglu(const Tensor& x, const ConstTensor& w13, Tensor& out, cudaStream_t stream) {
  return launch_block_type<true>("matmul_swiglu", x, w13, out, stream);
}

Status quant_gemv_mma_swiglu_fused(const Tensor& x, const ConstTensor& w13, Tensor& out, cudaStream_t stream,
                                   bool* fused) {
  *fused = swiglu_chosen() && quant_gemv_mma_swiglu_takes(x, w13);
  return *fused ? quant_gemv_mma_swiglu(x, w13, out, stream) : Status::Ok();
}

}  // namespace kernel::cuda
