// CUDA kernels. Called through kernel:: in op/kernels.h, which has already checked shapes, dtypes and
// devices. Each launcher checks its own kernel-specific preconditions (alignment, divisibility),
// picks grid and block, maps runtime sizes to template instances, launches on `stream` and checks
// the launch. Activations may be fp32, fp16 or bf16.
#pragma once

#include <cuda_runtime.h>

#include "op/kernels.h"

namespace kernel::cuda {

Status embedding(const Tensor& tokens, const ConstTensor& table, Tensor& out, cudaStream_t stream);
Status rmsnorm(const Tensor& x, const ConstTensor& weight, float eps, Tensor& out, cudaStream_t stream);
Status add_rmsnorm(Tensor& residual, const Tensor& delta, const ConstTensor& weight, float eps, Tensor& out,
                   cudaStream_t stream);
// n_tokens == 1 (or small): hand-written matrix-vector kernel; larger: cuBLAS GEMM (float weights) or
// dequantise-then-GEMM / tiled kernel (int8).
Status matmul(const Tensor& x, const ConstTensor& weight, const ConstTensor& scales, int group_size, Tensor& y,
              cudaStream_t stream);
// out = swiglu(x W1^T, x W3^T) in one GEMV when the decode GEMV serves x (n <= 4, aligned); *fused
// says whether it ran (else the caller takes the unfused path).
Status matmul_swiglu_fused(const Tensor& x, const ConstTensor& w13, const ConstTensor& scales, int group_size,
                           Tensor& out, cudaStream_t stream, bool* fused);
// Block-type weights (quant_matmul.cu): GEMV dequantizing in registers (decode), dequantized chunks +
// cuBLAS (prefill); and any weight dtype as fp32, exactly.
Status matmul_quant(const Tensor& x, const ConstTensor& weight, Tensor& y, cudaStream_t stream);
Status dequantize(const ConstTensor& weight, Tensor& out, cudaStream_t stream);
Status rope(Tensor& q, Tensor& k, const Tensor& pos, const Tensor& cos_sin, int head_dim, cudaStream_t stream);
Status rope_kv_append(Tensor& q, Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& pos,
                      const Tensor& cos_sin, int head_dim, cudaStream_t stream);
Status kv_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& pos,
                 cudaStream_t stream);
Status attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& pos,
                 int n_heads, int n_kv_heads, int head_dim, Tensor& scratch, Tensor& out, cudaStream_t stream);
int64_t attention_scratch_floats(int64_t n_tokens, int n_heads, int head_dim, int64_t max_seq_len);
// The attention kernels over a page table (attention.cu: tensor cores where they apply, else CUDA cores),
// k_pages: [n_pages, page_size, kv_dim]; the paged_* entry points below call them.
Status attention_paged(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages, const Tensor& page_table,
                       const Tensor& pos, int n_heads, int n_kv_heads, int head_dim, Tensor& scratch, Tensor& out,
                       cudaStream_t stream);
Status attention_decode_batch(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages,
                              const Tensor& page_tables, const Tensor& seq_lens, int n_heads, int n_kv_heads,
                              int head_dim, Tensor& scratch, Tensor& out, cudaStream_t stream);
int64_t attention_batch_scratch_floats(int64_t batch, int n_heads, int head_dim, int64_t max_len);
// The paged cache (op/kernels.h, paged_attention.cu).
Status rope_at(Tensor& q, Tensor& k, const Tensor& positions, const Tensor& cos_sin, int head_dim, cudaStream_t stream);
Status kv_append_paged(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& slots,
                       cudaStream_t stream);
Status paged_decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& page_tables,
                              const Tensor& seq_lens, int page_size, int n_heads, int n_kv_heads, int head_dim,
                              Tensor& scratch, Tensor& out, cudaStream_t stream);
Status paged_prefill_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                               const Tensor& page_table, const Tensor& pos, int page_size, int n_heads,
                               int n_kv_heads, int head_dim, Tensor& out, cudaStream_t stream);
Status swiglu(const Tensor& gate, const Tensor& up, Tensor& out, cudaStream_t stream);
Status add(const Tensor& a, const Tensor& b, Tensor& out, cudaStream_t stream);
Status softmax(Tensor& x, cudaStream_t stream);
Status argmax(const Tensor& x, Tensor& out, cudaStream_t stream);
Status convert(const Tensor& in, Tensor& out, cudaStream_t stream);
Status fill_random(Tensor& t, uint64_t seed, float scale, cudaStream_t stream);

}  // namespace kernel::cuda
