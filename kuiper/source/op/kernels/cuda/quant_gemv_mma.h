// The tensor-core decode GEMV of the GGUF block types (quant_gemv_mma.cu), called by matmul_quant().
#pragma once

#include <cuda_runtime.h>

#include "op/kernels.h"

namespace kernel::cuda {

constexpr int kQuantMmaMaxTokens = 4;

// True when quant_gemv_mma() takes y = x W^T: W q4_k, q6_k or q8_0, x fp16 / bf16 [n <= 4, in] with in a
// whole number of 256-value steps and the alignments (and padding) the kernel reads with.
bool quant_gemv_mma_takes(const Tensor& x, const ConstTensor& weight);
// x: T [n, in]; weight: [out, in] blocks; y: T [n, out].
Status quant_gemv_mma(const Tensor& x, const ConstTensor& weight, Tensor& y, cudaStream_t stream);

// The same GEMV with SwiGLU in its epilogue: out = swiglu(x W1^T, x W3^T) for w13 = [W1; W3] ([2 hidden,
// in] blocks), x: T [n, in], out: T [n, hidden]; each feature's two sums are those quant_gemv_mma() gives
// (tested on the H200, run 26).
bool quant_gemv_mma_swiglu_takes(const Tensor& x, const ConstTensor& w13);
Status quant_gemv_mma_swiglu(const Tensor& x, const ConstTensor& w13, Tensor& out, cudaStream_t stream);
// matmul_swiglu()'s path for block types: the fused kernel when it takes these arguments and
// KUIPER_QUANT_SWIGLU is not `separate` (*fused true), else nothing (the caller runs the GEMV, then swiglu).
Status quant_gemv_mma_swiglu_fused(const Tensor& x, const ConstTensor& w13, Tensor& out, cudaStream_t stream,
                                   bool* fused);

}  // namespace kernel::cuda
