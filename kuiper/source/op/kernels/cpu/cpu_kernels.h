// CPU kernels (fp32 activations). Called through kernel:: in op/kernels.h, which has already checked
// shapes, dtypes and devices, so these assume valid arguments. Parallelised with OpenMP over rows or
// heads; matmul with fp32 weights goes through OpenBLAS (via Armadillo) as one GEMM for the whole batch.
#pragma once

#include "op/kernels.h"

namespace kernel::cpu {

void embedding(const Tensor& tokens, const Tensor& table, Tensor& out);
void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out);
void add_rmsnorm(Tensor& residual, const Tensor& delta, const Tensor& weight, float eps, Tensor& out);
void matmul(const Tensor& x, const Tensor& weight, const Tensor& scales, int group_size, Tensor& y);
void rope(Tensor& q, Tensor& k, int32_t pos, const Tensor& cos_sin, int head_dim);
void kv_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, int32_t pos);
void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int32_t pos, int n_heads,
               int n_kv_heads, int head_dim, Tensor& scratch, Tensor& out);
int64_t attention_scratch_floats(int64_t n_tokens, int n_heads, int head_dim, int64_t max_seq_len);
void swiglu(const Tensor& gate, const Tensor& up, Tensor& out);
void add(const Tensor& a, const Tensor& b, Tensor& out);
void softmax(Tensor& x);
void argmax(const Tensor& x, Tensor& out);
void convert(const Tensor& in, Tensor& out);
void fill_random(Tensor& t, uint64_t seed, float scale);

}  // namespace kernel::cpu
