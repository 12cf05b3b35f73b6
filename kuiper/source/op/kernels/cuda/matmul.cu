// y = x W^T on the GPU (W stored [out, in] like nn.Linear), three paths:
//
//  - n_tokens <= kGemvMaxTokens (decode): a hand-written GEMV. One warp per output row streams the
//    weight row through 16-byte loads (4 fp32, 8 fp16/bf16 or 16 int8 weights each), kGemvUnroll loads
//    in flight per lane, and reuses every loaded weight for all the tokens. Decode is bound by weight
//    bytes: each weight is read once per step, so the kernel must keep HBM busy, which needs many bytes
//    in flight per SM (512 B per warp per unrolled load, 2 KiB with kGemvUnroll = 4, dozens of warps per
//    SM). int8 weights (W8A16) are dequantised in registers: the 16-weight dot product is accumulated
//    unscaled and multiplied once by its group scale. Misaligned pointers or sizes fall back to a scalar
//    GEMV with the same warp-per-row layout.
//  - n_tokens > kGemvMaxTokens with float weights of the activation dtype: cuBLAS GemmEx, fp32 compute.
//  - n_tokens > kGemvMaxTokens otherwise (fp32 weights with fp16/bf16 activations, int8 weights):
//    a shared-memory tiled GEMM that dequantises W while loading its tiles. Correct, not fast.
#include <cublas_v2.h>

#include <climits>
#include <memory>
#include <unordered_map>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace kernel::cuda {
namespace {

constexpr int kGemvMaxTokens = 4;  // largest n_tokens served by the GEMV
constexpr int kGemvWarps = 4;      // output rows (warps) per GEMV block
constexpr int kGemvUnroll = 4;     // 16-byte weight loads in flight per lane

// ---------------------------------------------------------------------------------------------------
// cuBLAS: error reporting and one handle per (device, host thread).

Status cublas_error(cublasStatus_t st, const char* stmt, const char* file, int line) {
  int dev = -1;
  cudaGetDevice(&dev);
  return {base::StatusCode::kCudaError, std::string("cuBLAS error '") + cublasGetStatusString(st) + "' in " +
                                            stmt + " at " + file + ":" + std::to_string(line) + " (device " +
                                            std::to_string(dev) + ")"};
}

#define CUBLAS_CHECK(stmt)                                                                 \
  do {                                                                                     \
    cublasStatus_t kp_st_ = (stmt);                                                        \
    if (kp_st_ != CUBLAS_STATUS_SUCCESS) return cublas_error(kp_st_, #stmt, __FILE__, __LINE__); \
  } while (0)

// Owner of one cuBLAS handle, created with `device` current (a handle is tied to that device).
class CublasHandle {
 public:
  CublasHandle() = default;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  ~CublasHandle() {
    if (handle_ == nullptr) return;
    int prev = 0;
    cudaGetDevice(&prev);
    cudaSetDevice(device_);
    cublasDestroy(handle_);
    cudaSetDevice(prev);
  }
  Status create(int device) {
    device_ = device;
    CUBLAS_CHECK(cublasCreate(&handle_));
    // By default cuBLAS may reduce split-K partial sums in the output type: fp16/bf16 GEMMs then lose
    // about one output ulp of the partial magnitudes (seen on H100: errors ~5e-3 on O(1) fp16 results),
    // and prefill would disagree with the fp32-accumulating GEMV of decode. Reduce in fp32.
    CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
    return Status::Ok();
  }
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
  int device_ = 0;
};

// The calling thread's handle for the current device, created on first use. The model's warm-up
// prefill makes that first use, so nothing is created while generating (or capturing a graph).
Status cublas_handle(int device, cublasHandle_t* out) {
  thread_local std::unordered_map<int, std::unique_ptr<CublasHandle>> handles;
  std::unique_ptr<CublasHandle>& slot = handles[device];
  if (!slot) {
    auto h = std::make_unique<CublasHandle>();
    KP_RETURN_IF_ERROR(h->create(device));
    slot = std::move(h);
  }
  *out = slot->get();
  return Status::Ok();
}

template <typename T> constexpr cudaDataType_t cuda_dtype();
template <> constexpr cudaDataType_t cuda_dtype<float>() { return CUDA_R_32F; }
template <> constexpr cudaDataType_t cuda_dtype<__half>() { return CUDA_R_16F; }
template <> constexpr cudaDataType_t cuda_dtype<__nv_bfloat16>() { return CUDA_R_16BF; }

// ---------------------------------------------------------------------------------------------------
// Kernels.

// 16-byte weight load through the read-only path without allocating in L1: each weight is used once
// per call, so keeping it would only evict the activations the other warps re-read.
__device__ __forceinline__ uint4 load_weights16(const void* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

// Vector GEMV for NT tokens. x: T [NT, in]; w: WT [out, in]; scales: fp32 [out, in / group_size] (int8
// only, else unused); y: T [NT, out]. Block = kGemvWarps warps, warp w of block b computes row
// b * kGemvWarps + w. Requires in % kVec16<WT> == 0, x and w 16-byte aligned, and for int8
// group_size % 16 == 0 (a 16-weight chunk then never straddles two groups).
template <typename T, typename WT, int NT>
static __global__ void __launch_bounds__(kGemvWarps* kWarpSize)
    gemv_vec_kernel(const T* __restrict__ x, const WT* __restrict__ w, const float* __restrict__ scales,
                    int group_size, T* __restrict__ y, int in, int out) {
  constexpr int kW = kVec16<WT>;  // weights per 16-byte load
  constexpr bool kInt8 = std::is_same_v<WT, int8_t>;
  const int lane = threadIdx.x % kWarpSize;
  const int o = blockIdx.x * kGemvWarps + threadIdx.x / kWarpSize;
  if (o >= out) return;  // whole warp leaves together; there are no block barriers
  const WT* wrow = w + (int64_t)o * in;
  const float* srow = kInt8 ? scales + (int64_t)o * (in / group_size) : nullptr;
  const int n_chunks = in / kW;

  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.f;

  // acc[t] += (w chunk c) . (x[t] chunk c), scaled by the chunk's group scale for int8.
  auto fma_chunk = [&](const uint4& wv, int c) {
    float wf[kW];
    unpack_floats<WT, kW>(&wv, wf);
    const float scale = kInt8 ? srow[c * kW / group_size] : 1.f;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      float xf[kW];
      load_floats<T, kW>(x + (int64_t)t * in + (int64_t)c * kW, xf);
      float d = 0.f;
#pragma unroll
      for (int j = 0; j < kW; ++j) d = fmaf(wf[j], xf[j], d);
      acc[t] = kInt8 ? fmaf(d, scale, acc[t]) : acc[t] + d;
    }
  };

  int c = lane;
  // Main loop: kGemvUnroll loads per lane, all issued before the first is used, no bounds checks.
  for (; c + (kGemvUnroll - 1) * kWarpSize < n_chunks; c += kGemvUnroll * kWarpSize) {
    uint4 wv[kGemvUnroll];
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) wv[u] = load_weights16(wrow + (int64_t)(c + u * kWarpSize) * kW);
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) fma_chunk(wv[u], c + u * kWarpSize);
  }
  // Tail: fewer than kGemvUnroll chunks left for this lane.
  for (; c < n_chunks; c += kWarpSize) fma_chunk(load_weights16(wrow + (int64_t)c * kW), c);
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = warp_sum(acc[t]);
  if (lane == 0) {
#pragma unroll
    for (int t = 0; t < NT; ++t) y[(int64_t)t * out + o] = from_float<T>(acc[t]);
  }
}

// Scalar GEMV fallback for any alignment and group size: same layout as gemv_vec_kernel, each lane
// walks the row one weight at a time. n <= kGemvMaxTokens.
template <typename T, typename WT>
static __global__ void __launch_bounds__(kGemvWarps* kWarpSize)
    gemv_scalar_kernel(const T* __restrict__ x, const WT* __restrict__ w, const float* __restrict__ scales,
                       int group_size, T* __restrict__ y, int n, int in, int out) {
  constexpr bool kInt8 = std::is_same_v<WT, int8_t>;
  const int lane = threadIdx.x % kWarpSize;
  const int o = blockIdx.x * kGemvWarps + threadIdx.x / kWarpSize;
  if (o >= out) return;
  const WT* wrow = w + (int64_t)o * in;
  const float* srow = kInt8 ? scales + (int64_t)o * (in / group_size) : nullptr;
  float acc[kGemvMaxTokens] = {};
  for (int k = lane; k < in; k += kWarpSize) {
    float wk = to_float(wrow[k]);
    if (kInt8) wk *= srow[k / group_size];
#pragma unroll
    for (int t = 0; t < kGemvMaxTokens; ++t)
      if (t < n) acc[t] = fmaf(wk, to_float(x[(int64_t)t * in + k]), acc[t]);
  }
#pragma unroll
  for (int t = 0; t < kGemvMaxTokens; ++t) acc[t] = warp_sum(acc[t]);
  if (lane == 0)
    for (int t = 0; t < n; ++t) y[(int64_t)t * out + o] = from_float<T>(acc[t]);
}

constexpr int kTileM = 64;  // tokens per block
constexpr int kTileN = 64;  // output features per block
constexpr int kTileK = 32;  // input features per shared-memory stage
constexpr int kTileThreads = 256;  // 16 x 16 threads, each computing a 4 x 4 patch of y
static_assert(kTileM == kTileN && kTileM == 4 * 16, "the tile loader and the 4 x 4 patches assume this");

// Tiled GEMM for weight dtypes cuBLAS cannot pair with the activations. x: T [n, in]; w: WT [out, in];
// scales: fp32 [out, in / group_size] (int8 only); y: T [n, out]. grid = (ceil(out/64), ceil(n/64)).
// Both tiles are stored k-major in shared memory (padded by one to spread the banks), W dequantised.
template <typename T, typename WT>
static __global__ void __launch_bounds__(kTileThreads)
    gemm_tiled_kernel(const T* __restrict__ x, const WT* __restrict__ w, const float* __restrict__ scales,
                      int group_size, T* __restrict__ y, int n, int in, int out) {
  constexpr bool kInt8 = std::is_same_v<WT, int8_t>;
  __shared__ float xs[kTileK][kTileM + 1];
  __shared__ float ws[kTileK][kTileN + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int m0 = blockIdx.y * kTileM, o0 = blockIdx.x * kTileN;
  const int64_t n_groups = kInt8 ? in / group_size : 0;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < in; k0 += kTileK) {
    for (int e = threadIdx.x; e < kTileM * kTileK; e += kTileThreads) {
      const int r = e / kTileK, kk = e % kTileK;  // consecutive threads walk k: coalesced reads
      const int k = k0 + kk;
      const int m = m0 + r, o = o0 + r;
      xs[kk][r] = (m < n && k < in) ? to_float(x[(int64_t)m * in + k]) : 0.f;
      float wv = 0.f;
      if (o < out && k < in) {
        wv = to_float(w[(int64_t)o * in + k]);
        if (kInt8) wv *= scales[(int64_t)o * n_groups + k / group_size];
      }
      ws[kk][r] = wv;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = ws[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = m0 + ty + 16 * i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int o = o0 + tx + 16 * j;
      if (m < n && o < out) y[(int64_t)m * out + o] = from_float<T>(acc[i][j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Launchers.

template <typename T, typename WT> struct MatmulArgs {
  const T* x;             // [n, in]
  const WT* w;            // [out, in]
  const float* scales;    // fp32 [out, in / group_size] for int8, else nullptr
  int group_size;         // int8 only (1 otherwise)
  T* y;                   // [n, out]
  int n, in, out;
};

template <typename T, typename WT> Status launch_gemv(const MatmulArgs<T, WT>& a, cudaStream_t stream) {
  constexpr int kW = kVec16<WT>;
  const bool vec = a.in % kW == 0 && is_aligned(a.x, 16) && is_aligned(a.w, 16) &&
                   (!std::is_same_v<WT, int8_t> || a.group_size % kW == 0);
  const dim3 grid((unsigned)ceil_div(a.out, kGemvWarps)), block(kGemvWarps * kWarpSize);
  if (!vec) {
    gemv_scalar_kernel<T, WT><<<grid, block, 0, stream>>>(a.x, a.w, a.scales, a.group_size, a.y, a.n, a.in, a.out);
    CUDA_CHECK_LAUNCH();
    return Status::Ok();
  }
  switch (a.n) {
    case 1: gemv_vec_kernel<T, WT, 1><<<grid, block, 0, stream>>>(a.x, a.w, a.scales, a.group_size, a.y, a.in, a.out); break;
    case 2: gemv_vec_kernel<T, WT, 2><<<grid, block, 0, stream>>>(a.x, a.w, a.scales, a.group_size, a.y, a.in, a.out); break;
    case 3: gemv_vec_kernel<T, WT, 3><<<grid, block, 0, stream>>>(a.x, a.w, a.scales, a.group_size, a.y, a.in, a.out); break;
    case 4: gemv_vec_kernel<T, WT, 4><<<grid, block, 0, stream>>>(a.x, a.w, a.scales, a.group_size, a.y, a.in, a.out); break;
    default: return base::Internal("matmul: GEMV called with " + std::to_string(a.n) + " tokens");
  }
  CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

template <typename T, typename WT> Status launch_gemm_tiled(const MatmulArgs<T, WT>& a, cudaStream_t stream) {
  const int64_t m_blocks = ceil_div(a.n, kTileM);
  KP_CHECK_ARG(m_blocks <= 65535, "matmul: " + std::to_string(a.n) + " tokens exceed the tiled GEMM grid");
  const dim3 grid((unsigned)ceil_div(a.out, kTileN), (unsigned)m_blocks);
  gemm_tiled_kernel<T, WT><<<grid, kTileThreads, 0, stream>>>(a.x, a.w, a.scales, a.group_size, a.y, a.n, a.in, a.out);
  CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

// Row-major y[n, out] = x[n, in] W[out, in]^T is, read column-major, y^T[out, n] = W x^T where the
// W buffer is a column-major [in, out] matrix: op(A) = A^T with A = W (lda = in), B = x^T (ldb = in),
// C = y^T (ldc = out). fp32 compute: fp16/bf16 run on tensor cores with fp32 accumulation; fp32 stays
// full fp32 (no TF32), matching the GEMV to ~1e-6.
template <typename T>
Status launch_cublas(const MatmulArgs<T, T>& a, int device, cudaStream_t stream) {
  int current = -1;
  CUDA_CHECK(cudaGetDevice(&current));
  KP_CHECK_ARG(current == device, "matmul: tensors are on GPU " + std::to_string(device) +
                                      " but the current device is " + std::to_string(current));
  cublasHandle_t handle = nullptr;
  KP_RETURN_IF_ERROR(cublas_handle(device, &handle));
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  const float alpha = 1.f, beta = 0.f;
  CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, a.out, a.n, a.in, &alpha, a.w, cuda_dtype<T>(), a.in,
                            a.x, cuda_dtype<T>(), a.in, &beta, a.y, cuda_dtype<T>(), a.out, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
  return Status::Ok();
}

template <typename T, typename WT>
Status matmul_typed(const Tensor& x, const Tensor& weight, const Tensor& scales, int group_size, Tensor& y,
                    cudaStream_t stream) {
  constexpr bool kInt8 = std::is_same_v<WT, int8_t>;
  MatmulArgs<T, WT> a{static_cast<const T*>(x.data()),
                      static_cast<const WT*>(weight.data()),
                      kInt8 ? scales.ptr<float>() : nullptr,
                      kInt8 ? group_size : 1,
                      static_cast<T*>(y.data()),
                      (int)x.dim(0),
                      (int)x.dim(1),
                      (int)weight.dim(0)};
  if (a.n <= kGemvMaxTokens) return launch_gemv(a, stream);
  if constexpr (std::is_same_v<T, WT>)
    return launch_cublas(a, x.device_id(), stream);
  else
    return launch_gemm_tiled(a, stream);
}

}  // namespace

Status matmul(const Tensor& x, const Tensor& weight, const Tensor& scales, int group_size, Tensor& y,
              cudaStream_t stream) {
  KP_CHECK_ARG(x.dim(0) <= INT_MAX && x.dim(1) <= INT_MAX && weight.dim(0) <= INT_MAX,
               "matmul: sizes beyond int range: " + x.shape_string() + " x " + weight.shape_string());
  if (x.dim(0) == 0 || weight.dim(0) == 0) return Status::Ok();
  return dispatch_float(x.dtype(), "matmul", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    switch (weight.dtype()) {
      case base::DType::kFp32: return matmul_typed<T, float>(x, weight, scales, group_size, y, stream);
      case base::DType::kFp16: return matmul_typed<T, __half>(x, weight, scales, group_size, y, stream);
      case base::DType::kBf16: return matmul_typed<T, __nv_bfloat16>(x, weight, scales, group_size, y, stream);
      case base::DType::kInt8: return matmul_typed<T, int8_t>(x, weight, scales, group_size, y, stream);
      default:
        return base::InvalidArgument(std::string("matmul: unsupported weight dtype ") +
                                     base::dtype_name(weight.dtype()));
    }
  });
}

}  // namespace kernel::cuda
