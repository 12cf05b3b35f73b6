// KV-cache append and causal grouped-query attention on the GPU.
//
// One kernel serves both phases. A block owns one KV head and up to kWarps "rows", a row being one
// (query token, query head of that KV head's group) pair, one warp per row. The block walks its key
// range in tiles of kKeyTile keys: it stages the tile's K and V rows (converted to fp32) in shared
// memory once for all its rows, lane j of each warp scores key j, and the warp folds the tile into a
// running (max m, sum l, acc[head_dim]) with the online-softmax update
//   m' = max(m, max_j s_j);  l' = l e^(m - m') + sum_j e^(s_j - m');  acc' = acc e^(m - m') + sum_j e^(s_j - m') v_j.
//
//  - Prefill (n > 1): the key range is [0, pos + last query of the block]; earlier queries of the
//    block mask the keys they may not see. The block writes out = acc / l.
//  - Decode (n == 1), split-K "flash decoding": the keys [0, pos] are cut into kDecodeSplits chunks
//    along grid z. The grid is fixed, so a captured graph replays at every step; the chunk length is
//    computed on the device from pos (decode_chunk()), so every live block has a similar share of the
//    work at any context length, and blocks whose chunk starts beyond pos exit at once. Each live block
//    writes its partial (m, l, acc) to scratch and attention_combine_kernel merges the chunks of a head:
//    M = max_c m_c;  out = sum_c e^(m_c - M) acc_c / sum_c e^(m_c - M) l_c.
//    (A fixed chunk of 128 keys with a grid sized for max_seq ran one block per 128 keys serially:
//    17 us at pos 100 for Llama-3-8B shapes on an H100, whatever the context.)
//
// pos is read on the device and clamped to [0, max_seq - 1]; the host keeps it in range.
#include <climits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace kernel::cuda {
namespace {

constexpr int kKeyTile = 32;       // keys per shared-memory tile: lane j of a warp scores key j
constexpr int kDecodeSplits = 64;  // split-K blocks per (KV head, row block) in decode
constexpr int kPrefillWarps = 8;   // rows per prefill block
constexpr int kCombineThreads = 128;  // >= every supported head_dim
constexpr int kCopyThreads = 256;

// Keys per decode split for kv_len visible keys: whole tiles, at least one. The attention and combine
// kernels both derive their chunks from this, so they agree on which splits are live.
__device__ __forceinline__ int decode_chunk(int kv_len) {
  const int per_split = (kv_len + kDecodeSplits - 1) / kDecodeSplits;
  return (per_split + kKeyTile - 1) / kKeyTile * kKeyTile;
}

// ---------------------------------------------------------------------------------------------------
// kv_append: cache rows [pos, pos + n) = k (and v). Both sides are contiguous runs of n * kv_dim
// elements, so the copy is a flat copy of `Word`s (uint4 when 16-byte aligned, else one element).
// k, v: [n, kv_dim]; k_cache, v_cache: [max_seq, kv_dim] (same dtype); words_per_row = kv_dim * elem / word.
// A call whose rows would not fit in the cache writes nothing (the host keeps pos in range).
template <typename Word>
static __global__ void kv_append_kernel(const Word* __restrict__ k, const Word* __restrict__ v,
                                        Word* __restrict__ k_cache, Word* __restrict__ v_cache,
                                        const int32_t* __restrict__ pos, int64_t words_per_row, int64_t n,
                                        int64_t max_seq) {
  const int64_t p = *pos;
  if (p < 0 || p + n > max_seq) return;
  Word* kc = k_cache + p * words_per_row;
  Word* vc = v_cache + p * words_per_row;
  const int64_t total = n * words_per_row;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    kc[e] = k[e];
    vc[e] = v[e];
  }
}

// ---------------------------------------------------------------------------------------------------
// Attention. q, out: T [n, n_heads * HD]; k_cache, v_cache: T [max_seq, n_kv_heads * HD] (16-byte
// aligned); pos: int32 [1] (device); scale = 1 / sqrt(HD).
// grid = (n_kv_heads, ceil(n * group / kWarps), kSplit ? kDecodeSplits : 1), block = kWarps warps.
// kSplit (n == 1 only): part_ml: fp32 [n_heads, kDecodeSplits, 2] (m, l);
// part_acc: fp32 [n_heads, kDecodeSplits, HD].
// __launch_bounds__ asks for two resident blocks per SM (<= 128 registers at 8 warps): with the bare
// thread bound ptxas capped some instances at 48 registers and spilled.
template <typename T, int HD, int kWarps, bool kSplit>
static __global__ void __launch_bounds__(kWarps* kWarpSize, 2)
    attention_kernel(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                     const int32_t* __restrict__ pos_ptr, int n, int n_heads, int n_kv_heads, int max_seq,
                     float scale, T* __restrict__ out, float* __restrict__ part_ml, float* __restrict__ part_acc) {
  constexpr int kDimsPerLane = (HD + kWarpSize - 1) / kWarpSize;
  constexpr int kPer = kVec16<T>;              // elements per 16-byte load
  constexpr int kPiecesPerRow = HD / kPer;     // 16-byte pieces of one head's K (or V) row
  static_assert(HD % kPer == 0, "a head's row must be whole 16-byte pieces");
  __shared__ float ks[kKeyTile][HD + 1];  // +1: lane j reads row j, an odd stride spreads the banks
  __shared__ float vs[kKeyTile][HD];      // read along HD by the lanes: conflict-free unpadded
  __shared__ float qs[kWarps][HD];        // each warp's query, pre-scaled

  const int group = n_heads / n_kv_heads;
  const int kv_head = blockIdx.x;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int n_rows = n * group;
  const int row0 = blockIdx.y * kWarps;
  const int row = row0 + warp;
  const bool active = row < n_rows;  // warp-uniform
  const int qi = active ? row / group : 0;
  const int head = kv_head * group + (active ? row % group : 0);

  int pos = *pos_ptr;
  pos = pos < 0 ? 0 : (pos > max_seq - 1 ? max_seq - 1 : pos);
  // This row sees keys [0, limit); the block needs keys up to its last row's limit.
  const int limit = (int)min((int64_t)pos + qi, (int64_t)max_seq - 1) + 1;
  const int last_q = (min(row0 + kWarps, n_rows) - 1) / group;
  const int block_limit = (int)min((int64_t)pos + last_q, (int64_t)max_seq - 1) + 1;
  int k_begin = 0, k_end = block_limit;
  if constexpr (kSplit) {
    const int chunk = decode_chunk(block_limit);  // n == 1: block_limit = pos + 1 for every row
    k_begin = blockIdx.z * chunk;
    k_end = min(k_begin + chunk, block_limit);
    if (k_begin >= k_end) return;  // whole block: a chunk beyond pos
  }

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

  for (int t0 = k_begin; t0 < k_end; t0 += kKeyTile) {
    const int tile_len = min(kKeyTile, k_end - t0);
    __syncthreads();  // every warp is done with the previous tile
#pragma unroll 4
    for (int e = threadIdx.x; e < kKeyTile * kPiecesPerRow; e += kWarps * kWarpSize) {
      const int j = e / kPiecesPerRow, d0 = (e % kPiecesPerRow) * kPer;
      float kf[kPer], vf[kPer];
      if (j < tile_len) {
        const int64_t off = (int64_t)(t0 + j) * kv_stride + d0;
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

  if constexpr (kSplit) {
    const int64_t slot = (int64_t)head * kDecodeSplits + blockIdx.z;
    if (lane == 0) {
      part_ml[slot * 2] = m;
      part_ml[slot * 2 + 1] = l;
    }
#pragma unroll
    for (int r = 0; r < kDimsPerLane; ++r) {
      const int d = lane + r * kWarpSize;
      if (d < HD) part_acc[slot * HD + d] = acc[r];
    }
  } else {
    // l >= 1: key 0 is visible to every row and the largest score contributes e^0.
    const float inv = 1.f / l;
    T* orow = out + ((int64_t)qi * n_heads + head) * HD;
#pragma unroll
    for (int r = 0; r < kDimsPerLane; ++r) {
      const int d = lane + r * kWarpSize;
      if (d < HD) orow[d] = from_float<T>(acc[r] * inv);
    }
  }
}

// Merges the decode partials of the live splits of each head (exactly those attention_kernel<..., true>
// wrote: the chunks that start at or before pos). grid = n_heads, block = kCombineThreads.
// out: T [1, n_heads * head_dim].
template <typename T>
static __global__ void __launch_bounds__(kCombineThreads)
    attention_combine_kernel(const float* __restrict__ part_ml, const float* __restrict__ part_acc,
                             const int32_t* __restrict__ pos_ptr, int max_seq, int head_dim, T* __restrict__ out) {
  __shared__ float weight[kDecodeSplits];  // e^(m_c - M) per split
  __shared__ float red[kWarpSize];
  const int head = blockIdx.x;
  int pos = *pos_ptr;
  pos = pos < 0 ? 0 : (pos > max_seq - 1 ? max_seq - 1 : pos);
  const int kv_len = pos + 1;
  const int chunk = decode_chunk(kv_len);
  const int live = (kv_len + chunk - 1) / chunk;  // <= kDecodeSplits
  const float* ml = part_ml + (int64_t)head * kDecodeSplits * 2;
  float m = -INFINITY;
  for (int c = threadIdx.x; c < live; c += blockDim.x) m = fmaxf(m, ml[2 * c]);
  m = block_max(m, red);
  float l = 0.f;
  for (int c = threadIdx.x; c < live; c += blockDim.x) {
    const float w = expf(ml[2 * c] - m);
    weight[c] = w;
    l += ml[2 * c + 1] * w;
  }
  l = block_sum(l, red);  // its barriers also publish weight[]
  const float inv = 1.f / l;
  const float* acc = part_acc + (int64_t)head * kDecodeSplits * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float s = 0.f;
    for (int c = 0; c < live; ++c) s = fmaf(weight[c], acc[(int64_t)c * head_dim + d], s);
    out[(int64_t)head * head_dim + d] = from_float<T>(s * inv);
  }
}

struct AttentionArgs {
  const void* q;
  const void* k_cache;
  const void* v_cache;
  const int32_t* pos;
  int n, n_heads, n_kv_heads, max_seq;
  float scale;
  float* part_ml;   // scratch: fp32 [n_heads, kDecodeSplits, 2]
  float* part_acc;  // scratch: fp32 [n_heads, kDecodeSplits, head_dim]
  void* out;
};

template <typename T, int HD, int kWarps, bool kSplit>
void launch_attention_kernel(const AttentionArgs& a, dim3 grid, cudaStream_t stream) {
  attention_kernel<T, HD, kWarps, kSplit><<<grid, kWarps * kWarpSize, 0, stream>>>(
      static_cast<const T*>(a.q), static_cast<const T*>(a.k_cache), static_cast<const T*>(a.v_cache), a.pos, a.n,
      a.n_heads, a.n_kv_heads, a.max_seq, a.scale, static_cast<T*>(a.out), a.part_ml, a.part_acc);
}

template <typename T, int HD> Status launch_attention(const AttentionArgs& a, cudaStream_t stream) {
  const int group = a.n_heads / a.n_kv_heads;
  if (a.n > 1) {
    const int64_t row_blocks = ceil_div((int64_t)a.n * group, kPrefillWarps);
    KP_CHECK_ARG(row_blocks <= 65535, "attention: too many query rows for one call");
    launch_attention_kernel<T, HD, kPrefillWarps, false>(a, dim3(a.n_kv_heads, (unsigned)row_blocks, 1), stream);
    CUDA_CHECK_LAUNCH();
    return Status::Ok();
  }
  // Decode: one warp per query head of the group, at least 4 warps: warps without a head still share
  // the tile loads, which a single warp (MHA) is too few to keep in flight.
  const int warps = group <= 4 ? 4 : 8;
  const dim3 grid(a.n_kv_heads, (unsigned)ceil_div(group, warps), kDecodeSplits);
  switch (warps) {
    case 4: launch_attention_kernel<T, HD, 4, true>(a, grid, stream); break;
    case 8: launch_attention_kernel<T, HD, 8, true>(a, grid, stream); break;
    default: return base::Internal("attention: no decode kernel for " + std::to_string(warps) + " warps");
  }
  CUDA_CHECK_LAUNCH();
  attention_combine_kernel<T><<<a.n_heads, kCombineThreads, 0, stream>>>(a.part_ml, a.part_acc, a.pos, a.max_seq,
                                                                         HD, static_cast<T*>(a.out));
  CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace

Status kv_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& pos,
                 cudaStream_t stream) {
  KP_CHECK_ARG(k.dtype() == k_cache.dtype(), "kv_append: cache dtype " + std::string(base::dtype_name(k_cache.dtype())) +
                                                 " differs from k " + base::dtype_name(k.dtype()));
  KP_CHECK_ARG(pos.device_type() == base::DeviceType::kCUDA, "kv_append: pos must be on the GPU");
  const int64_t n = k.dim(0), kv_dim = k.dim(1), max_seq = k_cache.dim(0);
  const size_t elem = base::dtype_size(k.dtype());
  if (n == 0) return Status::Ok();
  const bool vec = (kv_dim * elem) % 16 == 0 && is_aligned(k.data(), 16) && is_aligned(v.data(), 16) &&
                   is_aligned(k_cache.data(), 16) && is_aligned(v_cache.data(), 16);
  auto launch = [&](auto word_tag) -> Status {
    using Word = typename decltype(word_tag)::type;
    const int64_t words_per_row = kv_dim * (int64_t)elem / (int64_t)sizeof(Word);
    kv_append_kernel<Word><<<grid_for(n * words_per_row, kCopyThreads), kCopyThreads, 0, stream>>>(
        static_cast<const Word*>(k.data()), static_cast<const Word*>(v.data()), static_cast<Word*>(k_cache.data()),
        static_cast<Word*>(v_cache.data()), pos.ptr<int32_t>(), words_per_row, n, max_seq);
    CUDA_CHECK_LAUNCH();
    return Status::Ok();
  };
  if (vec) return launch(TypeTag<uint4>{});
  switch (elem) {
    case 4: return launch(TypeTag<uint32_t>{});
    case 2: return launch(TypeTag<uint16_t>{});
    default: return base::InvalidArgument("kv_append: unsupported cache dtype");
  }
}

int64_t attention_scratch_floats(int64_t /*n_tokens*/, int n_heads, int head_dim, int64_t /*max_seq_len*/) {
  // Decode partials; prefill needs none. Independent of n_tokens so one buffer sized at start-up serves
  // both phases.
  return (int64_t)n_heads * kDecodeSplits * (head_dim + 2);
}

Status attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& pos, int n_heads,
                 int n_kv_heads, int head_dim, Tensor& scratch, Tensor& out, cudaStream_t stream) {
  KP_CHECK_ARG(k_cache.dtype() == q.dtype(), "attention: cache dtype " + std::string(base::dtype_name(k_cache.dtype())) +
                                                 " differs from q " + base::dtype_name(q.dtype()));
  KP_CHECK_ARG(pos.device_type() == base::DeviceType::kCUDA, "attention: pos must be on the GPU");
  KP_CHECK_ARG(is_aligned(k_cache.data(), 16) && is_aligned(v_cache.data(), 16),
               "attention: K/V cache must be 16-byte aligned");
  const int64_t n = q.dim(0), max_seq = k_cache.dim(0);
  KP_CHECK_ARG(n <= INT_MAX && max_seq <= INT_MAX, "attention: sizes beyond int range");
  if (n == 0) return Status::Ok();
  float* part = scratch.ptr<float>();
  AttentionArgs a{q.data(),
                  k_cache.data(),
                  v_cache.data(),
                  pos.ptr<int32_t>(),
                  (int)n,
                  n_heads,
                  n_kv_heads,
                  (int)max_seq,
                  1.f / sqrtf((float)head_dim),
                  part,
                  part + (int64_t)n_heads * kDecodeSplits * 2,
                  out.data()};
  return dispatch_float(q.dtype(), "attention", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    switch (head_dim) {
      case 8: return launch_attention<T, 8>(a, stream);
      case 16: return launch_attention<T, 16>(a, stream);
      case 32: return launch_attention<T, 32>(a, stream);
      case 64: return launch_attention<T, 64>(a, stream);
      case 128: return launch_attention<T, 128>(a, stream);
      default:
        return base::InvalidArgument("attention: head_dim " + std::to_string(head_dim) +
                                     " not supported (CUDA kernels: 8, 16, 32, 64, 128)");
    }
  });
}

}  // namespace kernel::cuda
