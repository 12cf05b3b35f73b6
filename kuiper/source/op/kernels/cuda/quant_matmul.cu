// y = x W^T on the GPU for the GGUF block types (q8_0, q4_0, q4_k, q6_k), their dequantization, and
// the embedding lookup's row decoding. A file of its own so that these kernels can be tuned apart.
//
//  - n_tokens <= kQuantGemvMaxTokens (decode), fp16 / bf16 activations, q4_k / q6_k / q8_0: the
//    tensor-core GEMV of quant_gemv_mma.cu. Otherwise (fp32 activations, q4_0, odd sizes):
//    gemv_quant_kernel. One warp per output row; the row's
//    bytes stream through the warp's shared-memory tile with coalesced 16-byte loads (the next tile's
//    loads are issued before the current one is decoded), then each lane decodes 64 values (32 for
//    q8_0 / q4_0, two units) in registers and folds the block scales into its fp32 sums:
//      q4_k  (d sc) (q . x) - (dmin m) (sum x) per sub-block of 32;   q6_k  (d sc) ((q - 32) . x) per 16;
//      q8_0 / q4_0  d (q . x) per block of 32.
//    Lane sums are added with warp shuffles. Rows need not be 16-byte aligned (q6_k rows of 11008
//    values are 9030 bytes): a tile's aligned window is loaded and decoded at the row's byte shift.
//    Without 16-byte alignment of the tensor (or its buffer's padding), gemv_quant_scalar_kernel reads
//    value by value instead: correct, not fast.
//  - more tokens (prefill): the rows are dequantized chunk by chunk into a per-thread scratch of at
//    most kPrefillScratchBytes, in the activation dtype, and multiplied with cuBLAS (tensor cores, fp32
//    accumulation). The whole widened weight never exists: a chunk is a few MiB of one matrix.
//  - dequantize (kernel::dequantize, the tests' and the prefill's): one thread per value, exact
//    (quant_blocks.h: no fused multiply-add in the reference's roundings).
// Tuning notes for later: tile sizes (kTileValues), rows per warp, and an MMA kernel that dequantizes
// in shared memory (as gemm_int8_mma_kernel in matmul.cu) would replace the scratch + cuBLAS path.
#include <algorithm>
#include <climits>
#include <memory>
#include <unordered_map>

#include "base/buffer.h"
#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gemv_scalar.cuh"
#include "kernels/cuda/quant_gemv_mma.h"
#include "kernels/quant_blocks.h"

namespace kernel::cuda {
namespace {

using base::DType;
namespace q = kernel::quant;

constexpr int kQuantGemvMaxTokens = 4;
constexpr int kQuantWarps = 4;          // rows (warps) per block
constexpr int kTileValues = 2048;       // values of a row per shared-memory tile (64 per lane)
constexpr size_t kPrefillScratchBytes = 32u << 20;

// Compile-time facts of each block type.
template <DType QT> struct Block;
template <> struct Block<DType::kQ8_0> { static constexpr int kElems = 32, kBytes = 34, kUnit = 32; };
template <> struct Block<DType::kQ4_0> { static constexpr int kElems = 32, kBytes = 18, kUnit = 32; };
template <> struct Block<DType::kQ4_K> { static constexpr int kElems = 256, kBytes = 144, kUnit = 64; };
template <> struct Block<DType::kQ6_K> { static constexpr int kElems = 256, kBytes = 210, kUnit = 64; };

template <DType QT> struct Tile {
  static constexpr int kBlocks = kTileValues / Block<QT>::kElems;
  static constexpr int kBytes = kBlocks * Block<QT>::kBytes;        // a multiple of 16 for every type
  static constexpr int kWords = kBytes / 16 + 1;                     // the aligned window: one word more
  static constexpr int kRegs = (kWords + kWarpSize - 1) / kWarpSize; // uint4 per lane per tile
  static_assert(kBytes % 16 == 0, "tiles keep the row's 16-byte phase");
};

// 4 bytes from shared memory at an even address (block fields are 2-byte aligned in every row).
__device__ __forceinline__ uint32_t ld32(const uint8_t* p) {
  if ((reinterpret_cast<uintptr_t>(p) & 3) == 0) return *reinterpret_cast<const uint32_t*>(p);
  const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
  return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}

// Byte j of a little-endian word.
__device__ __forceinline__ int byte_of(uint32_t w, int j) { return (w >> (8 * j)) & 0xFF; }

// Eight activations of token row x starting at value k (k a multiple of 8, x 16-byte aligned).
template <typename T> __device__ __forceinline__ void load8(const T* x, float (&f)[8]) { load_floats<T, 8>(x, f); }

// acc[t] += this lane's unit `u` of the tile at `tile` (shared memory, `shift` bytes into the window)
// dotted with the tokens' values from `x0` (the tile's first value in token row 0; rows `in` apart).
template <DType QT, typename T, int NT>
__device__ __forceinline__ void unit_dot(const uint8_t* tile, int u, const T* x0, int in, float (&acc)[NT]) {
  using B = Block<QT>;
  if constexpr (QT == DType::kQ8_0 || QT == DType::kQ4_0) {
    const uint8_t* blk = tile + u * B::kBytes;
    const float d = q::fp16(blk);
    uint32_t w[QT == DType::kQ8_0 ? 8 : 4];
#pragma unroll
    for (int j = 0; j < (QT == DType::kQ8_0 ? 8 : 4); ++j) w[j] = ld32(blk + 2 + 4 * j);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const T* x = x0 + (int64_t)t * in + u * 32;
      float s = 0.f;
#pragma unroll
      for (int k = 0; k < 32; k += 8) {
        float xf[8];
        load8(x + k, xf);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int i = k + j;
          float qv;
          if constexpr (QT == DType::kQ8_0) qv = (float)(int8_t)byte_of(w[i / 4], i % 4);
          else qv = (float)((i < 16 ? (byte_of(w[(i % 16) / 4], i % 4) & 0xF) : (byte_of(w[(i % 16) / 4], i % 4) >> 4)) - 8);
          s = fmaf(qv, xf[j], s);
        }
      }
      acc[t] = fmaf(d, s, acc[t]);
    }
  } else if constexpr (QT == DType::kQ4_K) {
    const int b = u / 4, c = u % 4;  // 64 values: sub-blocks 2c (low nibbles) and 2c + 1 (high)
    const uint8_t* blk = tile + b * B::kBytes;
    const float d = q::fp16(blk), dmin = q::fp16(blk + 2);
    // The 12 scale bytes as three words; bytes picked by selects and shifts, so that they stay in
    // registers (an indexed local array would go to the stack).
    const uint32_t s0 = ld32(blk + q::kQ4_KScales), s1 = ld32(blk + q::kQ4_KScales + 4), s2 = ld32(blk + q::kQ4_KScales + 8);
    auto sb = [&](int k) { return byte_of(k < 4 ? s0 : (k < 8 ? s1 : s2), k % 4); };
    auto scale_min = [&](int j, int* sc, int* m) {  // q4k_scale_min on the words
      if (j < 4) {
        *sc = sb(j) & 63;
        *m = sb(j + 4) & 63;
      } else {
        *sc = (sb(j + 4) & 0xF) | ((sb(j - 4) >> 6) << 4);
        *m = (sb(j + 4) >> 4) | ((sb(j) >> 6) << 4);
      }
    };
    int sc0, m0, sc1, m1;
    scale_min(2 * c, &sc0, &m0);
    scale_min(2 * c + 1, &sc1, &m1);
    uint32_t qs[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) qs[j] = ld32(blk + q::kQ4_KQs + 32 * c + 4 * j);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const T* x = x0 + (int64_t)t * in + b * 256 + 64 * c;
      float qx0 = 0.f, qx1 = 0.f, sx0 = 0.f, sx1 = 0.f;
#pragma unroll
      for (int k = 0; k < 32; k += 8) {
        float lo[8], hi[8];
        load8(x + k, lo);
        load8(x + 32 + k, hi);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int byte = byte_of(qs[(k + j) / 4], (k + j) % 4);
          qx0 = fmaf((float)(byte & 0xF), lo[j], qx0);
          qx1 = fmaf((float)(byte >> 4), hi[j], qx1);
          sx0 += lo[j];
          sx1 += hi[j];
        }
      }
      float a = acc[t];
      a = fmaf(d * (float)sc0, qx0, a);
      a = fmaf(-dmin * (float)m0, sx0, a);
      a = fmaf(d * (float)sc1, qx1, a);
      a = fmaf(-dmin * (float)m1, sx1, a);
      acc[t] = a;
    }
  } else {
    static_assert(QT == DType::kQ6_K, "a block type");
    const int b = u / 4, k4 = u % 4, h = k4 / 2, odd = k4 % 2;  // values 128h + 64 odd .. + 64
    const uint8_t* blk = tile + b * B::kBytes;
    const float d = q::fp16(blk + q::kQ6_KD);
    uint32_t ql[16], qh[8];
#pragma unroll
    for (int j = 0; j < 16; ++j) ql[j] = ld32(blk + 64 * h + 4 * j);
#pragma unroll
    for (int j = 0; j < 8; ++j) qh[j] = ld32(blk + q::kQ6_KQh + 32 * h + 4 * j);
    const uint32_t scw = ld32(blk + q::kQ6_KScales + 8 * h + 4 * odd);  // the 4 scales of these 64 values
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const T* x = x0 + (int64_t)t * in + b * 256 + 128 * h + 64 * odd;
      float a = acc[t];
#pragma unroll
      for (int g = 0; g < 4; ++g) {  // 16 values, one scale
        float s = 0.f;
#pragma unroll
        for (int k = 16 * g; k < 16 * g + 16; k += 8) {
          float xf[8];
          load8(x + k, xf);
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            const int r = 64 * odd + k + j;  // value index within the half
            const int lo = (byte_of(ql[(r % 64) / 4], r % 4) >> (4 * odd)) & 0xF;
            const int hi = (byte_of(qh[(r % 32) / 4], r % 4) >> (2 * (r / 32))) & 3;
            s = fmaf((float)((lo | (hi << 4)) - 32), xf[j], s);
          }
        }
        a = fmaf(d * (float)(int8_t)byte_of(scw, g), s, a);
      }
      acc[t] = a;
    }
  }
}

// x: T [NT, in]; w: block type [out, in] (row_bytes each); y: T [NT, out]. Block: kQuantWarps warps,
// warp w of block b computes row b * kQuantWarps + w. Requires w 16-byte aligned and readable up to
// the next 16-byte boundary past its end, x 16-byte aligned, in % 32 == 0 (whole blocks).
template <DType QT, typename T, int NT>
static __global__ void __launch_bounds__(kQuantWarps* kWarpSize)
    gemv_quant_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, T* __restrict__ y, int in, int out,
                      int64_t row_bytes) {
  using L = Tile<QT>;
  __shared__ uint4 smem[kQuantWarps][L::kWords];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int o = blockIdx.x * kQuantWarps + warp;
  pdl_wait();
  if (o >= out) return;  // the whole warp: no block-wide barriers below
  const uint8_t* row = w + (int64_t)o * row_bytes;
  const uintptr_t row_addr = reinterpret_cast<uintptr_t>(row);
  const int shift = (int)(row_addr & 15);
  const uint8_t* tile = reinterpret_cast<const uint8_t*>(smem[warp]) + shift;
  const int n_tiles = (in + kTileValues - 1) / kTileValues;

  uint4 regs[L::kRegs];
  // The aligned window of tile t: words [0, words) from `base`.
  auto load_tile = [&](int t) {
    const uint8_t* begin = row + (int64_t)t * L::kBytes;
    const int64_t len = t == n_tiles - 1 ? row_bytes - (int64_t)t * L::kBytes : L::kBytes;
    const uint8_t* base = reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(begin) & ~uintptr_t(15));
    const int words = (int)((shift + len + 15) / 16);
#pragma unroll
    for (int r = 0; r < L::kRegs; ++r) {
      const int i = lane + r * kWarpSize;
      if (i < words) regs[r] = load_weights16(base + 16 * i);
    }
  };
  auto store_tile = [&] {
#pragma unroll
    for (int r = 0; r < L::kRegs; ++r) {
      const int i = lane + r * kWarpSize;
      if (i < L::kWords) smem[warp][i] = regs[r];
    }
  };

  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.f;
  load_tile(0);
  for (int t = 0; t < n_tiles; ++t) {
    store_tile();
    __syncwarp();
    if (t + 1 < n_tiles) load_tile(t + 1);  // in flight while this tile is decoded
    const int values = t == n_tiles - 1 ? in - t * kTileValues : kTileValues;
    const int units = values / Block<QT>::kUnit;
    const T* x0 = x + (int64_t)t * kTileValues;
    for (int u = lane; u < units; u += kWarpSize) unit_dot<QT, T, NT>(tile, u, x0, in, acc);
    __syncwarp();
  }
  pdl_trigger();
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = warp_sum(acc[t]);
  if (lane == 0) {
#pragma unroll
    for (int t = 0; t < NT; ++t) y[(int64_t)t * out + o] = from_float<T>(acc[t]);
  }
}

// Any alignment: value by value through quant_blocks.h, the same warp-per-row layout. n <= 4.
template <DType QT, typename T>
static __global__ void __launch_bounds__(kQuantWarps* kWarpSize)
    gemv_quant_scalar_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, T* __restrict__ y, int n, int in,
                             int out, int64_t row_bytes) {
  pdl_wait();
  pdl_trigger();
  gemv_scalar_rows<kQuantWarps, kQuantGemvMaxTokens>(x, y, n, in, out, [&](int o) {
    const uint8_t* row = w + (int64_t)o * row_bytes;
    return [=](int k) {
      return q::value<QT>(row + (k / Block<QT>::kElems) * Block<QT>::kBytes, k % Block<QT>::kElems);
    };
  });
}

// out[r, c] = W[r0 + r, c] as To, for rows [r0, r0 + rows) of W (row_bytes each, cols values).
// One thread per value, grid-stride. WT: a block type, or float / __half / __nv_bfloat16.
template <DType QT, typename To>
static __global__ void dequantize_kernel(const uint8_t* __restrict__ w, To* __restrict__ out, int64_t rows,
                                         int64_t cols, int64_t row_bytes) {
  pdl_wait();
  pdl_trigger();
  const int64_t total = rows * cols;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = e / cols, c = e - r * cols;
    const uint8_t* row = w + r * row_bytes;
    float v;
    if constexpr (QT == DType::kFp32) v = reinterpret_cast<const float*>(row)[c];
    else if constexpr (QT == DType::kFp16) v = __half2float(reinterpret_cast<const __half*>(row)[c]);
    else if constexpr (QT == DType::kBf16) v = __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(row)[c]);
    else v = q::value<QT>(row + (c / Block<QT>::kElems) * Block<QT>::kBytes, (int)(c % Block<QT>::kElems));
    out[e] = from_float<To>(v);
  }
}

// Calls f(std::integral_constant<DType, QT>) for the block type of `t`.
template <typename F> Status dispatch_block(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::kQ8_0: return f(std::integral_constant<DType, DType::kQ8_0>{});
    case DType::kQ4_0: return f(std::integral_constant<DType, DType::kQ4_0>{});
    case DType::kQ4_K: return f(std::integral_constant<DType, DType::kQ4_K>{});
    case DType::kQ6_K: return f(std::integral_constant<DType, DType::kQ6_K>{});
    default: return base::InvalidArgument(std::string(op) + ": not a block type: " + base::dtype_name(t));
  }
}

template <DType QT, typename To>
Status launch_dequantize(const uint8_t* w, To* out, int64_t rows, int64_t cols, int64_t row_bytes, cudaStream_t stream) {
  constexpr int kThreads = 256;
  return launch_kernel(dequantize_kernel<QT, To>, grid_for(rows * cols, kThreads), kThreads, 0, stream, 1, w, out, rows,
                       cols, row_bytes);
}

// The calling thread's prefill scratch on `device` (made at its first prefill: the model's warm-up).
Status prefill_scratch(int device, void** out) {
  struct Scratch {
    void* p = nullptr;
    int device = 0;
    ~Scratch() {
      if (p == nullptr) return;
      int prev = 0;
      cudaGetDevice(&prev);
      cudaSetDevice(device);
      cudaFree(p);
      cudaSetDevice(prev);
    }
  };
  thread_local std::unordered_map<int, std::unique_ptr<Scratch>> scratch;
  std::unique_ptr<Scratch>& s = scratch[device];
  if (!s) {
    auto made = std::make_unique<Scratch>();
    made->device = device;
    if (cudaMalloc(&made->p, kPrefillScratchBytes) != cudaSuccess) {
      cudaGetLastError();
      return base::OutOfMemory("matmul: no room for the " + base::format_size(kPrefillScratchBytes) +
                               " scratch of the quantized prefill on GPU " + std::to_string(device));
    }
    s = std::move(made);
  }
  *out = s->p;
  return Status::Ok();
}

template <DType QT, typename T>
Status matmul_quant_typed(const Tensor& x, const ConstTensor& weight, Tensor& y, cudaStream_t stream) {
  const int n = (int)x.dim(0), in = (int)x.dim(1), out = (int)weight.dim(0);
  const int64_t row_bytes = (int64_t)base::dtype_bytes(QT, in);
  const T* xp = static_cast<const T*>(x.data());
  const uint8_t* wp = static_cast<const uint8_t*>(weight.data());
  T* yp = static_cast<T*>(y.data());
  if (n <= kQuantGemvMaxTokens) {
    if (quant_gemv_mma_takes(x, weight)) return quant_gemv_mma(x, weight, y, stream);
    const dim3 grid((unsigned)ceil_div(out, kQuantWarps)), block(kQuantWarps * kWarpSize);
    // The vector kernel reads whole aligned 16-byte words: up to 15 bytes past the last row must be
    // inside the weight's buffer (the loader pads every tensor to 256 bytes).
    const uint64_t room = weight.buffer()->size() - weight.byte_offset();
    const bool vec = is_aligned(wp, 16) && is_aligned(xp, 16) && room >= (weight.nbytes() + 15) / 16 * 16;
    if (!vec)
      return launch_kernel(gemv_quant_scalar_kernel<QT, T>, grid, block, 0, stream, 1, xp, wp, yp, n, in, out, row_bytes);
    switch (n) {
      case 1: return launch_kernel(gemv_quant_kernel<QT, T, 1>, grid, block, 0, stream, 1, xp, wp, yp, in, out, row_bytes);
      case 2: return launch_kernel(gemv_quant_kernel<QT, T, 2>, grid, block, 0, stream, 1, xp, wp, yp, in, out, row_bytes);
      case 3: return launch_kernel(gemv_quant_kernel<QT, T, 3>, grid, block, 0, stream, 1, xp, wp, yp, in, out, row_bytes);
      default: return launch_kernel(gemv_quant_kernel<QT, T, 4>, grid, block, 0, stream, 1, xp, wp, yp, in, out, row_bytes);
    }
  }
  // Prefill: chunks of rows dequantized into the scratch (as T), each multiplied by cuBLAS into its
  // columns of y.
  void* scratch = nullptr;
  KP_RETURN_IF_ERROR(prefill_scratch(x.device_id(), &scratch));
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(out, kPrefillScratchBytes / ((int64_t)in * sizeof(T))));
  T* wt = static_cast<T*>(scratch);
  for (int64_t o0 = 0; o0 < out; o0 += chunk) {
    const int rows = (int)std::min<int64_t>(chunk, out - o0);
    KP_RETURN_IF_ERROR((launch_dequantize<QT, T>(wp + o0 * row_bytes, wt, rows, in, row_bytes, stream)));
    KP_RETURN_IF_ERROR(cublas_gemm_nt<T>(xp, wt, yp + o0, n, in, rows, out, x.device_id(), stream));
  }
  return Status::Ok();
}

}  // namespace

Status matmul_quant(const Tensor& x, const ConstTensor& weight, Tensor& y, cudaStream_t stream) {
  KP_CHECK_ARG(x.dim(0) <= INT_MAX && x.dim(1) <= INT_MAX && weight.dim(0) <= INT_MAX,
               "matmul: sizes beyond int range: " + x.shape_string() + " x " + weight.shape_string());
  if (x.dim(0) == 0 || weight.dim(0) == 0) return Status::Ok();
  return dispatch_block(weight.dtype(), "matmul", [&](auto qt) -> Status {
    return dispatch_float(x.dtype(), "matmul", [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      return matmul_quant_typed<decltype(qt)::value, T>(x, weight, y, stream);
    });
  });
}

Status dequantize(const ConstTensor& weight, Tensor& out, cudaStream_t stream) {
  const int64_t rows = weight.dim(0), cols = weight.dim(1);
  const int64_t row_bytes = (int64_t)base::dtype_bytes(weight.dtype(), cols);
  const uint8_t* w = static_cast<const uint8_t*>(weight.data());
  float* o = out.ptr<float>();
  switch (weight.dtype()) {
    case DType::kFp32: return launch_dequantize<DType::kFp32, float>(w, o, rows, cols, row_bytes, stream);
    case DType::kFp16: return launch_dequantize<DType::kFp16, float>(w, o, rows, cols, row_bytes, stream);
    case DType::kBf16: return launch_dequantize<DType::kBf16, float>(w, o, rows, cols, row_bytes, stream);
    default:
      return dispatch_block(weight.dtype(), "dequantize", [&](auto qt) -> Status {
        return launch_dequantize<decltype(qt)::value, float>(w, o, rows, cols, row_bytes, stream);
      });
  }
}

}  // namespace kernel::cuda
