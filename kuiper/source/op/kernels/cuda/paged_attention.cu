// The paged KV cache on the GPU (op/kernels.h): rope at explicit positions, the K/V write through a
// slot mapping, and attention that reads each sequence's keys through its page table.
//
// The attention itself is attention.cu's: the paged entry points view the cache as
// [n_pages, page_size, kv_dim] and call the kernels that read K/V rows through a page table
// (kv_rows.cuh): tensor-core flash prefill and split-K decode for fp16/bf16 with head_dim 64 or 128
// (decode needs attention_batch_scratch_floats() of scratch), the CUDA-core kernels otherwise.
#include <climits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace kernel::cuda {
namespace {


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

// The cache [slots, kv_dim] as [n_pages, page_size, kv_dim].
static Tensor as_pages(const Tensor& cache, int page_size) {
  return cache.view({cache.dim(0) / page_size, (int64_t)page_size, cache.dim(1)});
}

Status paged_decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& page_tables,
                              const Tensor& seq_lens, int page_size, int n_heads, int n_kv_heads, int head_dim,
                              Tensor& scratch, Tensor& out, cudaStream_t stream) {
  KP_RETURN_IF_ERROR(check_paged(q, k_cache, v_cache));
  const int64_t b = q.dim(0);
  if (b == 0) return Status::Ok();
  return attention_decode_batch(q, as_pages(k_cache, page_size), as_pages(v_cache, page_size),
                                page_tables.slice_rows(0, b), seq_lens.slice_rows(0, b), n_heads, n_kv_heads, head_dim,
                                scratch, out, stream);
}

Status paged_prefill_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                               const Tensor& page_table, const Tensor& pos, int page_size, int n_heads,
                               int n_kv_heads, int head_dim, Tensor& out, cudaStream_t stream) {
  KP_RETURN_IF_ERROR(check_paged(q, k_cache, v_cache));
  KP_CHECK_ARG(pos.device_type() == base::DeviceType::kCUDA, "paged_prefill_attention: pos must be on the GPU");
  Tensor no_scratch;  // prefill needs none
  return attention_paged(q, as_pages(k_cache, page_size), as_pages(v_cache, page_size), page_table.view({page_table.numel()}),
                         pos, n_heads, n_kv_heads, head_dim, no_scratch, out, stream);
}

}  // namespace kernel::cuda
