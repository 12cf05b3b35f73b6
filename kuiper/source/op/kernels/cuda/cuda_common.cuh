// Device helpers shared by the CUDA kernel files:
//  - dispatch_float(): the runtime DType -> C++ element type switch every launcher uses (fails loudly);
//  - to_float / from_float: fp32 / fp16 / bf16 / int8 element <-> float, so kernels are written once in
//    fp32 arithmetic and templated on the storage type;
//  - load_floats / store_floats: N consecutive elements as float through 16-byte (or 8-byte) accesses;
//  - warp and block reductions (sum, max).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "base/cuda_utils.h"
#include "op/kernels.h"

namespace kernel::cuda {

constexpr int kWarpSize = 32;

// ---------------------------------------------------------------------------------------------------
// Host side: dtype dispatch, alignment, grid sizing.

template <typename T> struct TypeTag { using type = T; };

// Calls f(TypeTag<T>{}) with T the device element type of `dtype` (float, __half, __nv_bfloat16);
// any other dtype is an InvalidArgument naming the op.
template <typename F> Status dispatch_float(base::DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case base::DType::kFp32: return f(TypeTag<float>{});
    case base::DType::kFp16: return f(TypeTag<__half>{});
    case base::DType::kBf16: return f(TypeTag<__nv_bfloat16>{});
    default:
      return base::InvalidArgument(std::string(op) + ": unsupported dtype " + base::dtype_name(dtype) +
                                   " (CUDA kernels take fp32, fp16 or bf16)");
  }
}

inline bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over `n` work items: enough to fill the GPU several times over, capped
// so the launch stays cheap (the loop covers the rest).
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = ceil_div(n, threads);
  return (unsigned)(blocks < 1 ? 1 : (blocks > 8192 ? 8192 : blocks));
}

// ---------------------------------------------------------------------------------------------------
// Device side: element conversion.

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(int8_t v) { return (float)v; }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Elements of T in one 16-byte access.
template <typename T> constexpr int kVec16 = 16 / (int)sizeof(T);

// Unpacks the raw bytes of `words` (N elements of T) to float.
template <typename T, int N, typename Word>
__device__ __forceinline__ void unpack_floats(const Word* words, float* f) {
  const T* e = reinterpret_cast<const T*>(words);
#pragma unroll
  for (int j = 0; j < N; ++j) f[j] = to_float(e[j]);
}

// f[j] = p[j] for j < N. p must be aligned to 16 bytes when N * sizeof(T) is a multiple of 16, to 8 bytes
// when it is a multiple of 8; smaller N fall back to element loads.
template <typename T, int N> __device__ __forceinline__ void load_floats(const T* p, float (&f)[N]) {
  constexpr int kBytes = N * (int)sizeof(T);
  if constexpr (kBytes % 16 == 0) {
    uint4 w[kBytes / 16];
#pragma unroll
    for (int c = 0; c < kBytes / 16; ++c) w[c] = reinterpret_cast<const uint4*>(p)[c];
    unpack_floats<T, N>(w, f);
  } else if constexpr (kBytes % 8 == 0) {
    uint2 w[kBytes / 8];
#pragma unroll
    for (int c = 0; c < kBytes / 8; ++c) w[c] = reinterpret_cast<const uint2*>(p)[c];
    unpack_floats<T, N>(w, f);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) f[j] = to_float(p[j]);
  }
}

// p[j] = round(f[j]) for j < N, with the alignment rules of load_floats.
template <typename T, int N> __device__ __forceinline__ void store_floats(T* p, const float (&f)[N]) {
  constexpr int kBytes = N * (int)sizeof(T);
  if constexpr (kBytes % 16 == 0 || kBytes % 8 == 0) {
    using Word = std::conditional_t<kBytes % 16 == 0, uint4, uint2>;
    Word w[kBytes / sizeof(Word)];
    T* e = reinterpret_cast<T*>(w);
#pragma unroll
    for (int j = 0; j < N; ++j) e[j] = from_float<T>(f[j]);
#pragma unroll
    for (int c = 0; c < (int)(kBytes / sizeof(Word)); ++c) reinterpret_cast<Word*>(p)[c] = w[c];
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) p[j] = from_float<T>(f[j]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Reductions. All lanes of the warp (all threads of the block) must call them; blockDim.x must be a
// multiple of 32. Every thread receives the result.

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// `scratch` is __shared__ float[32]; the leading barrier lets one buffer serve consecutive calls.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int n_warps = blockDim.x / kWarpSize;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_sum(lane < n_warps ? scratch[lane] : 0.f);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int n_warps = blockDim.x / kWarpSize;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_max(lane < n_warps ? scratch[lane] : -INFINITY);
}

}  // namespace kernel::cuda
