// fill_random: counter-based uniform values from kernel::hash_uniform, as the CPU kernel makes them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "base/cuda_utils.h"
#include "kernels/cuda/cuda_kernels.h"

namespace kernel::cuda {
namespace {

template <typename T>
__device__ __forceinline__ T from_uniform(float u, float scale);
template <> __device__ __forceinline__ float from_uniform<float>(float u, float s) { return u * s; }
template <> __device__ __forceinline__ __half from_uniform<__half>(float u, float s) { return __float2half_rn(u * s); }
template <> __device__ __forceinline__ __nv_bfloat16 from_uniform<__nv_bfloat16>(float u, float s) {
  return __float2bfloat16_rn(u * s);
}
template <> __device__ __forceinline__ int8_t from_uniform<int8_t>(float u, float) { return (int8_t)__float2int_rn(u * 127.f); }

// out: [n] any dtype; grid-stride loop.
template <typename T>
static __global__ void fill_random_kernel(T* __restrict__ out, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = from_uniform<T>(hash_uniform(seed, (uint64_t)i), scale);
}

}  // namespace

Status fill_random(Tensor& t, uint64_t seed, float scale, cudaStream_t stream) {
  const int64_t n = t.numel();
  const int threads = 256;
  const int blocks = (int)std::min<int64_t>((n + threads - 1) / threads, 132 * 16);
  switch (t.dtype()) {
    case base::DType::kFp32: fill_random_kernel<<<blocks, threads, 0, stream>>>(static_cast<float*>(t.data()), n, seed, scale); break;
    case base::DType::kFp16: fill_random_kernel<<<blocks, threads, 0, stream>>>(static_cast<__half*>(t.data()), n, seed, scale); break;
    case base::DType::kBf16: fill_random_kernel<<<blocks, threads, 0, stream>>>(static_cast<__nv_bfloat16*>(t.data()), n, seed, scale); break;
    case base::DType::kInt8: fill_random_kernel<<<blocks, threads, 0, stream>>>(static_cast<int8_t*>(t.data()), n, seed, scale); break;
    default: return base::InvalidArgument("fill_random: unsupported dtype");
  }
  CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace kernel::cuda
