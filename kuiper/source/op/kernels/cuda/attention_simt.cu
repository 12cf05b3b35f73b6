// Causal grouped-query attention on the CUDA cores: any activation dtype (fp32 too) and head_dim 8 .. 128.
// The fallback of the tensor-core kernels (flash_attention.cu), and the A/B baseline for them
// (KUIPER_ATTENTION=simt, attention.cu). K/V rows are read through KvRows (kv_rows.cuh), so the
// caches may be paged, and decode takes a batch of sequences.
//
// Prefill (n > 1): attention_kernel. A block owns one KV head and up to kWarps "rows", a row being one
// (query token, query head of that KV head's group) pair, one warp per row. The block walks its key
// range [0, pos + last query of the block] in tiles of kKeyTile keys: it stages the tile's K and V rows
// (converted to fp32) in shared memory once for all its rows, lane j of each warp scores key j, earlier
// queries of the block mask the keys they may not see, and the warp folds the tile into a running
// (max m, sum l, acc[head_dim]) with the online-softmax update
//   m' = max(m, max_j s_j);  l' = l e^(m - m') + sum_j e^(s_j - m');  acc' = acc e^(m - m') + sum_j e^(s_j - m') v_j.
//
// Decode (n == 1): decode_attention_kernel, split-K "flash decoding" in one launch. Decode attention is
// bound by reading K and V (2 * kv_len * n_kv_heads * head_dim elements per layer), so:
//  - a block serves one (sequence, KV head) and up to kH of the query heads of its group, so each K/V
//    row is read once for those heads (grid.y covers larger groups);
//  - the keys [0, pos] are cut into S equal chunks, one per block of a thread-block cluster of S blocks
//    (grid.x = S). The chunk length is computed on the device from pos, so one captured graph serves
//    every step, and every block has a similar share of the work at any context length;
//  - within a block each warp streams its own keys straight from global memory, kDecodeLoads 16-byte
//    loads of K and as many of V in flight per lane (a K row is read by head_dim / (16 / sizeof(T))
//    lanes), and keeps its own online softmax; the warps are merged through shared memory;
//  - the S blocks of the cluster store their partials into the first block's shared memory
//    (distributed shared memory), and after one cluster barrier that block merges them:
//      M = max_c m_c;  out = sum_c e^(m_c - M) acc_c / sum_c e^(m_c - M) l_c,
//    so there is no second kernel and no global scratch. Before a block stores into split 0 it waits on
//    a cluster barrier it arrived at on entry (split 0 must have started).
// On an H100, 32 MHA heads of 128: 4.2 us at pos 100, 29.8 us at pos 4000 (2.2 TB/s); the kernel it
// replaced (64 fixed splits through global scratch plus a combine kernel) took 7.9 and 62.8 us.
// docs/perf_notes.md has the measurements and what is left.
// Scores are kept in base 2: q is pre-scaled by log2(e) / sqrt(head_dim) so exp2f does the exponentials.
//
// Positions come from SeqStarts (device), clamped to the cache; the host keeps them in range.
#include <cooperative_groups.h>

#include <climits>
#include <utility>

#include "kernels/cuda/attention_call.cuh"
#include "kernels/cuda/cuda_common.cuh"

namespace kernel::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kKeyTile = 32;       // prefill: keys per shared-memory tile (lane j of a warp scores key j)
constexpr int kPrefillWarps = 8;   // prefill: rows per block
// decode: 16-byte loads of K (and as many of V) in flight per lane, and warps per block, by heads per
// block: 32 KiB in flight per block either way, and kH = 4 stays near 200 registers. (8 warps of 8
// loads measured no faster at long context and 25% slower for MHA at pos 100, docs/perf_notes.md.)
template <int kH> constexpr int kDecodeLoads = kH == 4 ? 4 : 8;
template <int kH> constexpr int kDecodeWarps = kH == 4 ? 8 : 4;
constexpr int kMaxClusterSplits = 8;  // decode: blocks per cluster (8 is the portable cluster size)

// ---------------------------------------------------------------------------------------------------
// Prefill attention (n > 1). q, out: T [n, n_heads * HD]; k_cache, v_cache: T [rows, n_kv_heads * HD]
// (16-byte aligned), sequence 0 of `rows`; scale = 1 / sqrt(HD).
// grid = (n_kv_heads, ceil(n * group / kWarps)), block = kWarps warps.
// __launch_bounds__ asks for two resident blocks per SM (<= 128 registers at 8 warps): with the bare
// thread bound ptxas capped some instances at 48 registers and spilled.
template <typename T, int HD, int kWarps>
static __global__ void __launch_bounds__(kWarps* kWarpSize, 2)
    attention_kernel(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                     KvRows rows, SeqStarts starts, int n, int n_heads, int n_kv_heads, float scale,
                     T* __restrict__ out) {
  constexpr int kDimsPerLane = (HD + kWarpSize - 1) / kWarpSize;
  constexpr int kPer = kVec16<T>;              // elements per 16-byte load
  constexpr int kPiecesPerRow = HD / kPer;     // 16-byte pieces of one head's K (or V) row
  static_assert(HD % kPer == 0, "a head's row must be whole 16-byte pieces");
  __shared__ float ks[kKeyTile][HD + 1];  // +1: lane j reads row j, an odd stride spreads the banks
  __shared__ float vs[kKeyTile][HD];      // read along HD by the lanes: conflict-free unpadded
  __shared__ float qs[kWarps][HD];        // each warp's query, pre-scaled

  pdl_wait();
  pdl_trigger();
  const int group = n_heads / n_kv_heads;
  const int kv_head = blockIdx.x;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int n_rows = n * group;
  const int row0 = blockIdx.y * kWarps;
  const int row = row0 + warp;
  const bool active = row < n_rows;  // warp-uniform
  const int qi = active ? row / group : 0;
  const int head = kv_head * group + (active ? row % group : 0);

  const int pos = starts.first(0, n);  // pos + n <= max_len
  // This row sees keys [0, limit); the block needs keys up to its last row's limit.
  const int limit = pos + qi + 1;
  const int last_q = (min(row0 + kWarps, n_rows) - 1) / group;
  const int k_end = pos + last_q + 1;

  if (active) {
    const T* qrow = q + ((int64_t)qi * n_heads + head) * HD;
    for (int d = lane; d < HD; d += kWarpSize) qs[warp][d] = to_float(qrow[d]) * scale;
  }  // read only after the first tile's barriers

  const int64_t kv_stride = (int64_t)n_kv_heads * HD;
  const T* kbase = k_cache + (int64_t)kv_head * HD;
  const T* vbase = v_cache + (int64_t)kv_head * HD;
  float m = -INFINITY, l = 0.f;
  float acc[kDimsPerLane];
#pragma unroll
  for (int r = 0; r < kDimsPerLane; ++r) acc[r] = 0.f;

  for (int t0 = 0; t0 < k_end; t0 += kKeyTile) {
    const int tile_len = min(kKeyTile, k_end - t0);
    __syncthreads();  // every warp is done with the previous tile
#pragma unroll 4
    for (int e = threadIdx.x; e < kKeyTile * kPiecesPerRow; e += kWarps * kWarpSize) {
      const int j = e / kPiecesPerRow, d0 = (e % kPiecesPerRow) * kPer;
      float kf[kPer], vf[kPer];
      if (j < tile_len) {
        const int64_t off = rows.row(0, t0 + j) * kv_stride + d0;
        load_floats<T, kPer>(kbase + off, kf);
        load_floats<T, kPer>(vbase + off, vf);
      } else {  // rows past the range are never weighted; zeros keep cache poison out of the sums
#pragma unroll
        for (int c = 0; c < kPer; ++c) kf[c] = vf[c] = 0.f;
      }
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        ks[j][d0 + c] = kf[c];
        vs[j][d0 + c] = vf[c];
      }
    }
    __syncthreads();
    if (!active) continue;

    const bool valid = lane < tile_len && t0 + lane < limit;
    float s = -INFINITY;
    if (valid) {
      s = 0.f;
#pragma unroll
      for (int d = 0; d < HD; ++d) s = fmaf(qs[warp][d], ks[lane][d], s);
    }
    const float m_new = fmaxf(m, warp_max(s));
    if (m_new == -INFINITY) continue;  // warp-uniform: no key of this row seen yet
    const float corr = expf(m - m_new);  // 0 while m is -inf
    const float p = valid ? expf(s - m_new) : 0.f;
    l = l * corr + warp_sum(p);
#pragma unroll
    for (int r = 0; r < kDimsPerLane; ++r) acc[r] *= corr;
    const int n_valid = min(tile_len, limit - t0);  // keys t0 .. t0 + n_valid - 1 are visible
    for (int j = 0; j < n_valid; ++j) {
      const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
      for (int r = 0; r < kDimsPerLane; ++r) {
        const int d = lane + r * kWarpSize;
        if (d < HD) acc[r] = fmaf(pj, vs[j][d], acc[r]);
      }
    }
    m = m_new;
  }
  if (!active) return;

  // l >= 1: key 0 is visible to every row and the largest score contributes e^0.
  const float inv = 1.f / l;
  T* orow = out + ((int64_t)qi * n_heads + head) * HD;
#pragma unroll
  for (int r = 0; r < kDimsPerLane; ++r) {
    const int d = lane + r * kWarpSize;
    if (d < HD) orow[d] = from_float<T>(acc[r] * inv);
  }
}

// ---------------------------------------------------------------------------------------------------
// Decode attention (n == 1), see the file comment.
// q, out: T [batch, n_heads * HD]; k_cache, v_cache: T [rows, n_kv_heads * HD] (16-byte aligned), read
// through `rows`; sequence b's query sits at starts.first(b, 1); qscale = log2(e) / sqrt(HD).
// grid = (S, ceil(group / kH), batch * n_kv_heads), clusters of (S, 1, 1), block = kWarps warps.
//
// Lane layout: a K (or V) row of one head is kLanes = HD / kPer lanes' 16-byte pieces, so a warp load
// covers kRows = 32 / kLanes consecutive keys of the warp's batch; lane = row_in_load * kLanes + piece.
// Each lane holds, per head, the kPer dims of its piece of q and of the output accumulator.
template <typename T, int HD, int kH, int kWarps>
static __global__ void __launch_bounds__(kWarps* kWarpSize)
    decode_attention_kernel(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                            KvRows rows, SeqStarts starts, int n_heads, int n_kv_heads, float qscale,
                            T* __restrict__ out) {
  constexpr int kPer = kVec16<T>;
  constexpr int kLanes = HD / kPer;
  static_assert(HD % kPer == 0 && kLanes <= kWarpSize, "a head's row must be 1 to 32 16-byte pieces");
  constexpr int kRows = kWarpSize / kLanes;
  constexpr int kLoads = kDecodeLoads<kH>;
  constexpr int kBatch = kLoads * kRows;  // keys per warp per step
  __shared__ float warp_ml[kWarps][kH][2];     // each warp's (m, l) per head
  __shared__ float warp_acc[kWarps][kH][HD];   // each warp's unnormalised output per head
  // Split 0 only: every block's partial, written there by each block through distributed shared memory.
  __shared__ float part_ml[kMaxClusterSplits][kH][2];
  __shared__ float part_acc[kMaxClusterSplits][kH][HD];

  pdl_wait();
  pdl_trigger();
  cg::cluster_group cluster = cg::this_cluster();
  // A block may write another block's shared memory only once that block has started: arrive now,
  // wait before the stores to split 0 below (the wait is then long satisfied).
  auto started = cluster.barrier_arrive();
  const int split = blockIdx.x, n_splits = gridDim.x;  // the cluster spans grid.x
  const int group = n_heads / n_kv_heads;
  const int b = blockIdx.z / n_kv_heads, kv_head = blockIdx.z % n_kv_heads;
  const int head0 = kv_head * group + blockIdx.y * kH;
  const int n_h = min(kH, group - (int)blockIdx.y * kH);  // heads of this block; the rest are padding
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int row_in_load = lane / kLanes, d0 = (lane % kLanes) * kPer;

  const int kv_len = starts.first(b, 1) + 1;
  const int chunk = (kv_len + n_splits - 1) / n_splits;
  const int k_begin = min(split * chunk, kv_len), k_end = min(k_begin + chunk, kv_len);

  float qf[kH][kPer];
#pragma unroll
  for (int h = 0; h < kH; ++h) {
    if (h < n_h) {
      load_floats<T, kPer>(q + ((int64_t)b * n_heads + head0 + h) * HD + d0, qf[h]);
#pragma unroll
      for (int i = 0; i < kPer; ++i) qf[h][i] *= qscale;
    } else {
#pragma unroll
      for (int i = 0; i < kPer; ++i) qf[h][i] = 0.f;
    }
  }

  const int64_t kv_stride = (int64_t)n_kv_heads * HD;
  const T* kbase = k_cache + (int64_t)kv_head * HD + d0;
  const T* vbase = v_cache + (int64_t)kv_head * HD + d0;
  float m[kH], l[kH], acc[kH][kPer];
#pragma unroll
  for (int h = 0; h < kH; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int i = 0; i < kPer; ++i) acc[h][i] = 0.f;
  }

  for (int base = k_begin + warp * kBatch; base < k_end; base += kWarps * kBatch) {
    // Every load of the batch is issued before the first is used. Keys past the chunk are not read
    // (the cache beyond pos may hold anything) and get score -inf, weight 0 and V = 0.
    uint4 kw[kLoads], vw[kLoads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const int key = base + u * kRows + row_in_load;
      if (key < k_end) {
        const int64_t off = rows.row(b, key) * kv_stride;
        kw[u] = *reinterpret_cast<const uint4*>(kbase + off);
        vw[u] = *reinterpret_cast<const uint4*>(vbase + off);
      } else {
        kw[u] = vw[u] = make_uint4(0u, 0u, 0u, 0u);
      }
    }
    float s[kH][kLoads];  // scores, then (in place) their weights e^(s - m)
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      float kf[kPer];
      unpack_floats<T, kPer>(&kw[u], kf);
#pragma unroll
      for (int h = 0; h < kH; ++h) {
        float d = 0.f;
#pragma unroll
        for (int i = 0; i < kPer; ++i) d = fmaf(qf[h][i], kf[i], d);
        s[h][u] = d;
      }
    }
    // Sum each row's pieces over its kLanes lanes (all of them get the score), then mask.
#pragma unroll
    for (int o = 1; o < kLanes; o <<= 1)
#pragma unroll
      for (int h = 0; h < kH; ++h)
#pragma unroll
        for (int u = 0; u < kLoads; ++u) s[h][u] += __shfl_xor_sync(0xffffffffu, s[h][u], o);
#pragma unroll
    for (int u = 0; u < kLoads; ++u)
      if (base + u * kRows + row_in_load >= k_end)
#pragma unroll
        for (int h = 0; h < kH; ++h) s[h][u] = -INFINITY;

#pragma unroll
    for (int h = 0; h < kH; ++h) {
      float mx = s[h][0];
#pragma unroll
      for (int u = 1; u < kLoads; ++u) mx = fmaxf(mx, s[h][u]);
#pragma unroll
      for (int o = kLanes; o < kWarpSize; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      // Key `base` is in the chunk, so m_new is finite; corr is 0 on the first batch (m = -inf).
      const float m_new = fmaxf(m[h], mx);
      const float corr = exp2f(m[h] - m_new);
      float sum = 0.f;
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        s[h][u] = exp2f(s[h][u] - m_new);
        sum += s[h][u];
      }
      l[h] = l[h] * corr + sum;  // this lane's row slot only; summed over the slots below
#pragma unroll
      for (int i = 0; i < kPer; ++i) acc[h][i] *= corr;
      m[h] = m_new;
    }
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      float vf[kPer];
      unpack_floats<T, kPer>(&vw[u], vf);
#pragma unroll
      for (int h = 0; h < kH; ++h)
#pragma unroll
        for (int i = 0; i < kPer; ++i) acc[h][i] = fmaf(s[h][u], vf[i], acc[h][i]);
    }
  }

  // Warp totals: sum l and acc over the kRows row slots (m is already warp-uniform).
#pragma unroll
  for (int o = kLanes; o < kWarpSize; o <<= 1)
#pragma unroll
    for (int h = 0; h < kH; ++h) {
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], o);
#pragma unroll
      for (int i = 0; i < kPer; ++i) acc[h][i] += __shfl_xor_sync(0xffffffffu, acc[h][i], o);
    }
  if (row_in_load == 0) {
#pragma unroll
    for (int h = 0; h < kH; ++h) {
#pragma unroll
      for (int i = 0; i < kPer; ++i) warp_acc[warp][h][d0 + i] = acc[h][i];
      if (lane == 0) {
        warp_ml[warp][h][0] = m[h];
        warp_ml[warp][h][1] = l[h];
      }
    }
  }
  __syncthreads();

  // Block partial, stored into split 0's shared memory. A warp (or a whole block, at short context)
  // that saw no key has m = -inf, l = 0, acc = 0: its weight is 0, and a block with no key at all
  // reports m = -inf.
  cluster.barrier_wait(std::move(started));
  float(*dst_ml)[kH][2] = cluster.map_shared_rank(part_ml, 0);
  float(*dst_acc)[kH][HD] = cluster.map_shared_rank(part_acc, 0);
  for (int e = threadIdx.x; e < kH * HD; e += kWarps * kWarpSize) {
    const int h = e / HD, d = e % HD;
    float mb = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mb = fmaxf(mb, warp_ml[w][h][0]);
    float lb = 0.f, ab = 0.f;
    if (mb != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float wt = exp2f(warp_ml[w][h][0] - mb);
        lb = fmaf(wt, warp_ml[w][h][1], lb);
        ab = fmaf(wt, warp_acc[w][h][d], ab);
      }
    }
    dst_acc[split][h][d] = ab;
    if (d == 0) {
      dst_ml[split][h][0] = mb;
      dst_ml[split][h][1] = lb;
    }
  }
  // Every partial has landed in split 0 (the barrier orders the distributed-shared-memory stores).
  // The other blocks may then exit: nothing reads their shared memory.
  cluster.sync();
  if (split != 0) return;

  // Merge. Split 0 holds key 0, so M is finite and L >= 1.
  for (int e = threadIdx.x; e < n_h * HD; e += kWarps * kWarpSize) {
    const int h = e / HD, d = e % HD;
    float mc = -INFINITY;
    for (int r = 0; r < n_splits; ++r) mc = fmaxf(mc, part_ml[r][h][0]);
    float lc = 0.f, ac = 0.f;
    for (int r = 0; r < n_splits; ++r) {
      const float wt = exp2f(part_ml[r][h][0] - mc);
      lc = fmaf(wt, part_ml[r][h][1], lc);
      ac = fmaf(wt, part_acc[r][h][d], ac);
    }
    out[((int64_t)b * n_heads + head0 + h) * HD + d] = from_float<T>(ac / lc);
  }
}

// Blocks per cluster for a cache of max_len rows: 8, fewer only when the cache is too short to give
// every split a full warp batch of keys.
int decode_splits(int max_len) {
  int s = kMaxClusterSplits;
  while (s > 1 && (int64_t)s * 32 > max_len) s /= 2;
  return s;
}

template <typename T, int HD, int kH>
Status launch_decode(const AttentionCall& a, int group, cudaStream_t stream) {
  constexpr int kWarps = kDecodeWarps<kH>;
  const int splits = decode_splits(a.starts.max_len);
  const int64_t z = (int64_t)a.batch * a.n_kv_heads;
  const dim3 grid((unsigned)splits, (unsigned)ceil_div(group, kH), (unsigned)z);
  KP_CHECK_ARG(grid.y <= 65535 && z <= 65535, "attention: too many heads for one call");
  const float qscale = 1.4426950408889634f / sqrtf((float)HD);  // log2(e) / sqrt(head_dim)
  return launch_kernel(decode_attention_kernel<T, HD, kH, kWarps>, grid, kWarps * kWarpSize, 0, stream,
                       (unsigned)splits, static_cast<const T*>(a.q), static_cast<const T*>(a.k_cache),
                       static_cast<const T*>(a.v_cache), a.rows, a.starts, a.n_heads, a.n_kv_heads, qscale,
                       static_cast<T*>(a.out));
}

template <typename T, int HD> Status launch_attention(const AttentionCall& a, cudaStream_t stream) {
  const int group = a.n_heads / a.n_kv_heads;
  if (a.n > 1) {
    const int64_t row_blocks = ceil_div((int64_t)a.n * group, kPrefillWarps);
    KP_CHECK_ARG(row_blocks <= 65535, "attention: too many query rows for one call");
    return launch_kernel(attention_kernel<T, HD, kPrefillWarps>, dim3(a.n_kv_heads, (unsigned)row_blocks, 1),
                         kPrefillWarps * kWarpSize, 0, stream, 1, static_cast<const T*>(a.q),
                         static_cast<const T*>(a.k_cache), static_cast<const T*>(a.v_cache), a.rows, a.starts, a.n,
                         a.n_heads, a.n_kv_heads, 1.f / sqrtf((float)HD), static_cast<T*>(a.out));
  }
  // Heads per block: up to 4 of a group share each K/V read, but with few KV heads that leaves too few
  // blocks: Llama-3-8B's 8 KV heads with 4 heads per block gave 64 blocks, issue-bound at 1.3 TB/s at
  // pos 8000; 2 per block doubles the blocks (the second read of a K/V row mostly hits L2).
  if (group >= 4 && a.n_kv_heads >= 16) return launch_decode<T, HD, 4>(a, group, stream);
  if (group >= 2) return launch_decode<T, HD, 2>(a, group, stream);
  return launch_decode<T, HD, 1>(a, group, stream);
}

}  // namespace

Status simt_attention(const AttentionCall& a, cudaStream_t stream) {
  KP_CHECK_ARG(is_aligned(a.k_cache, 16) && is_aligned(a.v_cache, 16), "attention: K/V cache must be 16-byte aligned");
  // The decode kernel reads each head's slice of q with 16-byte loads.
  KP_CHECK_ARG(a.n > 1 || is_aligned(a.q, 16), "attention: q must be 16-byte aligned");
  return dispatch_float(a.dtype, "attention", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    switch (a.head_dim) {
      case 8: return launch_attention<T, 8>(a, stream);
      case 16: return launch_attention<T, 16>(a, stream);
      case 32: return launch_attention<T, 32>(a, stream);
      case 64: return launch_attention<T, 64>(a, stream);
      case 128: return launch_attention<T, 128>(a, stream);
      default:
        return base::InvalidArgument("attention: head_dim " + std::to_string(a.head_dim) +
                                     " not supported (CUDA kernels: 8, 16, 32, 64, 128)");
    }
  });
}

}  // namespace kernel::cuda
