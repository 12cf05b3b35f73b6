// The scalar GEMV that every weight type falls back to when its pointers or sizes do not suit the
// vectorised kernels: one warp a row of W, its lanes walking the row one weight at a time, for up to
// kMaxTokens tokens. matmul.cu (fp32 / fp16 / bf16 / int8 weights) and quant_matmul.cu (the GGUF block
// types) differ only in how a weight is read, which each passes in as `row_of` (below).
#pragma once

#include "kernels/cuda/cuda_common.cuh"

namespace kernel::cuda {

// y[t, o] = sum_k W[o, k] x[t, k] for the row o of this warp (blockIdx.x * kWarps + warp) and t < n;
// x: T [n, in], y: T [n, out]. row_of(o) returns the row's reader: a callable giving W[o, k] as a float.
// Called by a kernel of kWarps warps after its pdl_wait().
template <int kWarps, int kMaxTokens, typename T, typename RowOf>
__device__ __forceinline__ void gemv_scalar_rows(const T* __restrict__ x, T* __restrict__ y, int n, int in, int out,
                                                 RowOf row_of) {
  const int lane = threadIdx.x % kWarpSize;
  const int o = blockIdx.x * kWarps + threadIdx.x / kWarpSize;
  if (o >= out) return;
  const auto weight = row_of(o);
  float acc[kMaxTokens] = {};
  for (int k = lane; k < in; k += kWarpSize) {
    const float wk = weight(k);
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t)
      if (t < n) acc[t] = fmaf(wk, to_float(x[(int64_t)t * in + k]), acc[t]);
  }
#pragma unroll
  for (int t = 0; t < kMaxTokens; ++t) acc[t] = warp_sum(acc[t]);
  if (lane == 0)
    for (int t = 0; t < n; ++t) y[(int64_t)t * out + o] = from_float<T>(acc[t]);
}

}  // namespace kernel::cuda
