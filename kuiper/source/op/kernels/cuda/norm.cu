// RMSNorm and the fused residual-add + RMSNorm on the GPU. One block per token row (grid = n_tokens):
// the block sums the squares of its row (fp32), reduces them, and scales the row by
// rsqrt(mean(x^2) + eps) * weight. Rows are read through 16-byte vectors when every pointer is 16-byte
// aligned and dim is a multiple of the vector width (so every row start is aligned too); otherwise
// element by element.
#include <climits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace kernel::cuda {
namespace {

// x, out: T [n, dim]; weight: fp32 [dim]. N elements per access (dim % N == 0).
template <typename T, int N>
static __global__ void rmsnorm_kernel(const T* __restrict__ x, const float* __restrict__ weight, float eps,
                                      T* __restrict__ out, int dim) {
  __shared__ float red[kWarpSize];
  pdl_wait();
  pdl_trigger();
  const T* xr = x + (int64_t)blockIdx.x * dim;
  T* outr = out + (int64_t)blockIdx.x * dim;
  const int n_vec = dim / N;
  float ss = 0.f;
  for (int v = threadIdx.x; v < n_vec; v += blockDim.x) {
    float f[N];
    load_floats<T, N>(xr + v * N, f);
#pragma unroll
    for (int j = 0; j < N; ++j) ss += f[j] * f[j];
  }
  const float inv = rsqrtf(block_sum(ss, red) / (float)dim + eps);
  for (int v = threadIdx.x; v < n_vec; v += blockDim.x) {
    float f[N], w[N];
    load_floats<T, N>(xr + v * N, f);
    load_floats<float, N>(weight + v * N, w);
#pragma unroll
    for (int j = 0; j < N; ++j) f[j] = f[j] * inv * w[j];
    store_floats<T, N>(outr + v * N, f);
  }
}

// residual += delta (stored rounded to T); out = rmsnorm(residual) computed from the stored values, so
// a later reader of `residual` sees exactly what was normalised.
// residual, delta, out: T [n, dim]; weight: fp32 [dim]. `out` may alias `delta`: each element is read
// and written by the same thread, reads first; hence no __restrict__ on those three.
template <typename T, int N>
static __global__ void add_rmsnorm_kernel(T* residual, const T* delta, const float* __restrict__ weight,
                                          float eps, T* out, int dim) {
  __shared__ float red[kWarpSize];
  pdl_wait();
  pdl_trigger();
  const int64_t row = (int64_t)blockIdx.x * dim;
  const int n_vec = dim / N;
  float ss = 0.f;
  for (int v = threadIdx.x; v < n_vec; v += blockDim.x) {
    float r[N], d[N];
    load_floats<T, N>(residual + row + v * N, r);
    load_floats<T, N>(delta + row + v * N, d);
#pragma unroll
    for (int j = 0; j < N; ++j) r[j] = to_float(from_float<T>(r[j] + d[j]));  // the value stored below
    store_floats<T, N>(residual + row + v * N, r);
#pragma unroll
    for (int j = 0; j < N; ++j) ss += r[j] * r[j];
  }
  const float inv = rsqrtf(block_sum(ss, red) / (float)dim + eps);
  for (int v = threadIdx.x; v < n_vec; v += blockDim.x) {
    float r[N], w[N];
    load_floats<T, N>(residual + row + v * N, r);  // written by this thread above
    load_floats<float, N>(weight + v * N, w);
#pragma unroll
    for (int j = 0; j < N; ++j) r[j] = r[j] * inv * w[j];
    store_floats<T, N>(out + row + v * N, r);
  }
}

// Threads per row: one vector each up to 1024, a multiple of the warp size (the reductions need it).
int threads_for(int64_t n_vec) {
  int64_t t = ceil_div(n_vec, kWarpSize) * kWarpSize;
  return (int)(t < kWarpSize ? kWarpSize : (t > 1024 ? 1024 : t));
}

Status check_sizes(const char* op, int64_t n, int64_t dim) {
  KP_CHECK_ARG(dim > 0 && dim <= INT_MAX, std::string(op) + ": row length out of range");
  KP_CHECK_ARG(n <= INT_MAX, std::string(op) + ": too many rows");
  return Status::Ok();
}

}  // namespace

Status rmsnorm(const Tensor& x, const ConstTensor& weight, float eps, Tensor& out, cudaStream_t stream) {
  const int64_t n = x.dim(0), dim = x.dim(1);
  KP_RETURN_IF_ERROR(check_sizes("rmsnorm", n, dim));
  if (n == 0) return Status::Ok();
  return dispatch_float(x.dtype(), "rmsnorm", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    constexpr int kN = kVec16<T>;
    const T* px = static_cast<const T*>(x.data());
    T* po = static_cast<T*>(out.data());
    const float* pw = weight.ptr<float>();
    const bool vec = dim % kN == 0 && is_aligned(px, 16) && is_aligned(po, 16) && is_aligned(pw, 16);
    if (vec)
      return launch_kernel(rmsnorm_kernel<T, kN>, (unsigned)n, threads_for(dim / kN), 0, stream, 1, px, pw, eps, po,
                           (int)dim);
    return launch_kernel(rmsnorm_kernel<T, 1>, (unsigned)n, threads_for(dim), 0, stream, 1, px, pw, eps, po, (int)dim);
  });
}

Status add_rmsnorm(Tensor& residual, const Tensor& delta, const ConstTensor& weight, float eps, Tensor& out,
                   cudaStream_t stream) {
  const int64_t n = residual.dim(0), dim = residual.dim(1);
  KP_RETURN_IF_ERROR(check_sizes("add_rmsnorm", n, dim));
  if (n == 0) return Status::Ok();
  return dispatch_float(residual.dtype(), "add_rmsnorm", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    constexpr int kN = kVec16<T>;
    T* pr = static_cast<T*>(residual.data());
    const T* pd = static_cast<const T*>(delta.data());
    T* po = static_cast<T*>(out.data());
    const float* pw = weight.ptr<float>();
    const bool vec = dim % kN == 0 && is_aligned(pr, 16) && is_aligned(pd, 16) && is_aligned(po, 16) &&
                     is_aligned(pw, 16);
    if (vec)
      return launch_kernel(add_rmsnorm_kernel<T, kN>, (unsigned)n, threads_for(dim / kN), 0, stream, 1, pr, pd, pw,
                           eps, po, (int)dim);
    return launch_kernel(add_rmsnorm_kernel<T, 1>, (unsigned)n, threads_for(dim), 0, stream, 1, pr, pd, pw, eps, po,
                         (int)dim);
  });
}

}  // namespace kernel::cuda
