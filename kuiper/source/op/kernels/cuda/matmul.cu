// y = x W^T on the GPU (W stored [out, in] like nn.Linear), four paths:
//
//  - n_tokens <= kGemvMaxTokens (decode): a hand-written GEMV. One warp per output row streams the
//    weight row through 16-byte loads (4 fp32, 8 fp16/bf16 or 16 int8 weights each), and reuses every
//    loaded weight for all the tokens. Decode is bound by weight bytes: each weight is read once per
//    step, so the kernel must keep HBM busy, which needs many bytes in flight per SM (512 B per warp
//    per unrolled load, 2 KiB with kGemvUnroll = 4, dozens of warps per SM). For fp16/bf16/fp32
//    weights the first kGemvUnroll loads are issued before pdl_wait(), while the previous kernel is
//    still finishing (no kernel of a step writes weights). On the fused Llama stacks this runs at 2.7-3.0 TB/s on an H100 (copy:
//    3.0 TB/s); a double-buffered variant measured slower (docs/perf_notes.md). int8 weights (W8A16)
//    are dequantised in registers: the 16-weight dot product is accumulated unscaled and multiplied
//    once by its group scale. Misaligned pointers or sizes fall back to a scalar GEMV with the same
//    warp-per-row layout (gemv_scalar.cuh).
//  - n_tokens > kGemvMaxTokens with float weights of the activation dtype: cuBLAS GemmEx, fp32 compute.
//  - n_tokens > kGemvMaxTokens, int8 weights, fp16/bf16 activations (W8A16 prefill): a tensor-core GEMM
//    (mma.sync m16n8k16, fp32 accumulation) that dequantises W on the way from shared memory to the
//    registers. int8 values are exact in fp16 and bf16 and the products are exact in fp32, so the group
//    scale is applied to each 32-wide k slice's fp32 partial sum, as in the GEMV (gemm_int8_mma_kernel).
//  - otherwise (fp32 weights with fp16/bf16 activations, int8 weights with fp32 activations or odd
//    sizes): a shared-memory tiled GEMM that dequantises W while loading its tiles. Correct, not fast.
#include <cublas_v2.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>
#include <memory>
#include <unordered_map>

#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gemv_scalar.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/quant_gemv_mma.h"

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

// Vector GEMV for NT tokens. x: T [NT, in]; w: WT [out, in]; scales: fp32 [out, in / group_size] (int8
// only, else unused); y: T [NT, out]. Block = kGemvWarps warps, warp w of block b computes row
// b * kGemvWarps + w. Requires in % kVec16<WT> == 0, x and w 16-byte aligned, and for int8
// group_size % 16 == 0 (a 16-weight chunk then never straddles two groups).
// Lane l reads the row's 16-byte chunks l, l + 32, ..., kGemvUnroll of them per step, all issued before
// the first is used. For float weights the first step's loads are issued before pdl_wait().
//
// kSwiglu: w is a stacked [W1; W3] ([2 hidden, in], out = 2 hidden) and y = swiglu(x W1^T, x W3^T) is
// [NT, hidden]: the block's first half of warps computes gate features j, the second half the up
// features hidden + j of the same j, and they meet in shared memory (gate and up are rounded to T
// first, as the separate swiglu kernel would read them).
template <typename T, typename WT, int NT, bool kSwiglu = false>
static __global__ void __launch_bounds__(kGemvWarps* kWarpSize)
    gemv_vec_kernel(const T* __restrict__ x, const WT* __restrict__ w, const float* __restrict__ scales,
                    int group_size, T* __restrict__ y, int in, int out) {
  constexpr int kW = kVec16<WT>;  // weights per 16-byte load
  constexpr bool kInt8 = std::is_same_v<WT, int8_t>;
  constexpr int kStep = kGemvUnroll * kWarpSize;  // chunks per step of the warp
  constexpr int kHalf = kGemvWarps / 2;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int hidden = out / 2;
  const int j = blockIdx.x * kHalf + warp % kHalf;  // kSwiglu: the feature of this warp
  const bool row_ok = kSwiglu ? j < hidden : blockIdx.x * kGemvWarps + warp < out;
  const int o = kSwiglu ? (warp < kHalf ? 0 : hidden) + (row_ok ? j : 0)
                        : (row_ok ? blockIdx.x * kGemvWarps + warp : 0);
  const WT* wrow = w + (int64_t)o * in;
  const int n_chunks = in / kW;

  // Not for int8: the prefetch took its NT = 1 kernel from 40 to 46 registers and int8 decode from
  // 299 to 291 tokens/s (Llama-2-7B shape, H100); fp16/bf16 GEMVs gained 0.3-1.5 us each.
  uint4 wv[kGemvUnroll];
  const bool first_full = !kInt8 && row_ok && lane + (kGemvUnroll - 1) * kWarpSize < n_chunks;
  if (first_full) {
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) wv[u] = load_weights16(wrow + (int64_t)(lane + u * kWarpSize) * kW);
  }
  pdl_wait();
  if (!kSwiglu && !row_ok) return;  // whole warp leaves together; only kSwiglu has a block barrier
  const float* srow = kInt8 ? scales + (int64_t)o * (in / group_size) : nullptr;

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
  if (first_full) {
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) fma_chunk(wv[u], c + u * kWarpSize);
    c += kStep;
  }
  // Main loop: kGemvUnroll loads per lane, all issued before the first is used, no bounds checks.
  for (; c + (kGemvUnroll - 1) * kWarpSize < n_chunks; c += kStep) {
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) wv[u] = load_weights16(wrow + (int64_t)(c + u * kWarpSize) * kW);
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) fma_chunk(wv[u], c + u * kWarpSize);
  }
  // Tail: fewer than kGemvUnroll chunks left for this lane.
  for (; c < n_chunks; c += kWarpSize) fma_chunk(load_weights16(wrow + (int64_t)c * kW), c);
  // The next kernel is let in only now: triggered at the start, a GEMV that fits in one wave (out 4096)
  // ran 1-2.7 us slower back to back, the next grid's early blocks crowding this one.
  pdl_trigger();
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = warp_sum(acc[t]);
  if constexpr (kSwiglu) {
    __shared__ float sum[kGemvWarps][NT];
    if (lane == 0) {
#pragma unroll
      for (int t = 0; t < NT; ++t) sum[warp][t] = acc[t];
    }
    __syncthreads();
    if (warp < kHalf && lane < NT && row_ok)
      y[(int64_t)lane * hidden + j] = from_float<T>(swiglu_of<T>(sum[warp][lane], sum[warp + kHalf][lane]));
  } else if (lane == 0) {
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
  pdl_wait();
  pdl_trigger();
  gemv_scalar_rows<kGemvWarps, kGemvMaxTokens>(x, y, n, in, out, [&](int o) {
    const WT* wrow = w + (int64_t)o * in;
    const float* srow = kInt8 ? scales + (int64_t)o * (in / group_size) : nullptr;
    return [=](int k) { return kInt8 ? to_float(wrow[k]) * srow[k / group_size] : to_float(wrow[k]); };
  });
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
  pdl_wait();
  pdl_trigger();
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
// W8A16 tensor-core GEMM (n_tokens > kGemvMaxTokens, int8 weights, fp16/bf16 activations).
//
// A block computes y for kMmaRows output features x kTok tokens. It streams W (int8), x and the group
// scales through a kStages-deep cp.async pipeline of kMmaK-wide k slices; warp w of the block owns the
// 32-wide sub-slice [32 w, 32 w + 32) of every stage (two m16n8k16 k steps), and the warps' partial
// sums are added through shared memory at the end. In the MMA, A = W tile (rows = output features),
// B = x^T (columns = tokens), C = y^T tile in fp32.
//
// k order inside a warp's 32-wide slice: the MMA only needs A and B to agree on which k each fragment
// element is, so lane (g = lane / 4, t = lane % 4) takes the 8 consecutive k at 8 t: bytes 4s..4s+3 feed
// k step s (fragment k 2t, 2t+1, 2t+8, 2t+9). One 8-byte load of W per row and one 16-byte load of x
// per token then fill the fragments of both steps.
// Shared-memory row strides: W rows are kMmaK + 32 bytes (40 words = 8 mod 32: the 8-byte loads of
// rows g = 0..3 and t = 0..3 in one half-warp hit distinct banks), x rows are 2 kMmaK + 64 bytes (80
// words = 16 mod 32: the 16-byte loads of a quarter-warp hit distinct banks).
constexpr int kMmaRows = 32;                   // output features per block: two m16 tiles
constexpr int kMmaK = 128;                     // k per pipeline stage
constexpr int kMmaWarps = 4;
constexpr int kMmaSlice = kMmaK / kMmaWarps;   // 32: k per warp per stage; one group scale per slice
constexpr int kMmaWStride = kMmaK + 32;        // bytes
constexpr int kMmaXStride = 2 * kMmaK + 64;    // bytes

template <int kTok, int kStages> struct MmaLayout {
  static constexpr int kWBytes = kMmaRows * kMmaWStride;
  static constexpr int kXBytes = kTok * kMmaXStride;
  static constexpr int kSBytes = kMmaRows * kMmaWarps * 4;  // fp32 scale per (row, warp slice)
  static constexpr int kStageBytes = kWBytes + kXBytes + kSBytes;
  static constexpr int kRedStride = kTok + 1;  // floats per row of the final reduction buffer
  static constexpr int kRedBytes = kMmaWarps * kMmaRows * kRedStride * 4;
  static constexpr int kSmemBytes = kStages * kStageBytes > kRedBytes ? kStages * kStageBytes : kRedBytes;
  static_assert(kStageBytes % 16 == 0, "stages must keep 16-byte alignment");
};

// cp.async of 4 bytes (the group scales); the 16-byte copies, commit / wait and the MMA are mma.cuh's.
// When !valid nothing is read and the destination is zero-filled.
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = (uint32_t)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 4 : 0));
}

// x: T [n, in]; w: int8 [out, in]; scales: fp32 [out, in / group_size]; y: T [n, out].
// grid = (ceil(out / kMmaRows), ceil(n / kTok)), block = kMmaWarps warps, dynamic shared memory
// MmaLayout::kSmemBytes. Requires in % kMmaK == 0, group_size % kMmaSlice == 0, x and w 16-byte aligned.
template <typename T, int kTok, int kStages>
static __global__ void __launch_bounds__(kMmaWarps* kWarpSize)
    gemm_int8_mma_kernel(const T* __restrict__ x, const int8_t* __restrict__ w, const float* __restrict__ scales,
                         int group_size, T* __restrict__ y, int n, int in, int out) {
  using L = MmaLayout<kTok, kStages>;
  constexpr int kThreads = kMmaWarps * kWarpSize;
  constexpr int kNTiles = kTok / 8;
  extern __shared__ uint4 smem_words[];  // uint4: 16-byte aligned for cp.async
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_words);
  const int tid = threadIdx.x, warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int o0 = blockIdx.x * kMmaRows, tok0 = blockIdx.y * kTok;
  const int n_groups = in / group_size, k_tiles = in / kMmaK;
  pdl_wait();
  pdl_trigger();

  auto load_stage = [&](int kt) {
    unsigned char* st = smem + (kt % kStages) * L::kStageBytes;
    const int k0 = kt * kMmaK;
    for (int e = tid; e < kMmaRows * (kMmaK / 16); e += kThreads) {
      const int r = e / (kMmaK / 16), j = e % (kMmaK / 16);
      const bool ok = o0 + r < out;
      cp_async_16(st + r * kMmaWStride + j * 16, ok ? w + (int64_t)(o0 + r) * in + k0 + j * 16 : w, ok);
    }
    unsigned char* xs = st + L::kWBytes;
    for (int e = tid; e < kTok * (kMmaK / 8); e += kThreads) {
      const int r = e / (kMmaK / 8), j = e % (kMmaK / 8);
      const bool ok = tok0 + r < n;
      cp_async_16(xs + r * kMmaXStride + j * 16, ok ? x + (int64_t)(tok0 + r) * in + k0 + j * 8 : x, ok);
    }
    float* ss = reinterpret_cast<float*>(xs + L::kXBytes);
    for (int e = tid; e < kMmaRows * kMmaWarps; e += kThreads) {
      const int r = e / kMmaWarps, j = e % kMmaWarps;
      const bool ok = o0 + r < out;
      cp_async4(ss + e, ok ? scales + (int64_t)(o0 + r) * n_groups + (k0 + j * kMmaSlice) / group_size : scales,
                ok);
    }
  };

  float acc[2][kNTiles][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < kNTiles; ++ni)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[mi][ni][c] = 0.f;

  auto compute_stage = [&](int kt) {
    const unsigned char* st = smem + (kt % kStages) * L::kStageBytes;
    const unsigned char* xs = st + L::kWBytes;
    const float* ss = reinterpret_cast<const float*>(xs + L::kXBytes);
    uint32_t a[2][2][4];  // [m tile][k step][register]
    float sc[2][2];       // [m tile][row g, row g + 8]: this warp slice's group scales
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      const int r = mi * 16 + g;
      const uint2 w0 = *reinterpret_cast<const uint2*>(st + r * kMmaWStride + warp * kMmaSlice + t * 8);
      const uint2 w8 = *reinterpret_cast<const uint2*>(st + (r + 8) * kMmaWStride + warp * kMmaSlice + t * 8);
      int8x4_to_pairs<T>(w0.x, a[mi][0][0], a[mi][0][2]);
      int8x4_to_pairs<T>(w8.x, a[mi][0][1], a[mi][0][3]);
      int8x4_to_pairs<T>(w0.y, a[mi][1][0], a[mi][1][2]);
      int8x4_to_pairs<T>(w8.y, a[mi][1][1], a[mi][1][3]);
      sc[mi][0] = ss[r * kMmaWarps + warp];
      sc[mi][1] = ss[(r + 8) * kMmaWarps + warp];
    }
#pragma unroll
    for (int ni = 0; ni < kNTiles; ++ni) {
      if (tok0 + ni * 8 >= n) continue;  // warp-uniform: no token of this n8 tile
      const uint4 xv = *reinterpret_cast<const uint4*>(xs + (ni * 8 + g) * kMmaXStride + warp * 2 * kMmaSlice + t * 16);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        float p[4] = {0.f, 0.f, 0.f, 0.f};
        mma_m16n8k16<T>(p, a[mi][0], xv.x, xv.y);
        mma_m16n8k16<T>(p, a[mi][1], xv.z, xv.w);
        acc[mi][ni][0] = fmaf(p[0], sc[mi][0], acc[mi][ni][0]);
        acc[mi][ni][1] = fmaf(p[1], sc[mi][0], acc[mi][ni][1]);
        acc[mi][ni][2] = fmaf(p[2], sc[mi][1], acc[mi][ni][2]);
        acc[mi][ni][3] = fmaf(p[3], sc[mi][1], acc[mi][ni][3]);
      }
    }
  };

  // Pipeline: stage kt is loaded kStages - 1 iterations before it is used; the barrier at the top of
  // iteration kt also tells every thread that stage kt - 1 (the one overwritten next) has been used.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(s);
    cp_async_commit();
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (kt + kStages - 1 < k_tiles) load_stage(kt + kStages - 1);
    cp_async_commit();
    compute_stage(kt);
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the pipeline buffers, which now hold the reduction

  // C fragment: c0, c1 at (row g, tokens 2t, 2t + 1), c2, c3 at row g + 8.
  float* red = reinterpret_cast<float*>(smem);  // [kMmaWarps][kMmaRows][kRedStride]
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < kNTiles; ++ni)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int r = mi * 16 + g + (c >= 2 ? 8 : 0), tk = ni * 8 + 2 * t + (c & 1);
        red[(warp * kMmaRows + r) * L::kRedStride + tk] = acc[mi][ni][c];
      }
  __syncthreads();
  for (int e = tid; e < kMmaRows * kTok; e += kThreads) {
    const int tk = e / kMmaRows, r = e % kMmaRows;
    if (tok0 + tk >= n || o0 + r >= out) continue;
    float v = 0.f;
#pragma unroll
    for (int wi = 0; wi < kMmaWarps; ++wi) v += red[(wi * kMmaRows + r) * L::kRedStride + tk];
    y[(int64_t)(tok0 + tk) * out + o0 + r] = from_float<T>(v);
  }
}


// int8 GEMV on the tensor cores (decode: n <= kGemvMaxTokens, fp16/bf16 activations, in % 64 == 0,
// group_size % 64 == 0). Why: the warp-per-row GEMV spends ~3 instructions per int8 weight (convert,
// widen x, FMA), and its int8 -> fp32 conversions alone, at 16 per clock per SM, cap it at ~4.2 TB/s on
// an H200: it ran int8 decode at 58% of the bandwidth limit. Here a weight costs ~1.25 instructions
// (byte permutes and one f16x2 subtract per pair, exact as in int8x4_to_pairs) and the products run on
// the tensor cores, where x needs no conversion at all.
//
// A block owns kQRows = 16 output rows (one m16 tile, A = W) and its kWarps warps split k into 64-wide
// steps, warp w taking steps w, w + kWarps, ... (so each row is still read front to back). In one step
// lane (g = lane / 4, t = lane % 4) loads the 16 bytes at k = 64 s + 16 t of rows g and g + 8: word i of
// them feeds the 4 k-slots (2t, 2t + 1, 2t + 8, 2t + 9) of MMA i. B = x^T: lane g < NT supplies token
// g's 16 halves at the same k (two 16-byte loads, already the B registers), other lanes zeros. A step is
// one 64-wide group slice of each row (group_size % 64 == 0), so its fp32 partial is scaled once.
// The warps' partial sums meet in shared memory.
constexpr int kQRows = 16;   // output rows per block
constexpr int kQUnroll = 4;  // steps in flight per warp: 2 x 16 bytes each per lane

// kSwiglu (w = [W1; W3], out = 2 hidden, y: [NT, hidden] = swiglu(x W1^T, x W3^T)): the tile's rows g
// are the gate features j0 + g and its rows g + 8 the up features hidden + j0 + g, 8 features a block.
template <typename T, int NT, int kWarps, bool kSwiglu = false>
static __global__ void __launch_bounds__(kWarps* kWarpSize)
    gemv_int8_mma_kernel(const T* __restrict__ x, const int8_t* __restrict__ w, const float* __restrict__ scales,
                         int group_size, T* __restrict__ y, int in, int out) {
  static_assert(NT <= 8, "one n8 tile of tokens");
  __shared__ float red[kWarps][kQRows][NT];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int hidden = out / 2;
  const int o0 = blockIdx.x * (kSwiglu ? kQRows / 2 : kQRows);
  // Rows past the end are clamped to the last one: loaded, never stored.
  const int ra = kSwiglu ? min(o0 + g, hidden - 1) : min(o0 + g, out - 1);
  const int rb = kSwiglu ? hidden + ra : min(o0 + g + 8, out - 1);
  const int8_t* wa = w + (int64_t)ra * in + 16 * t;                     // int8 [in] of row g, this lane's 16 bytes
  const int8_t* wb = w + (int64_t)rb * in + 16 * t;                     // int8 [in] of row g + 8
  const int n_steps = in / 64, n_groups = in / group_size;
  const float* sa = scales + (int64_t)ra * n_groups;  // fp32 [n_groups] of row g
  const float* sb = scales + (int64_t)rb * n_groups;
  const bool has_x = g < NT;
  const T* xr = x + (int64_t)(has_x ? g : 0) * in + 16 * t;  // T [in] of token g, this lane's 16 values

  float acc[4] = {0.f, 0.f, 0.f, 0.f};  // C fragment: (row g, tokens 2t, 2t+1), (row g+8, tokens 2t, 2t+1)
  auto compute = [&](const uint4& va, const uint4& vb, int step) {
    uint32_t xv[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
    if (has_x) {
      const uint4 x0 = *reinterpret_cast<const uint4*>(xr + step * 64);
      const uint4 x1 = *reinterpret_cast<const uint4*>(xr + step * 64 + 8);
      xv[0] = x0.x, xv[1] = x0.y, xv[2] = x0.z, xv[3] = x0.w, xv[4] = x1.x, xv[5] = x1.y, xv[6] = x1.z, xv[7] = x1.w;
    }
    const uint32_t a_words[4] = {va.x, va.y, va.z, va.w}, b_words[4] = {vb.x, vb.y, vb.z, vb.w};
    float p[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      uint32_t a[4];  // A rows (g, g+8) x k-slots (2t, 2t+1 | 2t+8, 2t+9) <- bytes (0, 1 | 2, 3) of word i
      int8x4_to_pairs<T>(a_words[i], a[0], a[2]);
      int8x4_to_pairs<T>(b_words[i], a[1], a[3]);
      mma_m16n8k16<T>(p, a, xv[2 * i], xv[2 * i + 1]);
    }
    const int grp = step * 64 / group_size;
    const float sca = __ldg(sa + grp), scb = __ldg(sb + grp);
    acc[0] = fmaf(p[0], sca, acc[0]);
    acc[1] = fmaf(p[1], sca, acc[1]);
    acc[2] = fmaf(p[2], scb, acc[2]);
    acc[3] = fmaf(p[3], scb, acc[3]);
  };

  uint4 va[kQUnroll], vb[kQUnroll];
  int s = warp;
  const bool first_full = s + (kQUnroll - 1) * kWarps < n_steps;
  if (first_full) {  // weights only: allowed before pdl_wait()
#pragma unroll
    for (int u = 0; u < kQUnroll; ++u) {
      va[u] = load_weights16(wa + (s + u * kWarps) * 64);
      vb[u] = load_weights16(wb + (s + u * kWarps) * 64);
    }
  }
  pdl_wait();
  if (first_full) {
#pragma unroll
    for (int u = 0; u < kQUnroll; ++u) compute(va[u], vb[u], s + u * kWarps);
    s += kQUnroll * kWarps;
  }
  for (; s + (kQUnroll - 1) * kWarps < n_steps; s += kQUnroll * kWarps) {
#pragma unroll
    for (int u = 0; u < kQUnroll; ++u) {
      va[u] = load_weights16(wa + (s + u * kWarps) * 64);
      vb[u] = load_weights16(wb + (s + u * kWarps) * 64);
    }
#pragma unroll
    for (int u = 0; u < kQUnroll; ++u) compute(va[u], vb[u], s + u * kWarps);
  }
  for (; s < n_steps; s += kWarps) compute(load_weights16(wa + s * 64), load_weights16(wb + s * 64), s);
  pdl_trigger();

#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int n = 2 * t + j;
    if (n < NT) {
      red[warp][g][n] = acc[j];
      red[warp][g + 8][n] = acc[2 + j];
    }
  }
  __syncthreads();
  auto row_sum = [&](int r, int n) {
    float v = 0.f;
#pragma unroll
    for (int wi = 0; wi < kWarps; ++wi) v += red[wi][r][n];
    return v;
  };
  if constexpr (kSwiglu) {
    for (int e = threadIdx.x; e < (kQRows / 2) * NT; e += kWarps * kWarpSize) {
      const int r = e % (kQRows / 2), n = e / (kQRows / 2);
      if (o0 + r < hidden) y[(int64_t)n * hidden + o0 + r] = from_float<T>(swiglu_of<T>(row_sum(r, n), row_sum(r + 8, n)));
    }
  } else {
    for (int e = threadIdx.x; e < kQRows * NT; e += kWarps * kWarpSize) {
      const int r = e % kQRows, n = e / kQRows;
      if (o0 + r < out) y[(int64_t)n * out + o0 + r] = from_float<T>(row_sum(r, n));
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

// Which int8 decode GEMV runs: the tensor-core one (default) or the warp-per-row one, set by
// KUIPER_INT8_GEMV=mma|vec for measurements; KUIPER_INT8_GEMV_WARPS=2|4|8 pins the block size.
enum class Int8Gemv { kMma, kVec };
Int8Gemv int8_gemv_choice() {
  static const Int8Gemv choice = [] {
    const char* e = std::getenv("KUIPER_INT8_GEMV");
    return e != nullptr && std::string(e) == "vec" ? Int8Gemv::kVec : Int8Gemv::kMma;
  }();
  return choice;
}

// Blocks of gemv_int8_mma_kernel<T, NT, kWarps, S> resident on the whole GPU at once (computed once).
template <typename T, int NT, int kWarps, bool S> int int8_mma_resident_blocks() {
  static const int blocks = [] {
    int per_sm = 0, dev = 0, sms = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gemv_int8_mma_kernel<T, NT, kWarps, S>, kWarps * kWarpSize,
                                                  0);
    return std::max(1, per_sm * sms);
  }();
  return blocks;
}

// Warps per block. A block streams 16 whole rows, so it runs long, and a grid whose last wave is only
// partly full leaves most SMs idle at the end: the Llama-3-70B w2 (8192 x 28672, 512 blocks) ran 1.3
// waves of 8-warp blocks at 71% of the copy bandwidth. Take the block size whose last wave is fullest
// (fewer warps: more blocks resident), preferring more warps (more bytes in flight per row) on ties.
template <typename T, int NT, bool S> int int8_mma_warps(int64_t blocks) {
  static const int pinned = [] {
    const char* e = std::getenv("KUIPER_INT8_GEMV_WARPS");
    return e != nullptr ? std::atoi(e) : 0;
  }();
  if (pinned == 2 || pinned == 4 || pinned == 8) return pinned;
  const int resident[3] = {int8_mma_resident_blocks<T, NT, 8, S>(), int8_mma_resident_blocks<T, NT, 4, S>(),
                           int8_mma_resident_blocks<T, NT, 2, S>()};
  const int warps[3] = {8, 4, 2};
  int best = 8;
  double best_fill = -1.0;
  for (int i = 0; i < 3; ++i) {
    const int64_t waves = (blocks + resident[i] - 1) / resident[i];
    const double fill = (double)blocks / (double)(waves * resident[i]);  // busy fraction of the slots
    if (fill > best_fill + 0.02) best_fill = fill, best = warps[i];
  }
  return best;
}

template <typename T, int NT, bool S>
Status launch_gemv_int8_mma_nt(const MatmulArgs<T, int8_t>& a, cudaStream_t stream) {
  const int64_t blocks = S ? ceil_div(a.out / 2, kQRows / 2) : ceil_div(a.out, kQRows);
  const dim3 grid((unsigned)blocks);
  switch (int8_mma_warps<T, NT, S>(blocks)) {
    case 2: return launch_kernel(gemv_int8_mma_kernel<T, NT, 2, S>, grid, 2 * kWarpSize, 0, stream, 1, a.x, a.w, a.scales, a.group_size, a.y, a.in, a.out);
    case 4: return launch_kernel(gemv_int8_mma_kernel<T, NT, 4, S>, grid, 4 * kWarpSize, 0, stream, 1, a.x, a.w, a.scales, a.group_size, a.y, a.in, a.out);
    default: return launch_kernel(gemv_int8_mma_kernel<T, NT, 8, S>, grid, 8 * kWarpSize, 0, stream, 1, a.x, a.w, a.scales, a.group_size, a.y, a.in, a.out);
  }
}

template <typename T, bool S> Status launch_gemv_int8_mma(const MatmulArgs<T, int8_t>& a, cudaStream_t stream) {
  switch (a.n) {
    case 1: return launch_gemv_int8_mma_nt<T, 1, S>(a, stream);
    case 2: return launch_gemv_int8_mma_nt<T, 2, S>(a, stream);
    case 3: return launch_gemv_int8_mma_nt<T, 3, S>(a, stream);
    case 4: return launch_gemv_int8_mma_nt<T, 4, S>(a, stream);
    default: return base::Internal("matmul: int8 GEMV called with " + std::to_string(a.n) + " tokens");
  }
}

// True when the tensor-core int8 GEMV takes these arguments (see gemv_int8_mma_kernel).
template <typename T, typename WT> bool int8_gemv_mma_ok(const MatmulArgs<T, WT>& a) {
  if constexpr (!std::is_same_v<WT, int8_t> || std::is_same_v<T, float>) {
    return false;
  } else {
    return int8_gemv_choice() != Int8Gemv::kVec && a.in % 64 == 0 && a.group_size % 64 == 0 &&
           is_aligned(a.x, 16) && is_aligned(a.w, 16);
  }
}

// True when the vector GEMV takes these arguments (else the scalar one).
template <typename T, typename WT> bool gemv_vec_ok(const MatmulArgs<T, WT>& a) {
  constexpr int kW = kVec16<WT>;
  return a.in % kW == 0 && is_aligned(a.x, 16) && is_aligned(a.w, 16) &&
         (!std::is_same_v<WT, int8_t> || a.group_size % kW == 0);
}

// S (swiglu): see gemv_vec_kernel / gemv_int8_mma_kernel; a.out is then 2 hidden, and the caller has
// checked gemv_fusable().
template <typename T, typename WT, bool S = false> Status launch_gemv(const MatmulArgs<T, WT>& a, cudaStream_t stream) {
  if constexpr (std::is_same_v<WT, int8_t> && !std::is_same_v<T, float>) {
    if (int8_gemv_mma_ok(a)) return launch_gemv_int8_mma<T, S>(a, stream);
  }
  const dim3 block(kGemvWarps * kWarpSize);
  const dim3 grid((unsigned)(S ? ceil_div(a.out / 2, kGemvWarps / 2) : ceil_div(a.out, kGemvWarps)));
  if (!gemv_vec_ok(a)) {
    if constexpr (S) return base::Internal("matmul_swiglu: no fused scalar GEMV");
    return launch_kernel(gemv_scalar_kernel<T, WT>, grid, block, 0, stream, 1, a.x, a.w, a.scales, a.group_size, a.y,
                         a.n, a.in, a.out);
  }
  switch (a.n) {
    case 1: return launch_kernel(gemv_vec_kernel<T, WT, 1, S>, grid, block, 0, stream, 1, a.x, a.w, a.scales, a.group_size, a.y, a.in, a.out);
    case 2: return launch_kernel(gemv_vec_kernel<T, WT, 2, S>, grid, block, 0, stream, 1, a.x, a.w, a.scales, a.group_size, a.y, a.in, a.out);
    case 3: return launch_kernel(gemv_vec_kernel<T, WT, 3, S>, grid, block, 0, stream, 1, a.x, a.w, a.scales, a.group_size, a.y, a.in, a.out);
    case 4: return launch_kernel(gemv_vec_kernel<T, WT, 4, S>, grid, block, 0, stream, 1, a.x, a.w, a.scales, a.group_size, a.y, a.in, a.out);
    default: return base::Internal("matmul: GEMV called with " + std::to_string(a.n) + " tokens");
  }
}

template <typename T, typename WT> Status launch_gemm_tiled(const MatmulArgs<T, WT>& a, cudaStream_t stream) {
  const int64_t m_blocks = ceil_div(a.n, kTileM);
  KP_CHECK_ARG(m_blocks <= 65535, "matmul: " + std::to_string(a.n) + " tokens exceed the tiled GEMM grid");
  const dim3 grid((unsigned)ceil_div(a.out, kTileN), (unsigned)m_blocks);
  return launch_kernel(gemm_tiled_kernel<T, WT>, grid, kTileThreads, 0, stream, 1, a.x, a.w, a.scales, a.group_size,
                       a.y, a.n, a.in, a.out);
}

// True when the W8A16 tensor-core GEMM takes these arguments (see gemm_int8_mma_kernel).
template <typename T> bool int8_mma_ok(const MatmulArgs<T, int8_t>& a) {
  return (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>) && a.in % kMmaK == 0 &&
         a.group_size % kMmaSlice == 0 && is_aligned(a.x, 16) && is_aligned(a.w, 16);
}

template <typename T, int kTok, int kStages>
Status launch_gemm_int8_mma_tiles(const MatmulArgs<T, int8_t>& a, cudaStream_t stream) {
  constexpr int kSmem = MmaLayout<kTok, kStages>::kSmemBytes;
  const int64_t t_blocks = ceil_div(a.n, kTok);
  KP_CHECK_ARG(t_blocks <= 65535, "matmul: " + std::to_string(a.n) + " tokens exceed the int8 GEMM grid");
  auto* kernel = gemm_int8_mma_kernel<T, kTok, kStages>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  const dim3 grid((unsigned)ceil_div(a.out, kMmaRows), (unsigned)t_blocks);
  return launch_kernel(kernel, grid, kMmaWarps * kWarpSize, kSmem, stream, 1, a.x, a.w, a.scales, a.group_size, a.y,
                       a.n, a.in, a.out);
}

// Token tile: 16 for short prompts (one tile, a 6-deep pipeline of W to keep HBM busy: this case is
// bound by reading the weights once), 64 beyond (W is then re-read once per 64 tokens).
template <typename T> Status launch_gemm_int8_mma(const MatmulArgs<T, int8_t>& a, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, float>) {
    return base::Internal("matmul: no int8 tensor-core GEMM for fp32 activations");
  } else {
    if (a.n <= 16) return launch_gemm_int8_mma_tiles<T, 16, 6>(a, stream);
    return launch_gemm_int8_mma_tiles<T, 64, 3>(a, stream);
  }
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
  return cublas_gemm_nt<T>(a.x, a.w, a.y, a.n, a.in, a.out, a.out, device, stream);
}

template <typename T, typename WT>
Status matmul_typed(const Tensor& x, const ConstTensor& weight, const ConstTensor& scales, int group_size, Tensor& y,
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
  if constexpr (std::is_same_v<T, WT>) {
    return launch_cublas(a, x.device_id(), stream);
  } else {
    if constexpr (kInt8)
      if (int8_mma_ok(a)) return launch_gemm_int8_mma(a, stream);
    return launch_gemm_tiled(a, stream);
  }
}

// The fused swiglu GEMV when it applies (n <= kGemvMaxTokens, a vector or tensor-core GEMV path).
template <typename T, typename WT>
Status matmul_swiglu_typed(const Tensor& x, const ConstTensor& w13, const ConstTensor& scales, int group_size,
                           Tensor& out, cudaStream_t stream, bool* fused) {
  constexpr bool kInt8 = std::is_same_v<WT, int8_t>;
  MatmulArgs<T, WT> a{static_cast<const T*>(x.data()), static_cast<const WT*>(w13.data()),
                      kInt8 ? scales.ptr<float>() : nullptr, kInt8 ? group_size : 1, static_cast<T*>(out.data()),
                      (int)x.dim(0), (int)x.dim(1), (int)w13.dim(0)};
  *fused = a.n <= kGemvMaxTokens && (int8_gemv_mma_ok(a) || gemv_vec_ok(a));
  return *fused ? launch_gemv<T, WT, true>(a, stream) : Status::Ok();
}

}  // namespace

Status matmul_swiglu_fused(const Tensor& x, const ConstTensor& w13, const ConstTensor& scales, int group_size,
                           Tensor& out, cudaStream_t stream, bool* fused) {
  *fused = false;
  if (x.dim(0) == 0 || x.dim(1) > INT_MAX || w13.dim(0) > INT_MAX) return Status::Ok();
  return dispatch_float(x.dtype(), "matmul_swiglu", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    switch (w13.dtype()) {
      case base::DType::kFp32: return matmul_swiglu_typed<T, float>(x, w13, scales, group_size, out, stream, fused);
      case base::DType::kFp16: return matmul_swiglu_typed<T, __half>(x, w13, scales, group_size, out, stream, fused);
      case base::DType::kBf16:
        return matmul_swiglu_typed<T, __nv_bfloat16>(x, w13, scales, group_size, out, stream, fused);
      case base::DType::kInt8: return matmul_swiglu_typed<T, int8_t>(x, w13, scales, group_size, out, stream, fused);
      default: return quant_gemv_mma_swiglu_fused(x, w13, out, stream, fused);  // the GGUF block types
    }
  });
}
template <typename T>
Status cublas_gemm_nt(const T* x, const T* w, T* y, int n, int in, int rows, int ldy, int device, cudaStream_t stream) {
  cublasHandle_t handle = nullptr;
  KP_RETURN_IF_ERROR(cublas_handle(device, &handle));
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  const float alpha = 1.f, beta = 0.f;
  // As launch_cublas: y^T [rows, n] (column-major, ld ldy) = W (as [in, rows] column-major)^T x^T.
  CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, in, &alpha, w, cuda_dtype<T>(), in, x,
                            cuda_dtype<T>(), in, &beta, y, cuda_dtype<T>(), ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return Status::Ok();
}
template Status cublas_gemm_nt<float>(const float*, const float*, float*, int, int, int, int, int, cudaStream_t);
template Status cublas_gemm_nt<__half>(const __half*, const __half*, __half*, int, int, int, int, int, cudaStream_t);
template Status cublas_gemm_nt<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*, int, int,
                                              int, int, int, cudaStream_t);

Status matmul(const Tensor& x, const ConstTensor& weight, const ConstTensor& scales, int group_size, Tensor& y,
              cudaStream_t stream) {
  if (base::is_block_type(weight.dtype())) return matmul_quant(x, weight, y, stream);
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
