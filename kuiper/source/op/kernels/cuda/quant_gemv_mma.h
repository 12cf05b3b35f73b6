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

}  // namespace kernel::cuda
