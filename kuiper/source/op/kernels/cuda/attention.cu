// KV-cache append, and the entry points of causal grouped-query attention on the GPU: which kernel
// family serves a call (attention_call.cuh):
//  - the tensor-core kernels (flash_attention.cu) for fp16 / bf16 with head_dim 64 or 128: flash
//    prefill for n > 1 queries, split-K decode for one query per sequence;
//  - the CUDA-core kernels (attention_simt.cu) for everything else (fp32, other head sizes, views
//    that are not 16-byte aligned), and where KUIPER_ATTENTION says so (simt_forced: to time the two
//    families against each other in one build, per kernel in tools/kernel_bench.cu or end to end).
// The three entry points differ only in where the keys live: attention() reads a contiguous cache,
// attention_paged() one sequence's pages, attention_decode_batch() a batch of sequences' pages.
#include <climits>
#include <cstdlib>
#include <string>
#include <utility>

#include "kernels/cuda/attention_call.cuh"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace kernel::cuda {
namespace {

constexpr int kCopyThreads = 256;

// ---------------------------------------------------------------------------------------------------
// kv_append: cache rows [pos, pos + n) = k (and v). Both sides are contiguous runs of n * kv_dim
// elements, so the copy is a flat copy of `Word`s (uint4 when 16-byte aligned, else one element).
// k, v: [n, kv_dim]; k_cache, v_cache: [max_seq, kv_dim] (same dtype); words_per_row = kv_dim * elem / word.
// A call whose rows would not fit in the cache writes nothing (the host keeps pos in range).
template <typename Word>
static __global__ void kv_append_kernel(const Word* __restrict__ k, const Word* __restrict__ v,
                                        Word* __restrict__ k_cache, Word* __restrict__ v_cache,
                                        const int32_t* __restrict__ pos, int64_t words_per_row, int64_t n,
                                        int64_t max_seq) {
  pdl_wait();
  pdl_trigger();
  const int64_t p = *pos;
  if (p < 0 || p + n > max_seq) return;
  Word* kc = k_cache + p * words_per_row;
  Word* vc = v_cache + p * words_per_row;
  const int64_t total = n * words_per_row;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    kc[e] = k[e];
    vc[e] = v[e];
  }
}

// KUIPER_ATTENTION (read once per process) sends calls that the tensor-core kernels could serve to the
// CUDA-core ones instead: "simt" every call, "simt_decode" decode only, "simt_prefill" prefill only.
// Anything else (or unset): tensor cores wherever they apply.
bool simt_forced(bool prefill) {
  static const std::string mode = [] {
    const char* env = std::getenv("KUIPER_ATTENTION");
    return std::string(env != nullptr ? env : "");
  }();
  return mode == "simt" || mode == (prefill ? "simt_prefill" : "simt_decode");
}

// Decode of one sequence over a contiguous cache of at most this many rows stays on the CUDA-core
// cluster kernel: one launch and no split bookkeeping make it ~1.2 us faster at short positions (fp16
// 32/32 heads at pos 16: 3.60 vs 4.88 us; bf16 32/8: 4.18 vs 5.38), and it is within 10% up to 4,000
// (23.3 vs 21.1 us), beyond which split-K pulls far ahead (bf16 32/8 at 8,192: 31.3 vs 15.8 us; at
// 32,767: 109 vs 39 us). kernel_bench flash on the H200, docs/perf_notes.md. The cache length is fixed
// when the decode graph is captured, so the choice is too.
constexpr int kSimtDecodeMaxRows = 4096;

Status run(const AttentionCall& a, cudaStream_t stream) {
  if (a.n == 0 || a.batch == 0) return Status::Ok();
  KP_CHECK_ARG(a.starts.max_len >= a.n, "attention: more queries than cache rows");
  const bool short_decode = a.n == 1 && a.batch == 1 && a.rows.table == nullptr && a.starts.max_len <= kSimtDecodeMaxRows;
  const bool flash = !simt_forced(a.n > 1) && !short_decode && flash_attention_supports(a.dtype, a.head_dim) &&
                     is_aligned(a.q, 16) && is_aligned(a.k_cache, 16) && is_aligned(a.v_cache, 16) &&
                     is_aligned(a.out, 4);
  // Decode without room for the split-K partials takes the CUDA-core kernel, which needs none.
  if (!flash || (a.n == 1 && a.scratch_floats < flash_decode_scratch_floats(a.batch, a.n_heads, a.head_dim,
                                                                            a.starts.max_len)))
    return simt_attention(a, stream);
  return a.n > 1 ? flash_prefill(a, stream) : flash_decode(a, stream);
}

// The call for q against caches of `rows` rows (contiguous when table == nullptr).
AttentionCall make_call(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int n_heads, int n_kv_heads,
                        int head_dim, Tensor& scratch, Tensor& out) {
  AttentionCall a{};
  a.dtype = q.dtype();
  a.q = q.data();
  a.k_cache = k_cache.data();
  a.v_cache = v_cache.data();
  a.rows = KvRows{nullptr, 0, 1, 1};
  a.n = (int)q.dim(0);
  a.batch = 1;
  a.n_heads = n_heads;
  a.n_kv_heads = n_kv_heads;
  a.head_dim = head_dim;
  a.scratch = scratch.numel() > 0 && scratch.dtype() == base::DType::kFp32 ? scratch.ptr<float>() : nullptr;
  a.scratch_floats = a.scratch != nullptr ? scratch.numel() : 0;
  a.out = out.data();
  return a;
}

Status check_common(const Tensor& q, const Tensor& k_cache, const Tensor& pos_like) {
  KP_CHECK_ARG(k_cache.dtype() == q.dtype(), "attention: cache dtype " + std::string(base::dtype_name(k_cache.dtype())) +
                                                 " differs from q " + base::dtype_name(q.dtype()));
  KP_CHECK_ARG(pos_like.device_type() == base::DeviceType::kCUDA, "attention: positions must be on the GPU");
  KP_CHECK_ARG(q.dim(0) <= INT_MAX && k_cache.numel() / k_cache.dim(k_cache.ndim() - 1) <= INT_MAX,
               "attention: sizes beyond int range");
  return Status::Ok();
}

// Page table of a paged cache [n_pages, page_size, kv_dim]: int32 [batch, max_pages] on the device.
Status paged_rows(const Tensor& k_pages, const Tensor& table, int64_t batch, AttentionCall* a) {
  KP_CHECK_ARG(k_pages.ndim() == 3, "attention: paged cache must be [n_pages, page_size, kv_dim]");
  KP_CHECK_ARG(table.dtype() == base::DType::kInt32 && table.device_type() == base::DeviceType::kCUDA,
               "attention: page table must be int32 on the GPU");
  const int64_t pages_per_seq = table.numel() / std::max<int64_t>(batch, 1);
  KP_CHECK_ARG(table.numel() == batch * pages_per_seq && pages_per_seq > 0, "attention: page table must be [batch, max_pages]");
  const int64_t max_len = pages_per_seq * k_pages.dim(1);
  KP_CHECK_ARG(max_len <= INT_MAX && k_pages.dim(0) <= INT_MAX, "attention: page table beyond int range");
  a->rows = KvRows{table.ptr<int32_t>(), pages_per_seq, (int)k_pages.dim(1), (int)k_pages.dim(0)};
  a->starts.max_len = (int)max_len;
  return Status::Ok();
}

}  // namespace

Status kv_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& pos,
                 cudaStream_t stream) {
  KP_CHECK_ARG(k.dtype() == k_cache.dtype(), "kv_append: cache dtype " + std::string(base::dtype_name(k_cache.dtype())) +
                                                 " differs from k " + base::dtype_name(k.dtype()));
  KP_CHECK_ARG(pos.device_type() == base::DeviceType::kCUDA, "kv_append: pos must be on the GPU");
  const int64_t n = k.dim(0), kv_dim = k.dim(1), max_seq = k_cache.dim(0);
  const size_t elem = base::dtype_size(k.dtype());
  if (n == 0) return Status::Ok();
  const bool vec = (kv_dim * elem) % 16 == 0 && is_aligned(k.data(), 16) && is_aligned(v.data(), 16) &&
                   is_aligned(k_cache.data(), 16) && is_aligned(v_cache.data(), 16);
  auto launch = [&](auto word_tag) -> Status {
    using Word = typename decltype(word_tag)::type;
    const int64_t words_per_row = kv_dim * (int64_t)elem / (int64_t)sizeof(Word);
    return launch_kernel(kv_append_kernel<Word>, grid_for(n * words_per_row, kCopyThreads), kCopyThreads, 0, stream,
                         1, static_cast<const Word*>(k.data()), static_cast<const Word*>(v.data()),
                         static_cast<Word*>(k_cache.data()), static_cast<Word*>(v_cache.data()), pos.ptr<int32_t>(),
                         words_per_row, n, max_seq);
  };
  if (vec) return launch(TypeTag<uint4>{});
  switch (elem) {
    case 4: return launch(TypeTag<uint32_t>{});
    case 2: return launch(TypeTag<uint16_t>{});
    default: return base::InvalidArgument("kv_append: unsupported cache dtype");
  }
}

// Prefill needs no scratch; decode (one query) needs the split-K partials of the tensor-core kernel,
// which this bounds for any dtype (the CUDA-core decode merges inside a cluster and needs none).
int64_t attention_scratch_floats(int64_t n_tokens, int n_heads, int head_dim, int64_t max_seq_len) {
  return n_tokens >= 1 ? flash_decode_scratch_floats(1, n_heads, head_dim, max_seq_len) : 0;
}

int64_t attention_batch_scratch_floats(int64_t batch, int n_heads, int head_dim, int64_t max_len) {
  return flash_decode_scratch_floats(batch, n_heads, head_dim, max_len);
}

Status attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& pos, int n_heads,
                 int n_kv_heads, int head_dim, Tensor& scratch, Tensor& out, cudaStream_t stream) {
  KP_RETURN_IF_ERROR(check_common(q, k_cache, pos));
  AttentionCall a = make_call(q, k_cache, v_cache, n_heads, n_kv_heads, head_dim, scratch, out);
  a.starts = SeqStarts{pos.ptr<int32_t>(), 0, (int)k_cache.dim(0)};
  return run(a, stream);
}

Status attention_paged(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages, const Tensor& page_table,
                       const Tensor& pos, int n_heads, int n_kv_heads, int head_dim, Tensor& scratch, Tensor& out,
                       cudaStream_t stream) {
  KP_RETURN_IF_ERROR(check_common(q, k_pages, pos));
  AttentionCall a = make_call(q, k_pages, v_pages, n_heads, n_kv_heads, head_dim, scratch, out);
  a.starts = SeqStarts{pos.ptr<int32_t>(), 0, 0};
  KP_RETURN_IF_ERROR(paged_rows(k_pages, page_table, 1, &a));
  return run(a, stream);
}

Status attention_decode_batch(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages,
                              const Tensor& page_tables, const Tensor& seq_lens, int n_heads, int n_kv_heads,
                              int head_dim, Tensor& scratch, Tensor& out, cudaStream_t stream) {
  KP_RETURN_IF_ERROR(check_common(q, k_pages, seq_lens));
  KP_CHECK_ARG(q.dim(0) <= 65535, "attention: batch of more than 65535 sequences");
  AttentionCall a = make_call(q, k_pages, v_pages, n_heads, n_kv_heads, head_dim, scratch, out);
  a.n = 1;
  a.batch = (int)q.dim(0);
  a.starts = SeqStarts{seq_lens.ptr<int32_t>(), -1, 0};  // the query is the sequence's last token
  KP_RETURN_IF_ERROR(paged_rows(k_pages, page_tables, a.batch, &a));
  return run(a, stream);
}

}  // namespace kernel::cuda
