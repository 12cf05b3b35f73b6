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

namespace {

// One (query row, head) of causal attention over `len` cache rows; rows(t) gives the slot of the
// sequence's position t (the identity for a contiguous cache, the page table's slot when paged), so
// the arithmetic is one and the same for both layouts and for any batch around the row:
//   s_t = q . k_t / sqrt(head_dim);  p_t = exp(s_t - max s) / sum exp(s - max s);  out = sum_t p_t v_t
// qh, oh: [head_dim]; kc, vc: fp32 [slots, kv_width]; kv_off: this head's KV column; scores: [len].
template <class Slot>
void attend_row(const float* qh, const float* kc, const float* vc, int64_t kv_width, int64_t kv_off, int64_t len,
                int head_dim, float scale, const Slot& slot, float* scores, float* oh) {
  float max_s = -INFINITY;
  for (int64_t t = 0; t < len; ++t) {
    const float* kt = kc + slot(t) * kv_width + kv_off;
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
  std::fill(oh, oh + head_dim, 0.f);
  if (len == 0) return;  // a padding row
  for (int64_t t = 0; t < len; ++t) {
    const float p = scores[t];
    const float* vt = vc + slot(t) * kv_width + kv_off;
#pragma omp simd
    for (int d = 0; d < head_dim; ++d) oh[d] += p * vt[d];
  }
  const float inv_sum = 1.f / sum;
  for (int d = 0; d < head_dim; ++d) oh[d] *= inv_sum;
}

// Runs rows x heads items of attention on the thread pool: item (i, h) attends over len_of(i) positions
// through slot_of(i)(t). Each item is computed start to end by one thread with no cross-thread sums,
// so the result does not depend on the thread count. scratch: fp32, one score row of max_len per chunk.
template <class Len, class SlotOf>
void attend_rows(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int n_heads, int n_kv_heads,
                 int head_dim, int64_t max_len, const Len& len_of, const SlotOf& slot_of, Tensor& scratch,
                 Tensor& out) {
  const int64_t n = q.dim(0);
  const int64_t q_width = (int64_t)n_heads * head_dim, kv_width = (int64_t)n_kv_heads * head_dim;
  const int group = n_heads / n_kv_heads;
  const float scale = 1.f / std::sqrt((float)head_dim);
  const float* qp = q.ptr<float>();
  const float* kc = k_cache.ptr<float>();
  const float* vc = v_cache.ptr<float>();
  float* op = out.ptr<float>();
  float* scores_all = scratch.ptr<float>();
  const int64_t work = n * n_heads;
  int64_t total_len = 0;
  for (int64_t i = 0; i < n; ++i) total_len += len_of(i);
  // Multiply-adds: two passes (q.k and p.v) over the cache rows each query sees.
  const int64_t madds = total_len * n_heads * 2 * head_dim;
  // Chunks of (token, head) items, a few per thread, each with its own scratch row: no more chunks
  // than the scratch has rows.
  const int64_t rows = std::max<int64_t>(1, scratch.numel() / std::max<int64_t>(1, max_len));
  const int n_threads = (int)std::min<int64_t>(rows, threads_for(madds));
  const int64_t chunk = std::max((work + rows - 1) / rows, (work + 4 * n_threads - 1) / (4 * n_threads));
  parallel_for(work, chunk, n_threads, [&](int64_t w0, int64_t w1) {
    float* scores = scores_all + (w0 / chunk) * max_len;
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t bi = w / n_heads;  // query row: sequence bi / n, query bi % n
      const int64_t b = bi / n, i = bi % n;
      const int h = (int)(w % n_heads);
      attend_row(qp + i * q_width + (int64_t)h * head_dim, kc, vc, kv_width, (int64_t)(h / group) * head_dim,
                 len_of(i), head_dim, scale, slot_of(i), scores, op + i * q_width + (int64_t)h * head_dim);
    }
  });
}

}  // namespace

// q, out: fp32 [n, n_heads * head_dim]; k_cache, v_cache: fp32 [max_seq_len, n_kv_heads * head_dim];
// scratch: fp32 [>= attention_scratch_floats()]. Query i (absolute position pos + i) attends to cache
// rows 0..pos+i; query head h reads kv head h / (n_heads / n_kv_heads).
void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int32_t pos, int n_heads,
               int n_kv_heads, int head_dim, Tensor& scratch, Tensor& out) {
  const auto identity = [](int64_t t) { return t; };
  attend_rows(q, k_cache, v_cache, n_heads, n_kv_heads, head_dim, k_cache.dim(0),
              [pos](int64_t i) { return (int64_t)pos + i + 1; }, [&](int64_t) { return identity; }, scratch, out);
}

// ---------------------------------------------------------------------------------------------------
// The paged cache: slot of position t = table[t / page_size] * page_size + t % page_size.

namespace {
struct PagedSlot {
  const int32_t* table;
  int64_t page_size;
  int64_t operator()(int64_t t) const { return (int64_t)table[t / page_size] * page_size + t % page_size; }
};
}  // namespace

// k, v: [n, kv_dim]; slots: int32 [n] (negative: skipped; the others checked by the dispatcher).
void kv_append_paged(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& slots) {
  const size_t row_bytes = (size_t)k.dim(1) * base::dtype_size(k.dtype());
  const int32_t* sl = slots.ptr<int32_t>();
  for (int64_t i = 0; i < k.dim(0); ++i) {
    if (sl[i] < 0) continue;
    std::memcpy(static_cast<char*>(k_cache.data()) + (size_t)sl[i] * row_bytes,
                static_cast<const char*>(k.data()) + (size_t)i * row_bytes, row_bytes);
    std::memcpy(static_cast<char*>(v_cache.data()) + (size_t)sl[i] * row_bytes,
                static_cast<const char*>(v.data()) + (size_t)i * row_bytes, row_bytes);
  }
}

// q, out: fp32 [B, n_heads * head_dim]; page_tables: int32 [>= B, max_pages]; seq_lens: int32 [>= B].
void paged_decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& page_tables,
                            const Tensor& seq_lens, int page_size, int n_heads, int n_kv_heads, int head_dim,
                            Tensor& scratch, Tensor& out) {
  const int32_t* tables = page_tables.ptr<int32_t>();
  const int32_t* lens = seq_lens.ptr<int32_t>();
  const int64_t max_pages = page_tables.dim(1);
  attend_rows(q, k_cache, v_cache, n_heads, n_kv_heads, head_dim, max_pages * page_size,
              [lens](int64_t b) { return (int64_t)lens[b]; },
              [&](int64_t b) { return PagedSlot{tables + b * max_pages, page_size}; }, scratch, out);
}

// q, out: fp32 [n, n_heads * head_dim]; page_table: int32 [max_pages]; query i sees positions [0, pos + i].
void paged_prefill_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& page_table,
                             int32_t pos, int page_size, int n_heads, int n_kv_heads, int head_dim, Tensor& scratch,
                             Tensor& out) {
  const PagedSlot slot{page_table.ptr<int32_t>(), page_size};
  attend_rows(q, k_cache, v_cache, n_heads, n_kv_heads, head_dim, page_table.numel() * page_size,
              [pos](int64_t i) { return (int64_t)pos + i + 1; }, [&](int64_t) { return slot; }, scratch, out);
}

}  // namespace kernel::cpu
