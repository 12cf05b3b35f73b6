// KV-cache append and causal grouped-query attention over the cache.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu_kernels.h"
#include "thread_pool.h"

namespace kernel::cpu {

// k, v: [n, kv_dim]; k_cache, v_cache: [max_seq_len, kv_dim], same dtype as k. Rows [pos, pos + n)
// are overwritten (bounds checked by the dispatcher).
void kv_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, int32_t pos) {
  const size_t row_bytes = (size_t)k.dim(1) * base::dtype_size(k.dtype());
  char* kc = static_cast<char*>(k_cache.data()) + (size_t)pos * row_bytes;
  char* vc = static_cast<char*>(v_cache.data()) + (size_t)pos * row_bytes;
  std::memcpy(kc, k.data(), k.nbytes());
  std::memcpy(vc, v.data(), v.nbytes());
}

// One score row of max_seq_len floats per thread, for at most one thread per (token, head). Sized from
// the thread budget at the time of the call (at least the usable cores); attention() runs with no more
// threads than the scratch has rows, so a later change of the thread count stays safe.
int64_t attention_scratch_floats(int64_t n_tokens, int n_heads, int /*head_dim*/, int64_t max_seq_len) {
  const int64_t slots = std::min<int64_t>(n_tokens * n_heads, std::max(cpu_threads(), usable_cpu_cores()));
  return slots * max_seq_len;
}

// q, out: fp32 [batch * n, n_heads * head_dim]; k_cache, v_cache: fp32 rows of n_kv_heads * head_dim
// (contiguous or paged, see KvPageTable); scratch: fp32 [>= attention_scratch_floats()] with rows of
// max_len. Query i of sequence b (absolute position first[b] + i) attends to the sequence's tokens
// 0..first[b]+i; query head h reads kv head h / (n_heads / n_kv_heads).
//   s_t = q . k_t / sqrt(head_dim);  p_t = exp(s_t - max s) / sum exp(s - max s);  out = sum_t p_t v_t
// Each (token, head) is computed start to end by one thread with no cross-thread sums, so the result
// does not depend on the thread count.
void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const KvPageTable& rows,
               const int32_t* first, int64_t batch, int64_t max_len, int n_heads, int n_kv_heads, int head_dim,
               Tensor& scratch, Tensor& out) {
  const int64_t n = q.dim(0) / batch;
  const int64_t q_width = (int64_t)n_heads * head_dim, kv_width = (int64_t)n_kv_heads * head_dim;
  const int group = n_heads / n_kv_heads;
  const float scale = 1.f / std::sqrt((float)head_dim);
  const float* qp = q.ptr<float>();
  const float* kc = k_cache.ptr<float>();
  const float* vc = v_cache.ptr<float>();
  float* op = out.ptr<float>();
  float* scores_all = scratch.ptr<float>();
  const int64_t work = batch * n * n_heads;
  // Multiply-adds: two passes (q.k and p.v) over the cache rows each query sees (at most max_len).
  int64_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) longest = std::max<int64_t>(longest, first[b] + n);
  const int64_t madds = work * longest * 2 * head_dim;
  // Chunks of (token, head) items, a few per thread, each with its own scratch row: no more chunks
  // than the scratch has rows.
  const int64_t rows_n = std::max<int64_t>(1, scratch.numel() / max_len);
  const int n_threads = (int)std::min<int64_t>(rows_n, threads_for(madds));
  const int64_t chunk = std::max((work + rows_n - 1) / rows_n, (work + 4 * n_threads - 1) / (4 * n_threads));
  parallel_for(work, chunk, n_threads, [&](int64_t w0, int64_t w1) {
    float* scores = scores_all + (w0 / chunk) * max_len;
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t bi = w / n_heads;  // query row: sequence bi / n, query bi % n
      const int64_t b = bi / n, i = bi % n;
      const int h = (int)(w % n_heads);
      const int64_t kv_off = (int64_t)(h / group) * head_dim;
      const int64_t len = first[b] + i + 1;  // causal: positions 0..first+i
      const float* qh = qp + bi * q_width + (int64_t)h * head_dim;

      float max_s = -INFINITY;
      for (int64_t t = 0; t < len; ++t) {
        const float* kt = kc + rows.row(b, t) * kv_width + kv_off;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int d = 0; d < head_dim; ++d) s += qh[d] * kt[d];
        scores[t] = s * scale;
        max_s = std::max(max_s, scores[t]);
      }
      float sum = 0.f;
      for (int64_t t = 0; t < len; ++t) {
        scores[t] = std::exp(scores[t] - max_s);
        sum += scores[t];
      }

      float* oh = op + bi * q_width + (int64_t)h * head_dim;
      std::fill(oh, oh + head_dim, 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const float p = scores[t];
        const float* vt = vc + rows.row(b, t) * kv_width + kv_off;
#pragma omp simd
        for (int d = 0; d < head_dim; ++d) oh[d] += p * vt[d];
      }
      const float inv_sum = 1.f / sum;
      for (int d = 0; d < head_dim; ++d) oh[d] *= inv_sum;
    }
  });
}

}  // namespace kernel::cpu
