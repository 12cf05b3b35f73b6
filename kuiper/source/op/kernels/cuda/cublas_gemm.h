// One cuBLAS GEMM for kernels outside matmul.cu (the quantized prefill of quant_matmul.cu), on the
// calling thread's handle for `device` (created at first use, fp32 reduction; see matmul.cu).
#pragma once

#include <cuda_runtime.h>

#include "base/status.h"

namespace kernel::cuda {

// y[i, o] = sum_k x[i, k] w[o, k] for i < n, o < rows; x: T [n, in]; w: T [rows, in]; y: rows of
// stride ldy (y + i * ldy + o). fp32 compute. T: float, __half or __nv_bfloat16.
template <typename T>
base::Status cublas_gemm_nt(const T* x, const T* w, T* y, int n, int in, int rows, int ldy, int device,
                            cudaStream_t stream);

}  // namespace kernel::cuda
