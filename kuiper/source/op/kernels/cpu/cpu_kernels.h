// CPU kernels (fp32 activations). Called through kernel:: in op/kernels.h, which has already checked
// shapes, dtypes and devices, so these assume valid arguments. Parallelised with OpenMP over rows or
// heads (parallel_for, below); matmul with fp32 weights goes through OpenBLAS as one GEMM for the
// whole batch.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "op/kernels.h"

namespace kernel::cpu {

// Splits [0, n) into at most `max_workers` contiguous chunks and runs body(worker, begin, end) for each,
// one chunk per OpenMP thread (worker < max_workers, e.g. to pick a scratch row). Every parallel region
// of the CPU kernels goes through here, because of two properties of libgomp that would otherwise make
// the decode loop allocate on the heap for every op of every token:
//  - a region that runs on one thread (`omp parallel if (false)`, num_threads(1), one core) gets a
//    freshly allocated team each time; here such work runs on the calling thread, outside OpenMP;
//  - only the last team is kept for reuse, and only for a region of the same size; here every region
//    has the full team (omp_get_max_threads()), and threads without a chunk just return.
template <typename F> void parallel_chunks(int64_t n, int64_t max_workers, F&& body) {
  const int64_t workers = std::min<int64_t>({n, max_workers, (int64_t)omp_get_max_threads()});
  if (workers <= 1) {
    if (n > 0) body(0, 0, n);
    return;
  }
#pragma omp parallel
  {
    const int64_t team = std::min<int64_t>(workers, omp_get_num_threads());  // a team may come up short
    const int64_t w = omp_get_thread_num();
    if (w < team) body((int)w, n * w / team, n * (w + 1) / team);
  }
}

// body(i) for every i in [0, n): over OpenMP's threads when `parallel` (contiguous blocks, like
// schedule(static)), else on the calling thread.
template <typename F> void parallel_for(int64_t n, bool parallel, F&& body) {
  parallel_chunks(n, parallel ? n : 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(i);
  });
}

void embedding(const Tensor& tokens, const ConstTensor& table, Tensor& out);
void rmsnorm(const Tensor& x, const ConstTensor& weight, float eps, Tensor& out);
void add_rmsnorm(Tensor& residual, const Tensor& delta, const ConstTensor& weight, float eps, Tensor& out);
void matmul(const Tensor& x, const ConstTensor& weight, const ConstTensor& scales, int group_size, Tensor& y);
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
