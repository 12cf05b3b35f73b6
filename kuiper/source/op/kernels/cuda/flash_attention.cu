// Flash attention on the tensor cores (fp16 / bf16, head_dim 64 or 128), prefill and decode.
//
// Both kernels compute, for each query row, softmax(q K^T / sqrt(head_dim)) V over the keys the row may
// see, one tile of keys at a time with the online softmax (scores in base 2, fp32):
//   m' = max(m, max_j s_j);  l' = l 2^(m - m') + sum_j 2^(s_j - m');  o' = o 2^(m - m') + sum_j 2^(s_j - m') v_j
// S = Q K^T and O += P V are mma.sync m16n8k16 products (fp32 accumulators; P is rounded to the
// activation dtype for the second one, as in FlashAttention-2). K and V tiles stream from global memory
// into swizzled shared memory through cp.async (mma.cuh), the next tile(s) in flight while one is used.
// Grouped-query attention packs the query heads of one KV head into the rows of a tile: row r of a
// block of KV head g is (query r / group, head g * group + r % group), so each K/V tile is read from
// global memory once for the whole group. Rows are read through KvRows, so the caches may be paged.
//
// Prefill (n > 1 queries at positions pos .. pos + n - 1, flash_prefill_kernel): a block owns 64 rows
// (16 per warp) and walks the key tiles [0, pos + its last query]; tiles wholly past its rows' causal
// limits are never loaded, and only tiles that cross a limit are masked. Blocks with the most keys start
// first. Two stages of K and V.
//
// Decode (one query per sequence, flash_decode_kernel): a block owns (sequence, KV head, up to 16 query
// heads of the group) and one of S chunks of the keys ("split-K", flash decoding); its 4 warps take 16
// keys each of every 64-key tile, 3 (head_dim 128) or 4 (64) tiles in flight. The chunk length is
// worked out on the device from the sequence's length, so one captured graph serves every position,
// and at short contexts a single chunk writes the output itself. Otherwise each chunk stores its
// partial (m, l, o) to scratch and flash_combine_kernel merges them:
//   M = max_c m_c;  out = sum_c 2^(m_c - M) o_c / sum_c 2^(m_c - M) l_c.
// S is picked on the host from the cache length and the SM count (up to two blocks per SM, one wave).
#include <algorithm>
#include <climits>
#include <string>
#include <type_traits>

#include "kernels/cuda/attention_call.cuh"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/mma.cuh"

namespace kernel::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kPrefillRows = 64;  // query rows per prefill block: 16 per warp
constexpr int kPrefillKeys = 64;  // keys per prefill tile
constexpr int kDecodeRows = 16;   // query heads per decode block (one m16 tile; a group of 4 leaves 12 empty)
constexpr int kDecodeKeys = 64;   // keys per decode tile: 16 per warp
constexpr int kMaxSplits = 64;    // decode chunks per sequence at most
constexpr float kLog2e = 1.4426950408889634f;

template <int HD> constexpr int kDecodeStages = HD == 128 ? 3 : 4;

template <typename T> struct FlashParams {
  const T* q;       // [batch * n, n_heads * HD]
  const T* k;       // cache [rows, n_kv_heads * HD]
  const T* v;       // cache, same layout
  T* out;           // [batch * n, n_heads * HD]
  KvRows rows;
  SeqStarts starts;
  int n, n_heads, n_kv_heads;
  float qscale;     // log2(e) / sqrt(HD)
  float* part_o;    // fp32 [batch, n_heads, splits, HD]: each decode chunk's unnormalised output
  float* part_ml;   // fp32 [batch, n_heads, splits, 2]: its (m, l)
};

// Keys per decode chunk for a sequence of kv_len keys cut into at most `splits` chunks: whole tiles, so
// a chunk is a run of full tiles except at the end. Chunks in use: ceil(kv_len / chunk) <= splits.
__host__ __device__ __forceinline__ int decode_chunk(int kv_len, int splits) {
  const int c = (kv_len + splits - 1) / splits;
  return (c + kDecodeKeys - 1) / kDecodeKeys * kDecodeKeys;
}

// Issues the cp.async copies of keys [t0, t0 + kKeys) of one KV head into the swizzled K and V tiles;
// keys at or past k_end are zero-filled (never read from the cache: the rows past a sequence may hold
// anything, and a zero V row keeps a NaN out of P V even where P is 0).
// k_head, v_head: the head's first element in the caches; kv_stride: elements per cache row.
template <typename T, int HD, int kKeys>
__device__ __forceinline__ void load_kv_tile(T* ks, T* vs, const T* k_head, const T* v_head, int64_t kv_stride,
                                             const KvRows& rows, int b, int t0, int k_end) {
  using Tile = SwizzledRows<HD>;
  constexpr int kRowStep = kThreads / Tile::kChunks;
  static_assert(kKeys % kRowStep == 0, "every thread copies the same number of rows");
  const int c = threadIdx.x % Tile::kChunks;
#pragma unroll
  for (int r = threadIdx.x / Tile::kChunks; r < kKeys; r += kRowStep) {
    const int t = t0 + r;
    const bool ok = t < k_end;
    const int64_t off = ok ? rows.row(b, t) * kv_stride + c * 8 : 0;
    cp_async_16(ks + Tile::offset(r, c), k_head + off, ok);
    cp_async_16(vs + Tile::offset(r, c), v_head + off, ok);
  }
}

// This warp's A fragments of its 16 rows of the Q tile (rows row0 .. row0 + 15), all of HD.
template <int HD, typename T>
__device__ __forceinline__ void load_q_fragments(uint32_t (&qf)[HD / 16][4], const T* qs, int row0) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk)
    ldmatrix_x4(qf[kk], qs + SwizzledRows<HD>::offset(row0 + lane % 16, kk * 2 + lane / 16));
}

// s[2 j + i] += Q K^T for keys key0 + 16 j + 8 i .. + 7 of the K tile, j < kPairs (C fragments).
template <typename T, int HD, int kPairs>
__device__ __forceinline__ void qk_tile(float (&s)[2 * kPairs][4], const uint32_t (&qf)[HD / 16][4], const T* ks,
                                        int key0) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
    for (int j = 0; j < kPairs; ++j) {
      // Matrices: keys +0..7 / dims +0..7, keys +0..7 / dims +8..15, keys +8..15 / dims +0..7, +8..15 / +8..15.
      uint32_t kb[4];
      ldmatrix_x4(kb, ks + SwizzledRows<HD>::offset(key0 + 16 * j + lane % 8 + (lane / 16) * 8, kk * 2 + (lane / 8) % 2));
      mma_m16n8k16<T>(s[2 * j], qf[kk], kb[0], kb[1]);
      mma_m16n8k16<T>(s[2 * j + 1], qf[kk], kb[2], kb[3]);
    }
}

// o += P V for keys key0 .. key0 + 16 kPairs - 1 of the V tile; p holds their weights (C fragments).
template <typename T, int HD, int kPairs>
__device__ __forceinline__ void pv_tile(float (&o)[HD / 8][4], const float (&p)[2 * kPairs][4], const T* vs,
                                        int key0) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int j = 0; j < kPairs; ++j) {
    const uint32_t pa[4] = {pack2<T>(p[2 * j][0], p[2 * j][1]), pack2<T>(p[2 * j][2], p[2 * j][3]),
                            pack2<T>(p[2 * j + 1][0], p[2 * j + 1][1]), pack2<T>(p[2 * j + 1][2], p[2 * j + 1][3])};
#pragma unroll
    for (int dp = 0; dp < HD / 16; ++dp) {
      // Transposed matrices: keys +0..7 / dims +0..7, keys +8..15 / dims +0..7, +0..7 / +8..15, +8..15 / +8..15.
      uint32_t vb[4];
      ldmatrix_x4_trans(vb, vs + SwizzledRows<HD>::offset(key0 + 16 * j + lane % 8 + ((lane / 8) % 2) * 8,
                                                          dp * 2 + lane / 16));
      mma_m16n8k16<T>(o[2 * dp], pa, vb[0], vb[1]);
      mma_m16n8k16<T>(o[2 * dp + 1], pa, vb[2], vb[3]);
    }
  }
}

// The online-softmax step for this thread's two rows (g and g + 8 of the warp's 16) over the scores s
// (already scaled to base 2 and masked with -inf): updates m, l (this thread's columns only) and o,
// and turns s into the weights 2^(s - m). A row with no visible key yet keeps m = -inf, l = 0, o = 0.
template <int kTiles, int kOTiles>
__device__ __forceinline__ void online_softmax(float (&s)[kTiles][4], float (&m)[2], float (&l)[2],
                                               float (&o)[kOTiles][4]) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float mx = m[i];
#pragma unroll
    for (int j = 0; j < kTiles; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * i], s[j][2 * i + 1]));
    // The four lanes of a quad hold the same rows.
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float base = mx == -INFINITY ? 0.f : mx;  // all masked so far: weights 2^-inf = 0
    const float corr = exp2f(m[i] - base);          // 0 while m is -inf
    m[i] = mx;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      s[j][2 * i] = exp2f(s[j][2 * i] - base);
      s[j][2 * i + 1] = exp2f(s[j][2 * i + 1] - base);
      sum += s[j][2 * i] + s[j][2 * i + 1];
    }
    l[i] = l[i] * corr + sum;
#pragma unroll
    for (int d = 0; d < kOTiles; ++d) {
      o[d][2 * i] *= corr;
      o[d][2 * i + 1] *= corr;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Prefill. p.q, p.out: T [n, n_heads * HD] (16-byte aligned rows); caches through p.rows (sequence 0).
// grid = (n_kv_heads, ceil(n * group / 64)), block = 4 warps, dynamic shared memory = kPrefillSmem bytes:
// Q [64][HD], then two stages of K [64][HD] and V [64][HD], all swizzled.
template <int HD> constexpr int kPrefillSmem = (kPrefillRows + 4 * kPrefillKeys) * HD * 2;

template <typename T, int HD>
static __global__ void __launch_bounds__(kThreads, 2) flash_prefill_kernel(FlashParams<T> p) {
  extern __shared__ uint4 smem_words[];  // uint4: 16-byte aligned for cp.async
  T* qs = reinterpret_cast<T*>(smem_words);
  T* stage_base = qs + kPrefillRows * HD;
  constexpr int kTile = kPrefillKeys * HD;  // elements of one K (or V) tile
  using Tile = SwizzledRows<HD>;

  pdl_wait();
  pdl_trigger();
  const int group = p.n_heads / p.n_kv_heads;
  const int kv_head = blockIdx.x;
  const int row0 = (gridDim.y - 1 - blockIdx.y) * kPrefillRows;  // the last rows (most keys) first
  const int n_rows = p.n * group;
  const int pos = p.starts.first(0, p.n);
  const int first_q = row0 / group, last_q = (min(row0 + kPrefillRows, n_rows) - 1) / group;
  const int k_end = pos + last_q + 1;         // the block's rows see keys [0, k_end) at most
  const int all_see = pos + first_q + 1;      // ... and every one of them sees keys [0, all_see)
  const int n_tiles = (k_end + kPrefillKeys - 1) / kPrefillKeys;
  const int64_t kv_stride = (int64_t)p.n_kv_heads * HD;
  const T* k_head = p.k + (int64_t)kv_head * HD;
  const T* v_head = p.v + (int64_t)kv_head * HD;

  {  // Q tile; rows past n * group are zeros (computed, never stored)
    const int c = threadIdx.x % Tile::kChunks;
#pragma unroll
    for (int r = threadIdx.x / Tile::kChunks; r < kPrefillRows; r += kThreads / Tile::kChunks) {
      const int R = row0 + r;
      const bool ok = R < n_rows;
      const int64_t off = ok ? ((int64_t)(R / group) * p.n_heads + kv_head * group + R % group) * HD + c * 8 : 0;
      cp_async_16(qs + Tile::offset(r, c), p.q + off, ok);
    }
  }
  cp_async_commit();
  load_kv_tile<T, HD, kPrefillKeys>(stage_base, stage_base + kTile, k_head, v_head, kv_stride, p.rows, 0, 0, k_end);
  cp_async_commit();

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  int limit[2];  // this thread's rows (g, g + 8 of the warp's 16) see keys <= limit
#pragma unroll
  for (int i = 0; i < 2; ++i) limit[i] = pos + min(row0 + warp * 16 + g + 8 * i, n_rows - 1) / group;

  uint32_t qf[HD / 16][4];
  float o[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int j = 0; j < n_tiles; ++j) {
    if (j + 1 < n_tiles) {
      T* next = stage_base + ((j + 1) & 1) * 2 * kTile;
      load_kv_tile<T, HD, kPrefillKeys>(next, next + kTile, k_head, v_head, kv_stride, p.rows, 0,
                                        (j + 1) * kPrefillKeys, k_end);
    }
    cp_async_commit();  // possibly empty: keeps one group per iteration
    cp_async_wait<1>(); // Q and tile j have landed (for this thread) ...
    __syncthreads();    // ... and for every thread
    if (j == 0) load_q_fragments<HD>(qf, qs, warp * 16);
    const T* ks = stage_base + (j & 1) * 2 * kTile;
    const T* vs = ks + kTile;
    const int t0 = j * kPrefillKeys;

    float s[kPrefillKeys / 8][4];
#pragma unroll
    for (int c = 0; c < kPrefillKeys / 8; ++c) s[c][0] = s[c][1] = s[c][2] = s[c][3] = 0.f;
    qk_tile<T, HD, kPrefillKeys / 16>(s, qf, ks, 0);
    const bool masked = t0 + kPrefillKeys > all_see;  // block-uniform
#pragma unroll
    for (int c = 0; c < kPrefillKeys / 8; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[c][e] * p.qscale;
        if (masked && t0 + c * 8 + 2 * t + (e & 1) > limit[e >> 1]) x = -INFINITY;
        s[c][e] = x;
      }
    online_softmax(s, m, l, o);
    pv_tile<T, HD, kPrefillKeys / 16>(o, s, vs, 0);
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  cp_async_wait<0>();

  // Key 0 is visible to every row, so l >= 1 after the quad's partial sums are added.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    const int R = row0 + warp * 16 + g + 8 * i;
    if (R >= n_rows) continue;
    const float inv = 1.f / l[i];
    T* orow = p.out + ((int64_t)(R / group) * p.n_heads + kv_head * group + R % group) * HD;
#pragma unroll
    for (int d = 0; d < HD / 8; ++d)
      *reinterpret_cast<uint32_t*>(orow + d * 8 + 2 * t) = pack2<T>(o[d][2 * i] * inv, o[d][2 * i + 1] * inv);
  }
}

// ---------------------------------------------------------------------------------------------------
// Decode. p.q, p.out: T [batch, n_heads * HD]; sequence b's one query sits at p.starts.first(b, 1).
// grid = (S, ceil(group / 16), batch * n_kv_heads), block = 4 warps, dynamic shared memory =
// kDecodeSmem: Q [16][HD], then kStages stages of K [64][HD] and V [64][HD]; after the loop the stages
// hold the warps' partials for the merge.
template <int HD> constexpr int kDecodeSmem = (kDecodeRows + kDecodeStages<HD> * 2 * kDecodeKeys) * HD * 2;

template <typename T, int HD>
static __global__ void __launch_bounds__(kThreads) flash_decode_kernel(FlashParams<T> p) {
  extern __shared__ uint4 smem_words[];
  constexpr int kStages = kDecodeStages<HD>;
  constexpr int kTile = kDecodeKeys * HD;
  using Tile = SwizzledRows<HD>;
  T* qs = reinterpret_cast<T*>(smem_words);
  T* stage_base = qs + kDecodeRows * HD;

  pdl_wait();
  pdl_trigger();
  const int split = blockIdx.x, n_splits = gridDim.x;
  const int b = blockIdx.z / p.n_kv_heads, kv_head = blockIdx.z % p.n_kv_heads;
  const int group = p.n_heads / p.n_kv_heads;
  const int head0 = kv_head * group + blockIdx.y * kDecodeRows;
  const int n_h = min(kDecodeRows, group - (int)blockIdx.y * kDecodeRows);
  const int kv_len = p.starts.first(b, 1) + 1;
  const int chunk = decode_chunk(kv_len, n_splits);
  const int n_used = (kv_len + chunk - 1) / chunk;
  if (split >= n_used) return;  // a short sequence: fewer chunks than blocks
  const int k_begin = split * chunk, k_end = min(k_begin + chunk, kv_len);
  const int n_tiles = (k_end - k_begin + kDecodeKeys - 1) / kDecodeKeys;
  const int64_t kv_stride = (int64_t)p.n_kv_heads * HD;
  const T* k_head = p.k + (int64_t)kv_head * HD;
  const T* v_head = p.v + (int64_t)kv_head * HD;

  {  // Q: the block's heads; rows past n_h are zeros
    const int c = threadIdx.x % Tile::kChunks;
    for (int r = threadIdx.x / Tile::kChunks; r < kDecodeRows; r += kThreads / Tile::kChunks) {
      const bool ok = r < n_h;
      const int64_t off = ok ? ((int64_t)b * p.n_heads + head0 + r) * HD + c * 8 : 0;
      cp_async_16(qs + Tile::offset(r, c), p.q + off, ok);
    }
  }
  cp_async_commit();
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < n_tiles)
      load_kv_tile<T, HD, kDecodeKeys>(stage_base + st * 2 * kTile, stage_base + st * 2 * kTile + kTile, k_head,
                                       v_head, kv_stride, p.rows, b, k_begin + st * kDecodeKeys, k_end);
    cp_async_commit();
  }

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  uint32_t qf[HD / 16][4];
  float o[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int j = 0; j < n_tiles; ++j) {
    const int ahead = j + kStages - 1;
    if (ahead < n_tiles) {
      T* st = stage_base + (ahead % kStages) * 2 * kTile;
      load_kv_tile<T, HD, kDecodeKeys>(st, st + kTile, k_head, v_head, kv_stride, p.rows, b,
                                       k_begin + ahead * kDecodeKeys, k_end);
    }
    cp_async_commit();
    cp_async_wait<kStages - 1>();  // Q and tile j have landed
    __syncthreads();
    if (j == 0) load_q_fragments<HD>(qf, qs, 0);
    const T* ks = stage_base + (j % kStages) * 2 * kTile;
    const T* vs = ks + kTile;
    const int key0 = k_begin + j * kDecodeKeys + warp * 16;  // this warp's 16 keys

    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    qk_tile<T, HD, 1>(s, qf, ks, warp * 16);
#pragma unroll
    for (int c = 0; c < 2; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[c][e] = key0 + c * 8 + 2 * t + (e & 1) < k_end ? s[c][e] * p.qscale : -INFINITY;
    online_softmax(s, m, l, o);
    pv_tile<T, HD, 1>(o, s, vs, warp * 16);
    __syncthreads();
  }
  cp_async_wait<0>();

  // Merge the 4 warps through the (now idle) stage memory: each warp's o [16][HD] and (m, l) [16].
  float* red_o = reinterpret_cast<float*>(stage_base);  // [kWarps][16][HD]
  float* red_ml = red_o + kWarps * kDecodeRows * HD;    // [kWarps][16][2]
  static_assert((kWarps * kDecodeRows * (HD + 2)) * 4 <= kStages * 2 * kTile * 2, "merge fits in the stages");
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    float* row = red_o + (warp * kDecodeRows + g + 8 * i) * HD;
#pragma unroll
    for (int d = 0; d < HD / 8; ++d) {
      row[d * 8 + 2 * t] = o[d][2 * i];
      row[d * 8 + 2 * t + 1] = o[d][2 * i + 1];
    }
    if (t == 0) {
      red_ml[(warp * kDecodeRows + g + 8 * i) * 2] = m[i];
      red_ml[(warp * kDecodeRows + g + 8 * i) * 2 + 1] = l[i];
    }
  }
  __syncthreads();

  // Every chunk holds at least one key, so M is finite; warps that saw none weigh 0.
  for (int e = threadIdx.x; e < n_h * HD; e += kThreads) {
    const int r = e / HD, d = e % HD;
    float mb = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mb = fmaxf(mb, red_ml[(w * kDecodeRows + r) * 2]);
    float lb = 0.f, ob = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float wt = exp2f(red_ml[(w * kDecodeRows + r) * 2] - mb);
      lb = fmaf(wt, red_ml[(w * kDecodeRows + r) * 2 + 1], lb);
      ob = fmaf(wt, red_o[(w * kDecodeRows + r) * HD + d], ob);
    }
    const int64_t bh = (int64_t)b * p.n_heads + head0 + r;
    if (n_used == 1) {
      p.out[bh * HD + d] = from_float<T>(ob / lb);
    } else {
      p.part_o[(bh * n_splits + split) * HD + d] = ob;
      if (d == 0) {
        p.part_ml[(bh * n_splits + split) * 2] = mb;
        p.part_ml[(bh * n_splits + split) * 2 + 1] = lb;
      }
    }
  }
}

// Merges the chunks of flash_decode_kernel (see the file comment); a sequence that used one chunk was
// written by it directly. grid = (n_heads, batch), block = HD threads.
template <typename T, int HD>
static __global__ void __launch_bounds__(HD) flash_combine_kernel(FlashParams<T> p, int n_splits) {
  pdl_wait();
  pdl_trigger();
  const int head = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
  const int kv_len = p.starts.first(b, 1) + 1;
  const int n_used = (kv_len + decode_chunk(kv_len, n_splits) - 1) / decode_chunk(kv_len, n_splits);
  if (n_used == 1) return;
  const int64_t bh = (int64_t)b * p.n_heads + head;
  const float* ml = p.part_ml + bh * n_splits * 2;
  const float* po = p.part_o + bh * n_splits * HD + d;
  float mc = -INFINITY;
  for (int c = 0; c < n_used; ++c) mc = fmaxf(mc, ml[2 * c]);
  float lc = 0.f, oc = 0.f;
  for (int c = 0; c < n_used; ++c) {
    const float wt = exp2f(ml[2 * c] - mc);
    lc = fmaf(wt, ml[2 * c + 1], lc);
    oc = fmaf(wt, po[(int64_t)c * HD], oc);
  }
  p.out[bh * HD + d] = from_float<T>(oc / lc);
}

// ---------------------------------------------------------------------------------------------------
// Host side.

template <typename T> FlashParams<T> params_of(const AttentionCall& a, int head_dim) {
  FlashParams<T> p{};
  p.q = static_cast<const T*>(a.q);
  p.k = static_cast<const T*>(a.k_cache);
  p.v = static_cast<const T*>(a.v_cache);
  p.out = static_cast<T*>(a.out);
  p.rows = a.rows;
  p.starts = a.starts;
  p.n = a.n;
  p.n_heads = a.n_heads;
  p.n_kv_heads = a.n_kv_heads;
  p.qscale = kLog2e / sqrtf((float)head_dim);
  return p;
}

// Chunks per sequence for decode: as many as keep the grid within two blocks per SM (one wave: the
// shared memory allows two at head_dim 128; rounding up to 9 chunks for 32 KV heads would leave 24 of
// 288 blocks for a second wave), no more than the cache has tiles, at most kMaxSplits (which bounds
// the scratch).
int decode_splits(int64_t max_len, int64_t blocks_per_split) {
  static const int sms = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
      cudaGetLastError();
      return 132;
    }
    return n;
  }();
  int64_t s = 2 * (int64_t)sms / blocks_per_split;
  s = std::min<int64_t>(s, std::min<int64_t>(kMaxSplits, ceil_div(max_len, kDecodeKeys)));
  return (int)std::max<int64_t>(s, 1);
}

// Checks shared by both launchers: 16-byte aligned rows for cp.async, 4-byte aligned output pairs.
Status check_flash_call(const AttentionCall& a) {
  KP_CHECK_ARG(is_aligned(a.q, 16) && is_aligned(a.k_cache, 16) && is_aligned(a.v_cache, 16),
               "attention: q and the K/V caches must be 16-byte aligned");
  KP_CHECK_ARG(is_aligned(a.out, 4), "attention: out must be 4-byte aligned");
  return Status::Ok();
}

template <typename T, int HD> Status launch_prefill(const AttentionCall& a, cudaStream_t stream) {
  const int group = a.n_heads / a.n_kv_heads;
  const int64_t row_blocks = ceil_div((int64_t)a.n * group, kPrefillRows);
  KP_CHECK_ARG(row_blocks <= 65535 && a.n_kv_heads <= INT_MAX, "attention: too many query rows for one call");
  auto* kernel = flash_prefill_kernel<T, HD>;
  // Per launch: the attribute is per device, and tensor-parallel ranks share this code.
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kPrefillSmem<HD>));
  return launch_kernel(kernel, dim3((unsigned)a.n_kv_heads, (unsigned)row_blocks, 1), kThreads, kPrefillSmem<HD>,
                       stream, 1, params_of<T>(a, HD));
}

template <typename T, int HD> Status launch_decode(const AttentionCall& a, cudaStream_t stream) {
  const int group = a.n_heads / a.n_kv_heads;
  const int row_blocks = (int)ceil_div(group, kDecodeRows);
  const int64_t z = (int64_t)a.batch * a.n_kv_heads;
  KP_CHECK_ARG(z <= 65535 && row_blocks <= 65535 && a.n_heads <= 65535, "attention: too many heads for one call");
  const int splits = decode_splits(a.starts.max_len, z * row_blocks);
  FlashParams<T> p = params_of<T>(a, HD);
  if (splits > 1) {
    const int64_t need = (int64_t)a.batch * a.n_heads * splits * (HD + 2);
    KP_CHECK_ARG(a.scratch != nullptr && a.scratch_floats >= need,
                 "attention: scratch of " + std::to_string(a.scratch_floats) + " floats, decode needs " +
                     std::to_string(need));
    p.part_o = a.scratch;
    p.part_ml = a.scratch + (int64_t)a.batch * a.n_heads * splits * HD;
  }
  auto* kernel = flash_decode_kernel<T, HD>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kDecodeSmem<HD>));
  KP_RETURN_IF_ERROR(launch_kernel(kernel, dim3((unsigned)splits, (unsigned)row_blocks, (unsigned)z), kThreads,
                                   kDecodeSmem<HD>, stream, 1, p));
  if (splits == 1) return Status::Ok();
  return launch_kernel(flash_combine_kernel<T, HD>, dim3((unsigned)a.n_heads, (unsigned)a.batch), HD, 0, stream, 1, p,
                       splits);
}

// Calls f.template operator()<T, HD>() for the call's element type and head_dim.
template <typename F> Status dispatch_flash(const AttentionCall& a, F&& f) {
  KP_RETURN_IF_ERROR(check_flash_call(a));
  auto by_dim = [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    switch (a.head_dim) {
      case 64: return f(TypeTag<T>{}, std::integral_constant<int, 64>{});
      case 128: return f(TypeTag<T>{}, std::integral_constant<int, 128>{});
      default: return base::Internal("attention: no flash kernel for head_dim " + std::to_string(a.head_dim));
    }
  };
  switch (a.dtype) {
    case base::DType::kFp16: return by_dim(TypeTag<__half>{});
    case base::DType::kBf16: return by_dim(TypeTag<__nv_bfloat16>{});
    default: return base::Internal("attention: no flash kernel for dtype " + std::string(base::dtype_name(a.dtype)));
  }
}

}  // namespace

bool flash_attention_supports(base::DType dtype, int head_dim) {
  return (dtype == base::DType::kFp16 || dtype == base::DType::kBf16) && (head_dim == 64 || head_dim == 128);
}

Status flash_prefill(const AttentionCall& a, cudaStream_t stream) {
  return dispatch_flash(a, [&](auto tag, auto hd) -> Status {
    return launch_prefill<typename decltype(tag)::type, decltype(hd)::value>(a, stream);
  });
}

Status flash_decode(const AttentionCall& a, cudaStream_t stream) {
  return dispatch_flash(a, [&](auto tag, auto hd) -> Status {
    return launch_decode<typename decltype(tag)::type, decltype(hd)::value>(a, stream);
  });
}

int64_t flash_decode_scratch_floats(int64_t batch, int n_heads, int head_dim, int64_t max_len) {
  const int64_t splits = std::min<int64_t>(kMaxSplits, ceil_div(max_len, kDecodeKeys));
  return splits > 1 ? batch * n_heads * splits * (head_dim + 2) : 0;
}

}  // namespace kernel::cuda
