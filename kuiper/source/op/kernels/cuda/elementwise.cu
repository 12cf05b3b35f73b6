// Element-wise and row-wise CUDA kernels: swiglu, add, convert (grid-stride, 16-byte vectors behind an
// alignment check with a scalar tail) and the row reductions softmax and argmax (one block per row).
#include <cfloat>
#include <climits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace kernel::cuda {
namespace {

// Elements per thread per step on the vector path: 16 bytes of fp16/bf16, 32 bytes of fp32.
constexpr int kVec = 8;
constexpr int kThreads = 256;

bool all_aligned16(std::initializer_list<const void*> ps) {
  for (const void* p : ps)
    if (!is_aligned(p, 16)) return false;
  return true;
}

// out = silu(gate) * up, silu(g) = g / (1 + exp(-g)).
// gate, up, out: T [numel]. N = kVec (pointers 16-byte aligned) or 1.
template <typename T, int N>
static __global__ void swiglu_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                                     int64_t numel) {
  pdl_wait();
  pdl_trigger();
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t n_vec = numel / N;
  for (int64_t v = tid; v < n_vec; v += stride) {
    float g[N], u[N], r[N];
    load_floats<T, N>(gate + v * N, g);
    load_floats<T, N>(up + v * N, u);
#pragma unroll
    for (int j = 0; j < N; ++j) r[j] = g[j] / (1.f + expf(-g[j])) * u[j];
    store_floats<T, N>(out + v * N, r);
  }
  for (int64_t i = n_vec * N + tid; i < numel; i += stride) {
    const float g = to_float(gate[i]);
    out[i] = from_float<T>(g / (1.f + expf(-g)) * to_float(up[i]));
  }
}

// out = a + b. a, b, out: T [numel]; out may alias a or b (each element is read, then written, by one
// thread), so no __restrict__.
template <typename T, int N>
static __global__ void add_kernel(const T* a, const T* b, T* out, int64_t numel) {
  pdl_wait();
  pdl_trigger();
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t n_vec = numel / N;
  for (int64_t v = tid; v < n_vec; v += stride) {
    float fa[N], fb[N];
    load_floats<T, N>(a + v * N, fa);
    load_floats<T, N>(b + v * N, fb);
#pragma unroll
    for (int j = 0; j < N; ++j) fa[j] += fb[j];
    store_floats<T, N>(out + v * N, fa);
  }
  for (int64_t i = n_vec * N + tid; i < numel; i += stride)
    out[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
}

// out = (To) in. in: Ti [numel]; out: To [numel].
template <typename Ti, typename To, int N>
static __global__ void convert_kernel(const Ti* __restrict__ in, To* __restrict__ out, int64_t numel) {
  pdl_wait();
  pdl_trigger();
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t n_vec = numel / N;
  for (int64_t v = tid; v < n_vec; v += stride) {
    float f[N];
    load_floats<Ti, N>(in + v * N, f);
    store_floats<To, N>(out + v * N, f);
  }
  for (int64_t i = n_vec * N + tid; i < numel; i += stride) out[i] = from_float<To>(to_float(in[i]));
}

// In-place softmax of each row: x = exp(x - max) / sum(exp(x - max)). x: fp32 [rows, cols];
// grid = rows, one block per row.
static __global__ void softmax_kernel(float* __restrict__ x, int cols) {
  __shared__ float red[kWarpSize];
  float* row = x + (int64_t)blockIdx.x * cols;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, row[i]);
  m = block_max(m, red);
  float s = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) s += expf(row[i] - m);
  const float inv = 1.f / block_sum(s, red);
  for (int i = threadIdx.x; i < cols; i += blockDim.x) row[i] = expf(row[i] - m) * inv;
}

// (v, i) beats (bv, bi): larger value, or equal value and lower index. NaN never wins (read as -inf).
__device__ __forceinline__ bool argmax_better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

// out[r] = argmax of row r (lowest index on ties). x: T [rows, cols]; out: int32 [rows]; grid = rows.
template <typename T>
static __global__ void argmax_kernel(const T* __restrict__ x, int cols, int32_t* __restrict__ out) {
  __shared__ float red_v[kWarpSize];
  __shared__ int red_i[kWarpSize];
  pdl_wait();
  pdl_trigger();
  const T* row = x + (int64_t)blockIdx.x * cols;
  float bv = -INFINITY;
  int bi = INT_MAX;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) {
    float v = to_float(row[i]);
    if (isnan(v)) v = -INFINITY;
    if (argmax_better(v, i, bv, bi)) bv = v, bi = i;
  }
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (argmax_better(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  if (lane == 0) red_v[warp] = bv, red_i[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    const int n_warps = blockDim.x / kWarpSize;
    bv = lane < n_warps ? red_v[lane] : -INFINITY;
    bi = lane < n_warps ? red_i[lane] : INT_MAX;
#pragma unroll
    for (int o = kWarpSize / 2; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (argmax_better(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    // Every element was -inf/NaN only if bi is still INT_MAX, which cols >= 1 rules out: element 0
    // beats the initial (-inf, INT_MAX).
    if (lane == 0) out[blockIdx.x] = bi;
  }
}

// Launches an elementwise kernel over numel elements: vec_kernel (kVec elements a thread) when every
// pointer is 16-byte aligned, scalar_kernel (one a thread) otherwise; both take (args..., numel).
template <typename Kernel, typename... Args>
Status launch_elementwise(Kernel vec_kernel, Kernel scalar_kernel, bool vec, int64_t numel, cudaStream_t stream,
                          Args... args) {
  if (vec)
    return launch_kernel(vec_kernel, grid_for(numel / kVec + 1, kThreads), kThreads, 0, stream, 1, args..., numel);
  return launch_kernel(scalar_kernel, grid_for(numel, kThreads), kThreads, 0, stream, 1, args..., numel);
}

}  // namespace

Status swiglu(const Tensor& gate, const Tensor& up, Tensor& out, cudaStream_t stream) {
  const int64_t numel = gate.numel();
  const bool vec = all_aligned16({gate.data(), up.data(), out.data()});
  return dispatch_float(gate.dtype(), "swiglu", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    const T* g = static_cast<const T*>(gate.data());
    const T* u = static_cast<const T*>(up.data());
    T* o = static_cast<T*>(out.data());
    return launch_elementwise(swiglu_kernel<T, kVec>, swiglu_kernel<T, 1>, vec, numel, stream, g, u, o);
  });
}

Status add(const Tensor& a, const Tensor& b, Tensor& out, cudaStream_t stream) {
  const int64_t numel = a.numel();
  const bool vec = all_aligned16({a.data(), b.data(), out.data()});
  return dispatch_float(a.dtype(), "add", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    const T* pa = static_cast<const T*>(a.data());
    const T* pb = static_cast<const T*>(b.data());
    T* po = static_cast<T*>(out.data());
    return launch_elementwise(add_kernel<T, kVec>, add_kernel<T, 1>, vec, numel, stream, pa, pb, po);
  });
}

Status convert(const Tensor& in, Tensor& out, cudaStream_t stream) {
  const int64_t numel = in.numel();
  const bool vec = all_aligned16({in.data(), out.data()});
  return dispatch_float(in.dtype(), "convert", [&](auto in_tag) -> Status {
    using Ti = typename decltype(in_tag)::type;
    return dispatch_float(out.dtype(), "convert", [&](auto out_tag) -> Status {
      using To = typename decltype(out_tag)::type;
      const Ti* pi = static_cast<const Ti*>(in.data());
      To* po = static_cast<To*>(out.data());
      return launch_elementwise(convert_kernel<Ti, To, kVec>, convert_kernel<Ti, To, 1>, vec, numel, stream, pi, po);
    });
  });
}

Status softmax(Tensor& x, cudaStream_t stream) {
  const int64_t rows = x.dim(0), cols = x.dim(1);
  KP_CHECK_ARG(cols > 0 && cols <= INT_MAX, "softmax: row length " + std::to_string(cols) + " out of range");
  KP_CHECK_ARG(rows <= INT_MAX, "softmax: too many rows");
  if (rows == 0) return Status::Ok();
  softmax_kernel<<<(unsigned)rows, 512, 0, stream>>>(x.ptr<float>(), (int)cols);
  CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

Status argmax(const Tensor& x, Tensor& out, cudaStream_t stream) {
  const int64_t rows = x.dim(0), cols = x.dim(1);
  KP_CHECK_ARG(cols > 0 && cols <= INT_MAX, "argmax: row length " + std::to_string(cols) + " out of range");
  KP_CHECK_ARG(rows <= INT_MAX, "argmax: too many rows");
  if (rows == 0) return Status::Ok();
  return dispatch_float(x.dtype(), "argmax", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    return launch_kernel(argmax_kernel<T>, (unsigned)rows, 1024, 0, stream, 1, static_cast<const T*>(x.data()),
                         (int)cols, out.ptr<int32_t>());
  });
}

}  // namespace kernel::cuda
