// CPU kernels (fp32 activations). Called through kernel:: in op/kernels.h, which has already checked
// shapes, dtypes and devices, so these assume valid arguments. Parallelised over rows or heads on the
// thread pool (thread_pool.h), with threads_for() threads; matmul with fp32 weights calls
// single-threaded OpenBLAS on each thread's block of output rows (prefill); fp16 / bf16 / int8 weights
// are widened inside the kernel. Weights arrive read-only (ConstTensor).
#pragma once

#include "op/kernels.h"

namespace kernel::cpu {

// Work (multiply-adds, or element operations) that one more thread must get to be worth waking: a job
// below 2 * kWorkPerThread runs on the calling thread alone. Measured on the shared 2-core test
// machine (docs/benchmarks.md, CPU): splitting storyteller's largest products (197K multiply-adds,
// ~30 us) over 2 threads made decode 1.8x slower (median 616 vs 1100 tok/s), because a job cannot
// finish while a thread holding one of its chunks is descheduled; a 7B model's products (16M-45M)
// gain from every thread.
constexpr int64_t kWorkPerThread = 1 << 17;
// Threads for `work`: 1 when it is small, else up to cpu_threads(), kWorkPerThread each at least.
int threads_for(int64_t work);

void embedding(const Tensor& tokens, const ConstTensor& table, Tensor& out);
void rmsnorm(const Tensor& x, const ConstTensor& weight, float eps, Tensor& out);
void add_rmsnorm(Tensor& residual, const Tensor& delta, const ConstTensor& weight, float eps, Tensor& out);
void matmul(const Tensor& x, const ConstTensor& weight, const ConstTensor& scales, int group_size, Tensor& y);
// Block types (quant_matmul.cpp): y = x W^T, W dequantized in registers (decode) or row by row (prefill).
void matmul_quant(const Tensor& x, const ConstTensor& weight, Tensor& y);
// W (fp32 / fp16 / bf16 / block type [rows, cols]) as fp32 [rows, cols], exactly.
void dequantize(const ConstTensor& weight, Tensor& out);
// n values of one row of dtype t (a whole number of blocks) as fp32, exactly.
void dequantize_row(base::DType t, const uint8_t* row, int64_t n, float* out);
void rope(Tensor& q, Tensor& k, int32_t pos, const Tensor& cos_sin, int head_dim);
void kv_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, int32_t pos);
void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int32_t pos, int n_heads,
               int n_kv_heads, int head_dim, Tensor& scratch, Tensor& out);
int64_t attention_scratch_floats(int64_t n_tokens, int n_heads, int head_dim, int64_t max_seq_len);
void rope_at(Tensor& q, Tensor& k, const Tensor& positions, const Tensor& cos_sin, int head_dim);
void kv_append_paged(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& slots);
void paged_decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& page_tables,
                            const Tensor& seq_lens, int page_size, int n_heads, int n_kv_heads, int head_dim,
                            Tensor& scratch, Tensor& out);
void paged_prefill_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& page_table,
                             int32_t pos, int page_size, int n_heads, int n_kv_heads, int head_dim, Tensor& scratch,
                             Tensor& out);
void swiglu(const Tensor& gate, const Tensor& up, Tensor& out);
void add(const Tensor& a, const Tensor& b, Tensor& out);
void softmax(Tensor& x);
void argmax(const Tensor& x, Tensor& out);
void convert(const Tensor& in, Tensor& out);
void fill_random(Tensor& t, uint64_t seed, float scale);

}  // namespace kernel::cpu
