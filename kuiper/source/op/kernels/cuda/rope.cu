// Rotary position embedding on the GPU, in place on q and k, interleaved pairs (x[2j], x[2j+1]) per head
// (and, fused with it, the KV-cache append of the rotated k and of v: rope_kv_append):
//   (a, b) -> (a cos t - b sin t, a sin t + b cos t)
// with (cos t, sin t) read from the model's table at position pos + i. The start position is read on
// the device, so one captured graph serves every decode step.
#include <climits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace kernel::cuda {
namespace {

constexpr int kThreads = 256;

// q: T [n, 2 * q_pairs]; k: T [n, 2 * k_pairs]; pos: int32 [1] (device);
// cos_sin: fp32 [max_seq, half_hd, 2]. One thread per rotated pair, grid-stride over n * (q_pairs + k_pairs).
// A row whose position falls outside [0, max_seq) is left unrotated: the host guarantees it never
// happens, and it cannot be reported from here without a sync.
template <typename T>
static __global__ void rope_kernel(T* __restrict__ q, T* __restrict__ k, const int32_t* __restrict__ pos,
                                   const float* __restrict__ cos_sin, int64_t n, int q_pairs, int k_pairs,
                                   int half_hd, int max_seq) {
  pdl_wait();
  pdl_trigger();
  const int64_t p0 = *pos;
  const int64_t row_pairs = (int64_t)q_pairs + k_pairs;
  const int64_t total = n * row_pairs;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = e / row_pairs;
    const int p = (int)(e - i * row_pairs);
    const int64_t t = p0 + i;
    if (t < 0 || t >= max_seq) continue;
    T* x;
    int pair;
    if (p < q_pairs) {
      x = q + i * 2 * q_pairs;
      pair = p;
    } else {
      x = k + i * 2 * k_pairs;
      pair = p - q_pairs;
    }
    const float2 cs = reinterpret_cast<const float2*>(cos_sin)[t * half_hd + pair % half_hd];
    const float a = to_float(x[2 * pair]), b = to_float(x[2 * pair + 1]);
    x[2 * pair] = from_float<T>(a * cs.x - b * cs.y);
    x[2 * pair + 1] = from_float<T>(a * cs.y + b * cs.x);
  }
}

// rope_kernel fused with the KV append of decode and prefill: thread per pair of q, k or v of a row.
// q pairs are rotated in place; k pairs are rotated in place and stored in the cache row pos + i; v
// pairs are copied to it. k, v: T [n, 2 * k_pairs]; k_cache, v_cache: T [max_seq, 2 * k_pairs]. Rows
// outside [0, max_seq) are skipped, as both separate kernels skip them.
template <typename T>
static __global__ void rope_kv_append_kernel(T* __restrict__ q, T* __restrict__ k, const T* __restrict__ v,
                                             T* __restrict__ k_cache, T* __restrict__ v_cache,
                                             const int32_t* __restrict__ pos, const float* __restrict__ cos_sin,
                                             int64_t n, int q_pairs, int k_pairs, int half_hd, int max_seq,
                                             int cache_rows) {
  pdl_wait();
  pdl_trigger();
  const int64_t p0 = *pos;
  const int64_t row_pairs = (int64_t)q_pairs + 2 * (int64_t)k_pairs;
  const int64_t total = n * row_pairs;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = e / row_pairs;
    const int p = (int)(e - i * row_pairs);
    const int64_t t = p0 + i;
    if (t < 0 || t >= max_seq || t >= cache_rows) continue;
    if (p >= q_pairs + k_pairs) {  // v: copy the pair
      const int pair = p - q_pairs - k_pairs;
      const T* src = v + i * 2 * k_pairs + 2 * pair;
      T* dst = v_cache + t * 2 * k_pairs + 2 * pair;
      dst[0] = src[0];
      dst[1] = src[1];
      continue;
    }
    const bool is_q = p < q_pairs;
    const int pair = is_q ? p : p - q_pairs;
    T* x = is_q ? q + i * 2 * q_pairs : k + i * 2 * k_pairs;
    const float2 cs = reinterpret_cast<const float2*>(cos_sin)[t * half_hd + pair % half_hd];
    const float a = to_float(x[2 * pair]), b = to_float(x[2 * pair + 1]);
    const T ra = from_float<T>(a * cs.x - b * cs.y), rb = from_float<T>(a * cs.y + b * cs.x);
    x[2 * pair] = ra;
    x[2 * pair + 1] = rb;
    if (!is_q) {
      T* dst = k_cache + t * 2 * k_pairs + 2 * pair;
      dst[0] = ra;
      dst[1] = rb;
    }
  }
}

}  // namespace

Status rope_kv_append(Tensor& q, Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& pos,
                      const Tensor& cos_sin, int head_dim, cudaStream_t stream) {
  KP_CHECK_ARG(pos.device_type() == base::DeviceType::kCUDA, "rope_kv_append: pos must be on the GPU");
  KP_CHECK_ARG(is_aligned(cos_sin.data(), 8), "rope_kv_append: cos_sin must be 8-byte aligned");
  const int64_t n = q.dim(0);
  const int64_t q_pairs = q.dim(1) / 2, k_pairs = k.dim(1) / 2;
  KP_CHECK_ARG(q_pairs + 2 * k_pairs <= INT_MAX && cos_sin.dim(0) <= INT_MAX && k_cache.dim(0) <= INT_MAX,
               "rope_kv_append: sizes out of range");
  if (n == 0) return Status::Ok();
  return dispatch_float(q.dtype(), "rope_kv_append", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    return launch_kernel(rope_kv_append_kernel<T>, grid_for(n * (q_pairs + 2 * k_pairs), kThreads), kThreads, 0,
                         stream, 1, static_cast<T*>(q.data()), static_cast<T*>(k.data()),
                         static_cast<const T*>(v.data()), static_cast<T*>(k_cache.data()),
                         static_cast<T*>(v_cache.data()), pos.ptr<int32_t>(), cos_sin.ptr<float>(), n, (int)q_pairs,
                         (int)k_pairs, head_dim / 2, (int)cos_sin.dim(0), (int)k_cache.dim(0));
  });
}

Status rope(Tensor& q, Tensor& k, const Tensor& pos, const Tensor& cos_sin, int head_dim, cudaStream_t stream) {
  KP_CHECK_ARG(q.dtype() == k.dtype(), "rope: q and k dtypes differ");
  KP_CHECK_ARG(pos.device_type() == base::DeviceType::kCUDA, "rope: pos must be on the GPU");
  // The (cos, sin) pairs are read as float2.
  KP_CHECK_ARG(is_aligned(cos_sin.data(), 8), "rope: cos_sin must be 8-byte aligned");
  const int64_t n = q.dim(0);
  const int64_t q_pairs = q.dim(1) / 2, k_pairs = k.dim(1) / 2;
  KP_CHECK_ARG(q_pairs + k_pairs <= INT_MAX && cos_sin.dim(0) <= INT_MAX, "rope: sizes out of range");
  if (n == 0) return Status::Ok();
  return dispatch_float(q.dtype(), "rope", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    return launch_kernel(rope_kernel<T>, grid_for(n * (q_pairs + k_pairs), kThreads), kThreads, 0, stream, 1,
                         static_cast<T*>(q.data()), static_cast<T*>(k.data()), pos.ptr<int32_t>(),
                         cos_sin.ptr<float>(), n, (int)q_pairs, (int)k_pairs, head_dim / 2, (int)cos_sin.dim(0));
  });
}

}  // namespace kernel::cuda
