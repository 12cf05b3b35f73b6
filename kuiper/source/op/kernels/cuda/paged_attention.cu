// The paged KV cache on the GPU (op/kernels.h): rope at explicit positions, the K/V write through a
// slot mapping, and attention that reads each sequence's keys through its page table.
//
// These are the first, simple and correct kernels of the paged API; the optimized attention kernels
// (tensor-core flash prefill, split-K decode) are routed in behind the same functions later.
//
// paged_attention_kernel: one block of kThreads per (query row, query head). The row's sequence
// length and page table come from the mode: decode row b attends to [0, seq_lens[b]) through table b;
// prefill row i of a chunk at `pos` attends to [0, pos + i] through the chunk's table. The block walks
// the keys in tiles of kThreads: thread j scores key j of the tile (q . k, q pre-scaled by
// log2(e) / sqrt(head_dim), so exp2f does the exponentials), the block folds the tile into a running
// (max m, sum l) with the online-softmax update, and thread d accumulates dimension d of
//   acc' = acc * 2^(m - m') + sum_j 2^(s_j - m') v_j[d]
// reading each V row coalesced across the threads. out = acc / l; a row with no keys gets zeros.
// Page indices are clamped into the cache and lengths into the table (the host keeps them in range).
#include <climits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace kernel::cuda {
namespace {

constexpr int kThreads = 128;  // keys per tile; also the largest head_dim (thread d owns dimension d)

// ---------------------------------------------------------------------------------------------------
// q: T [n, 2 * q_pairs]; k: T [n, 2 * k_pairs]; positions: int32 [n]; cos_sin: fp32 [max_seq, half_hd, 2].
template <typename T>
static __global__ void rope_at_kernel(T* __restrict__ q, T* __restrict__ k, const int32_t* __restrict__ positions,
                                      const float* __restrict__ cos_sin, int64_t n, int q_pairs, int k_pairs,
                                      int half_hd, int max_seq) {
  pdl_wait();
  pdl_trigger();
  const int64_t row_pairs = (int64_t)q_pairs + k_pairs;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n * row_pairs;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = e / row_pairs;
    const int p = (int)(e - i * row_pairs);
    const int t = positions[i];
    if (t < 0 || t >= max_seq) continue;
    T* x = p < q_pairs ? q + i * 2 * q_pairs : k + i * 2 * k_pairs;
    const int pair = p < q_pairs ? p : p - q_pairs;
    const float2 cs = reinterpret_cast<const float2*>(cos_sin)[(int64_t)t * half_hd + pair % half_hd];
    const float a = to_float(x[2 * pair]), b = to_float(x[2 * pair + 1]);
    x[2 * pair] = from_float<T>(a * cs.x - b * cs.y);
    x[2 * pair + 1] = from_float<T>(a * cs.y + b * cs.x);
  }
}

// k, v: T [n, kv_dim]; k_cache, v_cache: T [n_slots, kv_dim]; slots: int32 [n] (negative: skipped).
template <typename T>
static __global__ void kv_append_paged_kernel(const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ k_cache,
                                              T* __restrict__ v_cache, const int32_t* __restrict__ slots, int64_t n,
                                              int64_t kv_dim, int64_t n_slots) {
  pdl_wait();
  pdl_trigger();
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n * kv_dim;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = e / kv_dim, c = e - i * kv_dim;
    const int64_t slot = slots[i];
    if (slot < 0 || slot >= n_slots) continue;
    k_cache[slot * kv_dim + c] = k[e];
    v_cache[slot * kv_dim + c] = v[e];
  }
}

// ---------------------------------------------------------------------------------------------------
struct PagedArgs {
  const void* q;
  const void* k_cache;
  const void* v_cache;
  const int32_t* tables;    // decode: [B, max_pages]; prefill: [max_pages]
  const int32_t* lens;      // decode: seq_lens [B]; prefill: null
  const int32_t* pos;       // prefill: int32 [1]; decode: null
  int n_rows, n_heads, n_kv_heads, page_size, max_pages, n_pages;
  void* out;
};

// q, out: T [n_rows, n_heads * HD]; caches: T [n_pages * page_size, n_kv_heads * HD].
// grid = (n_rows, n_heads), block = kThreads.
template <typename T, int HD, bool kDecode>
static __global__ void __launch_bounds__(kThreads)
    paged_attention_kernel(PagedArgs a, float qscale) {
  static_assert(HD <= kThreads && HD % 8 == 0, "head_dim must be a multiple of 8 up to kThreads");
  __shared__ float qs[HD];
  __shared__ float p[kThreads];
  __shared__ float red[32];
  pdl_wait();
  pdl_trigger();
  const int row = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
  const int group = a.n_heads / a.n_kv_heads, kv_head = h / group;
  const int64_t kv_width = (int64_t)a.n_kv_heads * HD;
  const int32_t* table = kDecode ? a.tables + (int64_t)row * a.max_pages : a.tables;
  int len = kDecode ? a.lens[row] : *a.pos + row + 1;
  len = max(0, min(len, a.max_pages * a.page_size));
  const T* qrow = static_cast<const T*>(a.q) + (int64_t)row * a.n_heads * HD + (int64_t)h * HD;
  for (int d = tid; d < HD; d += kThreads) qs[d] = to_float(qrow[d]) * qscale;
  __syncthreads();
  const T* kc = static_cast<const T*>(a.k_cache) + (int64_t)kv_head * HD;
  const T* vc = static_cast<const T*>(a.v_cache) + (int64_t)kv_head * HD;
  auto slot = [&](int t) -> int64_t {
    const int page = min(max(table[t / a.page_size], 0), a.n_pages - 1);
    return (int64_t)page * a.page_size + t % a.page_size;
  };

  float m = -INFINITY, l = 0.f, acc = 0.f;
  for (int t0 = 0; t0 < len; t0 += kThreads) {
    const int t = t0 + tid;
    float s = -INFINITY;
    if (t < len) {
      const T* kt = kc + slot(t) * kv_width;
      s = 0.f;
#pragma unroll
      for (int d = 0; d < HD; d += 8) {
        float kf[8];
        load_floats<T, 8>(kt + d, kf);
#pragma unroll
        for (int i = 0; i < 8; ++i) s = fmaf(qs[d + i], kf[i], s);
      }
    }
    const float m_new = fmaxf(m, block_max(s, red));  // finite: key t0 is in range
    const float e = t < len ? exp2f(s - m_new) : 0.f;
    p[tid] = e;
    const float corr = exp2f(m - m_new);  // 0 on the first tile (m = -inf)
    l = l * corr + block_sum(e, red);     // block_sum's barriers also publish p[]
    m = m_new;
    if (tid < HD) {
      acc *= corr;
      const int tile = min(kThreads, len - t0);
      for (int j = 0; j < tile; ++j) acc = fmaf(p[j], to_float(vc[slot(t0 + j) * kv_width + tid]), acc);
    }
    __syncthreads();  // p[] is rewritten by the next tile
  }
  if (tid < HD) {
    T* orow = static_cast<T*>(a.out) + (int64_t)row * a.n_heads * HD + (int64_t)h * HD;
    orow[tid] = from_float<T>(len > 0 ? acc / l : 0.f);
  }
}

template <bool kDecode> Status launch_paged(base::DType dtype, int head_dim, const PagedArgs& a, cudaStream_t stream) {
  if (a.n_rows == 0) return Status::Ok();
  KP_CHECK_ARG(a.n_heads <= 65535, "paged attention: too many heads for one call");
  const dim3 grid((unsigned)a.n_rows, (unsigned)a.n_heads);
  const float qscale = 1.4426950408889634f / sqrtf((float)head_dim);  // log2(e) / sqrt(head_dim)
  return dispatch_float(dtype, "paged attention", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    switch (head_dim) {
      case 8: return launch_kernel(paged_attention_kernel<T, 8, kDecode>, grid, kThreads, 0, stream, 1, a, qscale);
      case 16: return launch_kernel(paged_attention_kernel<T, 16, kDecode>, grid, kThreads, 0, stream, 1, a, qscale);
      case 32: return launch_kernel(paged_attention_kernel<T, 32, kDecode>, grid, kThreads, 0, stream, 1, a, qscale);
      case 64: return launch_kernel(paged_attention_kernel<T, 64, kDecode>, grid, kThreads, 0, stream, 1, a, qscale);
      case 128: return launch_kernel(paged_attention_kernel<T, 128, kDecode>, grid, kThreads, 0, stream, 1, a, qscale);
      default:
        return base::InvalidArgument("paged attention: head_dim " + std::to_string(head_dim) +
                                     " not supported (CUDA kernels: 8, 16, 32, 64, 128)");
    }
  });
}

Status check_paged(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache) {
  KP_CHECK_ARG(k_cache.dtype() == q.dtype() && v_cache.dtype() == q.dtype(),
               "paged attention: cache dtype " + std::string(base::dtype_name(k_cache.dtype())) + " differs from q " +
                   base::dtype_name(q.dtype()));
  KP_CHECK_ARG(q.device_type() == base::DeviceType::kCUDA, "paged attention: tensors must be on the GPU");
  // K rows are read with 16-byte loads of 8 elements.
  KP_CHECK_ARG(is_aligned(k_cache.data(), 16) && (k_cache.dim(1) * base::dtype_size(k_cache.dtype())) % 16 == 0,
               "paged attention: K cache rows must be 16-byte aligned");
  KP_CHECK_ARG(q.dim(0) <= INT_MAX && k_cache.dim(0) <= INT_MAX, "paged attention: sizes beyond int range");
  return Status::Ok();
}

}  // namespace

Status rope_at(Tensor& q, Tensor& k, const Tensor& positions, const Tensor& cos_sin, int head_dim, cudaStream_t stream) {
  KP_CHECK_ARG(q.dtype() == k.dtype(), "rope_at: q and k dtypes differ");
  KP_CHECK_ARG(is_aligned(cos_sin.data(), 8), "rope_at: cos_sin must be 8-byte aligned");
  const int64_t n = q.dim(0), q_pairs = q.dim(1) / 2, k_pairs = k.dim(1) / 2;
  KP_CHECK_ARG(q_pairs + k_pairs <= INT_MAX && cos_sin.dim(0) <= INT_MAX, "rope_at: sizes out of range");
  if (n == 0) return Status::Ok();
  return dispatch_float(q.dtype(), "rope_at", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    return launch_kernel(rope_at_kernel<T>, grid_for(n * (q_pairs + k_pairs), 256), 256, 0, stream, 1,
                         static_cast<T*>(q.data()), static_cast<T*>(k.data()), positions.ptr<int32_t>(),
                         cos_sin.ptr<float>(), n, (int)q_pairs, (int)k_pairs, head_dim / 2, (int)cos_sin.dim(0));
  });
}

Status kv_append_paged(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& slots,
                       cudaStream_t stream) {
  KP_CHECK_ARG(k.dtype() == k_cache.dtype(), "kv_append_paged: cache dtype " +
                                                 std::string(base::dtype_name(k_cache.dtype())) + " differs from k " +
                                                 base::dtype_name(k.dtype()));
  const int64_t n = k.dim(0), kv_dim = k.dim(1);
  if (n == 0) return Status::Ok();
  return dispatch_float(k.dtype(), "kv_append_paged", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    return launch_kernel(kv_append_paged_kernel<T>, grid_for(n * kv_dim, 256), 256, 0, stream, 1,
                         static_cast<const T*>(k.data()), static_cast<const T*>(v.data()),
                         static_cast<T*>(k_cache.data()), static_cast<T*>(v_cache.data()), slots.ptr<int32_t>(), n,
                         kv_dim, k_cache.dim(0));
  });
}

Status paged_decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& page_tables,
                              const Tensor& seq_lens, int page_size, int n_heads, int n_kv_heads, int head_dim,
                              Tensor& out, cudaStream_t stream) {
  KP_RETURN_IF_ERROR(check_paged(q, k_cache, v_cache));
  const PagedArgs a{q.data(), k_cache.data(), v_cache.data(), page_tables.ptr<int32_t>(), seq_lens.ptr<int32_t>(),
                    nullptr, (int)q.dim(0), n_heads, n_kv_heads, page_size, (int)page_tables.dim(1),
                    (int)(k_cache.dim(0) / page_size), out.data()};
  return launch_paged<true>(q.dtype(), head_dim, a, stream);
}

Status paged_prefill_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                               const Tensor& page_table, const Tensor& pos, int page_size, int n_heads,
                               int n_kv_heads, int head_dim, Tensor& out, cudaStream_t stream) {
  KP_RETURN_IF_ERROR(check_paged(q, k_cache, v_cache));
  KP_CHECK_ARG(pos.device_type() == base::DeviceType::kCUDA, "paged_prefill_attention: pos must be on the GPU");
  const PagedArgs a{q.data(), k_cache.data(), v_cache.data(), page_table.ptr<int32_t>(), nullptr, pos.ptr<int32_t>(),
                    (int)q.dim(0), n_heads, n_kv_heads, page_size, (int)page_table.numel(),
                    (int)(k_cache.dim(0) / page_size), out.data()};
  return launch_paged<false>(q.dtype(), head_dim, a, stream);
}

}  // namespace kernel::cuda
