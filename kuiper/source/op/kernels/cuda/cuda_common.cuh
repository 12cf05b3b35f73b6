// Device helpers shared by the CUDA kernel files:
//  - dispatch_float(): the runtime DType -> C++ element type switch every launcher uses (fails loudly);
//  - to_float / from_float: fp32 / fp16 / bf16 / int8 element <-> float, so kernels are written once in
//    fp32 arithmetic and templated on the storage type;
//  - load_floats / store_floats: N consecutive elements as float through 16-byte (or 8-byte) accesses;
//  - warp and block reductions (sum, max);
//  - launch_kernel(): every launch of the decode path, with programmatic dependent launch (below).
//
// Programmatic dependent launch (PDL, sm_90). A decode step is ~330 small dependent kernels; without
// PDL each one is launched only after its predecessor has drained. With PDL the next kernel's blocks
// are launched as soon as every block of the running kernel has called pdl_trigger(), and they wait in
// pdl_wait() until that kernel has completed and its writes are visible; what they do before the wait
// (the GEMV's first weight loads) overlaps the predecessor. Measured on an H100 inside the decode
// graph: +1.3% tokens/s for Llama-2-7B fp16 (docs/perf_notes.md); the graph already hides most of the
// launch cost. The contract for a kernel launched by launch_kernel(): before pdl_wait() it may read only
// data no kernel of the step writes (weights), and it must call pdl_wait() on every path, also in
// blocks that have nothing to do (a block that skipped it could let the grid complete before its
// predecessor, and a third kernel would then wait on the wrong grid). Set KUIPER_PDL=0 to launch
// without PDL (for measurements); pdl_wait() is then a no-op.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>

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

// True when launches should carry the PDL attribute: the current device is sm_90 or newer and the
// environment does not set KUIPER_PDL=0. Read once per process (every GPU of a run is the same model).
inline bool pdl_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("KUIPER_PDL");
    if (env != nullptr && std::string(env) == "0") return false;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major >= 9;
  }();
  return enabled;
}

// Launches kernel<<<grid, block, smem, stream>>>(args...) through cudaLaunchKernelEx, with PDL when
// pdl_enabled() and, when cluster_x > 1, as clusters of cluster_x blocks along x (gridDim.x must be a
// multiple). The kernel must follow the PDL contract above.
template <typename... Params, typename... Args>
Status launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                     unsigned cluster_x, Args&&... args) {
  cudaLaunchAttribute attrs[2];
  unsigned n_attrs = 0;
  if (pdl_enabled()) {
    attrs[n_attrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n_attrs].val.programmaticStreamSerializationAllowed = 1;
    ++n_attrs;
  }
  if (cluster_x > 1) {
    attrs[n_attrs].id = cudaLaunchAttributeClusterDimension;
    attrs[n_attrs].val.clusterDim.x = cluster_x;
    attrs[n_attrs].val.clusterDim.y = 1;
    attrs[n_attrs].val.clusterDim.z = 1;
    ++n_attrs;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attrs;
  cfg.numAttrs = n_attrs;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------------
// Device side: PDL (see the file comment).

// Waits until the kernels this one depends on have completed and their writes are visible.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel in the stream be launched (its pdl_wait() still waits for this one to finish).
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
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

// silu(gate) * up of two fp32 sums, each rounded to T first: what swiglu() computes from a stored gate
// and up (the GEMVs with SwiGLU in their epilogue, matmul.cu and quant_gemv_mma.cu).
template <typename T>
__device__ __forceinline__ float swiglu_of(float gate, float up) {
  const float g = to_float(from_float<T>(gate)), u = to_float(from_float<T>(up));
  return g / (1.f + expf(-g)) * u;
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

// 16-byte weight load through the read-only path without allocating in L1: each weight is used once
// per call, so keeping it would only evict the activations the other warps re-read. volatile keeps the
// loads in program order, so the prefetch stays ahead of pdl_wait().
__device__ __forceinline__ uint4 load_weights16(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
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
