// Dispatch of kernel:: calls to the CPU or CUDA implementation, after the device-independent checks
// (shapes, dtypes, devices) that both implementations rely on.
#include "op/kernels.h"

#include <string>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#ifdef KUIPER_WITH_CUDA
#include "kernels/cuda/cuda_kernels.h"
#endif

namespace kernel {
namespace {

using base::DeviceType;
using base::DType;

bool is_float(DType t) { return t == DType::kFp32 || t == DType::kFp16 || t == DType::kBf16; }

template <typename T> std::string desc(const T& t) { return t.shape_string(); }

// Returns InvalidArgument "<op>: <message>" when `cond` fails; the message is only built then.
#define KP_REQUIRE(cond, message)                                               \
  do {                                                                          \
    if (!(cond)) return base::InvalidArgument(std::string(op) + ": " + (message)); \
  } while (0)

// `t` is present, contiguous, and on the device of `first` (Tensor or ConstTensor, in any mix).
template <typename A, typename B> Status on_device_of(const char* op, const A& first, const B& t) {
  KP_REQUIRE(!t.empty(), "empty tensor");
  KP_REQUIRE(t.is_contiguous(), "non-contiguous tensor " + desc(t));
  KP_REQUIRE(t.device_type() == first.device_type() && t.device_id() == first.device_id(),
             "tensors on different devices: " + desc(first) + " vs " + desc(t));
  return Status::Ok();
}

// All tensors on one device, contiguous; the first failure is reported.
template <typename First, typename... Rest>
Status same_device(const char* op, const First& first, const Rest&... rest) {
  Status s = on_device_of(op, first, first);
  ((s = s.ok() ? on_device_of(op, first, rest) : s), ...);
  return s;
}

// CPU activations are fp32 only.
Status activation_dtype(const char* op, const Tensor& t) {
  KP_REQUIRE(is_float(t.dtype()), "activation must be fp32/fp16/bf16: " + desc(t));
  if (t.device_type() == DeviceType::kCPU)
    KP_REQUIRE(t.dtype() == DType::kFp32, "CPU activations are fp32: " + desc(t));
  return Status::Ok();
}

Status rows_match(const char* op, const Tensor& a, const Tensor& b) {
  KP_REQUIRE(a.ndim() == 2 && b.ndim() == 2 && a.dim(0) == b.dim(0), "token counts differ: " + desc(a) + " vs " + desc(b));
  return Status::Ok();
}

Status same_shape(const char* op, const Tensor& a, const Tensor& b) {
  KP_REQUIRE(a.shape() == b.shape() && a.dtype() == b.dtype(), "shape/dtype mismatch: " + desc(a) + " vs " + desc(b));
  return Status::Ok();
}

int32_t host_pos(const Tensor& pos) { return pos.ptr<int32_t>()[0]; }

Status check_pos(const char* op, const Tensor& pos, const Tensor& like) {
  KP_REQUIRE(pos.dtype() == DType::kInt32 && pos.numel() == 1, "pos must be int32 [1]");
  KP_REQUIRE(pos.device_type() == like.device_type(), "pos on another device");
  return Status::Ok();
}

#ifdef KUIPER_WITH_CUDA
cudaStream_t cu(Stream s) { return static_cast<cudaStream_t>(s); }
#define KP_DISPATCH(t, cpu_call, cuda_call)                        \
  if ((t).device_type() == DeviceType::kCPU) {                     \
    cpu_call;                                                      \
    return Status::Ok();                                           \
  }                                                                \
  return cuda_call;
#else
#define KP_DISPATCH(t, cpu_call, cuda_call)                                       \
  if ((t).device_type() == DeviceType::kCPU) {                                    \
    cpu_call;                                                                     \
    return Status::Ok();                                                          \
  }                                                                               \
  (void)stream;                                                                   \
  return base::Unsupported("this build has no CUDA support (KUIPER_WITH_CUDA off)");
#endif

}  // namespace

Status embedding(const Tensor& tokens, const ConstTensor& table, Tensor& out, Stream stream) {
  const char* op = "embedding";
  KP_RETURN_IF_ERROR(same_device(op, tokens, table, out));
  KP_RETURN_IF_ERROR(activation_dtype(op, out));
  KP_REQUIRE(tokens.dtype() == DType::kInt32 && tokens.ndim() == 1, "tokens must be int32 [n]");
  KP_REQUIRE((is_float(table.dtype()) || base::is_block_type(table.dtype())) && table.ndim() == 2,
             "table must be float or a block type [vocab, dim]");
  KP_REQUIRE(out.ndim() == 2 && out.dim(0) == tokens.dim(0) && out.dim(1) == table.dim(1),
                             "out must be [n, dim]: " + desc(out));
  if (tokens.device_type() == DeviceType::kCPU) {
    const int32_t* ids = tokens.ptr<int32_t>();
    for (int64_t i = 0; i < tokens.numel(); ++i)
      KP_REQUIRE(ids[i] >= 0 && ids[i] < table.dim(0),
                                 "token id " + std::to_string(ids[i]) + " outside the vocabulary");
  }
  KP_DISPATCH(out, cpu::embedding(tokens, table, out), cuda::embedding(tokens, table, out, cu(stream)));
}

Status rmsnorm(const Tensor& x, const ConstTensor& weight, float eps, Tensor& out, Stream stream) {
  const char* op = "rmsnorm";
  KP_RETURN_IF_ERROR(same_device(op, x, weight, out));
  KP_RETURN_IF_ERROR(activation_dtype(op, x));
  KP_RETURN_IF_ERROR(same_shape(op, x, out));
  KP_REQUIRE(x.ndim() == 2 && weight.dtype() == DType::kFp32 && weight.numel() == x.dim(1),
                             "weight must be fp32 [dim]: " + desc(weight));
  KP_DISPATCH(x, cpu::rmsnorm(x, weight, eps, out), cuda::rmsnorm(x, weight, eps, out, cu(stream)));
}

Status add_rmsnorm(Tensor& residual, const Tensor& delta, const ConstTensor& weight, float eps, Tensor& out,
                   Stream stream) {
  const char* op = "add_rmsnorm";
  KP_RETURN_IF_ERROR(same_device(op, residual, delta, weight, out));
  KP_RETURN_IF_ERROR(activation_dtype(op, residual));
  KP_RETURN_IF_ERROR(same_shape(op, residual, delta));
  KP_RETURN_IF_ERROR(same_shape(op, residual, out));
  KP_REQUIRE(residual.ndim() == 2 && weight.dtype() == DType::kFp32 &&
                                 weight.numel() == residual.dim(1), "weight must be fp32 [dim]: " + desc(weight));
  KP_DISPATCH(residual, cpu::add_rmsnorm(residual, delta, weight, eps, out),
              cuda::add_rmsnorm(residual, delta, weight, eps, out, cu(stream)));
}

namespace {
// The weight side of a matmul: W [out, in] matches x [n, in], and int8 scales match W.
Status check_weight(const char* op, const Tensor& x, const ConstTensor& weight, const ConstTensor& scales,
                    int group_size) {
  KP_REQUIRE(weight.ndim() == 2 && weight.dim(1) == x.dim(1), "W " + desc(weight) + " does not take x " + desc(x));
  if (weight.dtype() == DType::kInt8) {
    KP_RETURN_IF_ERROR(same_device(op, x, scales));
    KP_REQUIRE(group_size > 0 && weight.dim(1) % group_size == 0,
                               "group size " + std::to_string(group_size) + " must divide " +
                                   std::to_string(weight.dim(1)));
    KP_REQUIRE(scales.dtype() == DType::kFp32 && scales.ndim() == 2 &&
                                   scales.dim(0) == weight.dim(0) && scales.dim(1) == weight.dim(1) / group_size, "scales must be fp32 [out, in/group]: " + desc(scales));
  } else if (base::is_block_type(weight.dtype())) {
    KP_REQUIRE(scales.empty(), "block-type weights carry their scales: " + desc(weight));
    KP_REQUIRE(weight.dim(1) % base::dtype_block_elems(weight.dtype()) == 0,
               "rows of " + desc(weight) + " are not whole blocks");
  } else {
    KP_REQUIRE(is_float(weight.dtype()), "unsupported weight dtype " + desc(weight));
  }
  return Status::Ok();
}
}  // namespace

Status matmul(const Tensor& x, const ConstTensor& weight, const ConstTensor& scales, int group_size, Tensor& y,
              Stream stream) {
  const char* op = "matmul";
  KP_RETURN_IF_ERROR(same_device(op, x, weight, y));
  KP_RETURN_IF_ERROR(activation_dtype(op, x));
  KP_REQUIRE(x.dtype() == y.dtype(), "x and y dtypes differ");
  KP_RETURN_IF_ERROR(rows_match(op, x, y));
  KP_REQUIRE(weight.ndim() == 2 && weight.dim(1) == x.dim(1) && weight.dim(0) == y.dim(1),
                             "shapes do not chain: x " + desc(x) + " W " + desc(weight) + " y " + desc(y));
  KP_RETURN_IF_ERROR(check_weight(op, x, weight, scales, group_size));
  KP_DISPATCH(x, cpu::matmul(x, weight, scales, group_size, y),
              cuda::matmul(x, weight, scales, group_size, y, cu(stream)));
}

Status dequantize(const ConstTensor& weight, Tensor& out, Stream stream) {
  const char* op = "dequantize";
  KP_RETURN_IF_ERROR(same_device(op, weight, out));
  KP_REQUIRE(is_float(weight.dtype()) || base::is_block_type(weight.dtype()), "unsupported weight dtype " + desc(weight));
  KP_REQUIRE(weight.ndim() == 2 && out.dtype() == DType::kFp32 && out.shape() == weight.shape(),
             "out must be fp32 of the weight's 2-D shape: " + desc(weight) + " -> " + desc(out));
  KP_DISPATCH(out, cpu::dequantize(weight, out), cuda::dequantize(weight, out, cu(stream)));
}

Status rope(Tensor& q, Tensor& k, const Tensor& pos, const Tensor& cos_sin, int head_dim, Stream stream) {
  const char* op = "rope";
  KP_RETURN_IF_ERROR(same_device(op, q, k, cos_sin));
  KP_RETURN_IF_ERROR(activation_dtype(op, q));
  KP_RETURN_IF_ERROR(check_pos(op, pos, q));
  KP_RETURN_IF_ERROR(rows_match(op, q, k));
  KP_REQUIRE(head_dim > 0 && head_dim % 2 == 0 && q.dim(1) % head_dim == 0 &&
                                 k.dim(1) % head_dim == 0, "head_dim must be even and divide the q and k widths");
  KP_REQUIRE(cos_sin.dtype() == DType::kFp32 && cos_sin.ndim() == 3 &&
                                 cos_sin.dim(1) == head_dim / 2 && cos_sin.dim(2) == 2, "cos_sin must be fp32 [max_seq_len, head_dim/2, 2]");
  if (q.device_type() == DeviceType::kCPU)
    KP_REQUIRE(host_pos(pos) >= 0 && host_pos(pos) + q.dim(0) <= cos_sin.dim(0),
                               "positions beyond the rope table");
  KP_DISPATCH(q, cpu::rope(q, k, host_pos(pos), cos_sin, head_dim),
              cuda::rope(q, k, pos, cos_sin, head_dim, cu(stream)));
}

Status kv_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& pos,
                 Stream stream) {
  const char* op = "kv_append";
  KP_RETURN_IF_ERROR(same_device(op, k, v, k_cache, v_cache));
  KP_RETURN_IF_ERROR(activation_dtype(op, k));
  KP_RETURN_IF_ERROR(check_pos(op, pos, k));
  KP_RETURN_IF_ERROR(same_shape(op, k, v));
  KP_RETURN_IF_ERROR(same_shape(op, k_cache, v_cache));
  KP_REQUIRE(k.ndim() == 2 && k_cache.ndim() == 2 && k.dim(1) == k_cache.dim(1),
                             "k " + desc(k) + " does not fit cache " + desc(k_cache));
  KP_REQUIRE(is_float(k_cache.dtype()), "cache must be float");
  if (k.device_type() == DeviceType::kCPU) {
    KP_REQUIRE(k.dtype() == k_cache.dtype(), "CPU cache dtype must match k");
    KP_REQUIRE(host_pos(pos) >= 0 && host_pos(pos) + k.dim(0) <= k_cache.dim(0),
                               "positions beyond the cache");
  }
  KP_DISPATCH(k, cpu::kv_append(k, v, k_cache, v_cache, host_pos(pos)),
              cuda::kv_append(k, v, k_cache, v_cache, pos, cu(stream)));
}

Status rope_kv_append(Tensor& q, Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& pos,
                      const Tensor& cos_sin, int head_dim, Stream stream) {
  if (q.device_type() == DeviceType::kCPU) {  // the checks of both calls, then both calls
    KP_RETURN_IF_ERROR(rope(q, k, pos, cos_sin, head_dim, stream));
    return kv_append(k, v, k_cache, v_cache, pos, stream);
  }
  const char* op = "rope_kv_append";
  KP_RETURN_IF_ERROR(same_device(op, q, k, v, k_cache, v_cache, cos_sin));
  KP_RETURN_IF_ERROR(activation_dtype(op, q));
  KP_RETURN_IF_ERROR(check_pos(op, pos, q));
  KP_RETURN_IF_ERROR(rows_match(op, q, k));
  KP_RETURN_IF_ERROR(same_shape(op, k, v));
  KP_RETURN_IF_ERROR(same_shape(op, k_cache, v_cache));
  KP_REQUIRE(head_dim > 0 && head_dim % 2 == 0 && q.dim(1) % head_dim == 0 && k.dim(1) % head_dim == 0,
             "head_dim must be even and divide the q and k widths");
  KP_REQUIRE(cos_sin.dtype() == DType::kFp32 && cos_sin.ndim() == 3 && cos_sin.dim(1) == head_dim / 2 &&
                 cos_sin.dim(2) == 2,
             "cos_sin must be fp32 [max_seq_len, head_dim/2, 2]");
  KP_REQUIRE(k_cache.ndim() == 2 && k.dim(1) == k_cache.dim(1) && k_cache.dtype() == k.dtype(),
             "k " + desc(k) + " does not fit cache " + desc(k_cache));
#ifdef KUIPER_WITH_CUDA
  return cuda::rope_kv_append(q, k, v, k_cache, v_cache, pos, cos_sin, head_dim, cu(stream));
#else
  return base::Unsupported("this build has no CUDA support (KUIPER_WITH_CUDA off)");
#endif
}

int64_t attention_scratch_floats(int64_t n_tokens, int n_heads, int head_dim, int64_t max_seq_len,
                                 base::DeviceType device) {
#ifdef KUIPER_WITH_CUDA
  if (device == DeviceType::kCUDA) return cuda::attention_scratch_floats(n_tokens, n_heads, head_dim, max_seq_len);
#endif
  (void)device;
  return cpu::attention_scratch_floats(n_tokens, n_heads, head_dim, max_seq_len);
}

int64_t attention_batch_scratch_floats(int64_t batch, int n_heads, int head_dim, int64_t max_len,
                                       base::DeviceType device) {
#ifdef KUIPER_WITH_CUDA
  if (device == DeviceType::kCUDA) return cuda::attention_batch_scratch_floats(batch, n_heads, head_dim, max_len);
#endif
  (void)device;
  return cpu::attention_scratch_floats(batch, n_heads, head_dim, max_len);
}

Status attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& pos, int n_heads,
                 int n_kv_heads, int head_dim, Tensor& scratch, Tensor& out, Stream stream) {
  const char* op = "attention";
  KP_RETURN_IF_ERROR(same_device(op, q, k_cache, v_cache, scratch, out));
  KP_RETURN_IF_ERROR(activation_dtype(op, q));
  KP_RETURN_IF_ERROR(check_pos(op, pos, q));
  KP_RETURN_IF_ERROR(same_shape(op, q, out));
  KP_RETURN_IF_ERROR(same_shape(op, k_cache, v_cache));
  KP_REQUIRE(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0,
                             "n_kv_heads must divide n_heads");
  KP_REQUIRE(q.ndim() == 2 && q.dim(1) == (int64_t)n_heads * head_dim,
                             "q must be [n, n_heads * head_dim]: " + desc(q));
  KP_REQUIRE(k_cache.ndim() == 2 && k_cache.dim(1) == (int64_t)n_kv_heads * head_dim,
                             "cache must be [max_seq_len, n_kv_heads * head_dim]: " + desc(k_cache));
  // The CPU kernel needs one score row and uses as many threads as the scratch has rows; the CUDA one
  // needs its full size.
  const int64_t min_scratch = q.device_type() == DeviceType::kCPU
                                  ? k_cache.dim(0)
                                  : attention_scratch_floats(q.dim(0), n_heads, head_dim, k_cache.dim(0), q.device_type());
  KP_REQUIRE(scratch.dtype() == DType::kFp32 && scratch.numel() >= min_scratch, "scratch too small");
  if (q.device_type() == DeviceType::kCPU) {
    KP_REQUIRE(k_cache.dtype() == DType::kFp32, "CPU cache must be fp32");
    KP_REQUIRE(host_pos(pos) >= 0 && host_pos(pos) + q.dim(0) <= k_cache.dim(0),
                               "positions beyond the cache");
  }
  KP_DISPATCH(q, cpu::attention(q, k_cache, v_cache, host_pos(pos), n_heads, n_kv_heads, head_dim, scratch, out),
              cuda::attention(q, k_cache, v_cache, pos, n_heads, n_kv_heads, head_dim, scratch, out, cu(stream)));
}

// ---------------------------------------------------------------------------------------------------
// The paged cache.
namespace {
Status int32_on(const char* op, const Tensor& t, const Tensor& like, const char* what) {
  KP_REQUIRE(t.dtype() == DType::kInt32 && !t.empty() && t.is_contiguous(), std::string(what) + " must be int32");
  KP_REQUIRE(t.device_type() == like.device_type() && t.device_id() == like.device_id(),
             std::string(what) + " on another device");
  return Status::Ok();
}

// The shared checks of the two paged attentions; `rows_needed` is the number of table rows used.
Status paged_attention_args(const char* op, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            int page_size, int n_heads, int n_kv_heads, int head_dim, const Tensor& scratch,
                            int64_t max_len, const Tensor& out) {
  KP_RETURN_IF_ERROR(same_device(op, q, k_cache, v_cache, out));
  KP_RETURN_IF_ERROR(activation_dtype(op, q));
  KP_RETURN_IF_ERROR(same_shape(op, q, out));
  KP_RETURN_IF_ERROR(same_shape(op, k_cache, v_cache));
  KP_REQUIRE(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0 && head_dim > 0,
             "n_kv_heads must divide n_heads");
  KP_REQUIRE(q.ndim() == 2 && q.dim(1) == (int64_t)n_heads * head_dim, "q must be [n, n_heads * head_dim]: " + desc(q));
  KP_REQUIRE(k_cache.ndim() == 2 && k_cache.dim(1) == (int64_t)n_kv_heads * head_dim,
             "cache must be [slots, n_kv_heads * head_dim]: " + desc(k_cache));
  KP_REQUIRE(page_size > 0 && k_cache.dim(0) % page_size == 0, "page size must divide the cache's slots");
  if (q.device_type() == DeviceType::kCPU) {
    KP_REQUIRE(k_cache.dtype() == DType::kFp32, "CPU cache must be fp32");
    KP_REQUIRE(!scratch.empty() && scratch.device_type() == DeviceType::kCPU && scratch.dtype() == DType::kFp32 &&
                   scratch.numel() >= max_len,
               "scratch too small");
  }
  return Status::Ok();
}

// On the CPU every page index the rows will read is checked against the cache (the CUDA kernels
// clamp instead: the host that fills the tables keeps them in range).
Status pages_in_range(const char* op, const int32_t* table, int64_t len, int page_size, int64_t n_pages) {
  for (int64_t j = 0; j * page_size < len; ++j)
    KP_REQUIRE(table[j] >= 0 && table[j] < n_pages, "page " + std::to_string(table[j]) + " outside the cache");
  return Status::Ok();
}
}  // namespace

Status rope_at(Tensor& q, Tensor& k, const Tensor& positions, const Tensor& cos_sin, int head_dim, Stream stream) {
  const char* op = "rope_at";
  KP_RETURN_IF_ERROR(same_device(op, q, k, cos_sin));
  KP_RETURN_IF_ERROR(activation_dtype(op, q));
  KP_RETURN_IF_ERROR(int32_on(op, positions, q, "positions"));
  KP_RETURN_IF_ERROR(rows_match(op, q, k));
  KP_REQUIRE(positions.numel() == q.dim(0), "positions must be int32 [n]");
  KP_REQUIRE(head_dim > 0 && head_dim % 2 == 0 && q.dim(1) % head_dim == 0 && k.dim(1) % head_dim == 0,
             "head_dim must be even and divide the q and k widths");
  KP_REQUIRE(cos_sin.dtype() == DType::kFp32 && cos_sin.ndim() == 3 && cos_sin.dim(1) == head_dim / 2 &&
                 cos_sin.dim(2) == 2,
             "cos_sin must be fp32 [max_seq_len, head_dim/2, 2]");
  if (q.device_type() == DeviceType::kCPU) {
    const int32_t* p = positions.ptr<int32_t>();
    for (int64_t i = 0; i < positions.numel(); ++i)
      KP_REQUIRE(p[i] >= 0 && p[i] < cos_sin.dim(0), "position " + std::to_string(p[i]) + " beyond the rope table");
  }
  KP_DISPATCH(q, cpu::rope_at(q, k, positions, cos_sin, head_dim),
              cuda::rope_at(q, k, positions, cos_sin, head_dim, cu(stream)));
}

Status kv_append_paged(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& slots,
                       Stream stream) {
  const char* op = "kv_append_paged";
  KP_RETURN_IF_ERROR(same_device(op, k, v, k_cache, v_cache));
  KP_RETURN_IF_ERROR(activation_dtype(op, k));
  KP_RETURN_IF_ERROR(int32_on(op, slots, k, "slots"));
  KP_RETURN_IF_ERROR(same_shape(op, k, v));
  KP_RETURN_IF_ERROR(same_shape(op, k_cache, v_cache));
  KP_REQUIRE(k.ndim() == 2 && k_cache.ndim() == 2 && k.dim(1) == k_cache.dim(1),
             "k " + desc(k) + " does not fit cache " + desc(k_cache));
  KP_REQUIRE(slots.numel() == k.dim(0), "slots must be int32 [n]");
  KP_REQUIRE(is_float(k_cache.dtype()), "cache must be float");
  if (k.device_type() == DeviceType::kCPU) {
    KP_REQUIRE(k.dtype() == k_cache.dtype(), "CPU cache dtype must match k");
    const int32_t* sl = slots.ptr<int32_t>();
    for (int64_t i = 0; i < slots.numel(); ++i)
      KP_REQUIRE(sl[i] < k_cache.dim(0), "slot " + std::to_string(sl[i]) + " beyond the cache");
  }
  KP_DISPATCH(k, cpu::kv_append_paged(k, v, k_cache, v_cache, slots),
              cuda::kv_append_paged(k, v, k_cache, v_cache, slots, cu(stream)));
}

Status paged_decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& page_tables,
                              const Tensor& seq_lens, int page_size, int n_heads, int n_kv_heads, int head_dim,
                              Tensor& scratch, Tensor& out, Stream stream) {
  const char* op = "paged_decode_attention";
  KP_RETURN_IF_ERROR(int32_on(op, page_tables, q, "page_tables"));
  KP_RETURN_IF_ERROR(int32_on(op, seq_lens, q, "seq_lens"));
  KP_REQUIRE(page_tables.ndim() == 2 && page_tables.dim(0) >= q.dim(0) && seq_lens.numel() >= q.dim(0),
             "page_tables must be int32 [>= B, max_pages] and seq_lens int32 [>= B]");
  const int64_t max_len = page_tables.dim(1) * page_size;
  KP_RETURN_IF_ERROR(paged_attention_args(op, q, k_cache, v_cache, page_size, n_heads, n_kv_heads, head_dim, scratch,
                                          max_len, out));
  if (q.device_type() == DeviceType::kCPU) {
    const int32_t* lens = seq_lens.ptr<int32_t>();
    for (int64_t b = 0; b < q.dim(0); ++b) {
      KP_REQUIRE(lens[b] >= 0 && lens[b] <= max_len, "sequence length " + std::to_string(lens[b]) + " out of range");
      KP_RETURN_IF_ERROR(pages_in_range(op, page_tables.ptr<int32_t>() + b * page_tables.dim(1), lens[b], page_size,
                                        k_cache.dim(0) / page_size));
    }
  }
  KP_DISPATCH(q,
              cpu::paged_decode_attention(q, k_cache, v_cache, page_tables, seq_lens, page_size, n_heads, n_kv_heads,
                                          head_dim, scratch, out),
              cuda::paged_decode_attention(q, k_cache, v_cache, page_tables, seq_lens, page_size, n_heads, n_kv_heads,
                                           head_dim, scratch, out, cu(stream)));
}

Status paged_prefill_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                               const Tensor& page_table, const Tensor& pos, int page_size, int n_heads,
                               int n_kv_heads, int head_dim, Tensor& scratch, Tensor& out, Stream stream) {
  const char* op = "paged_prefill_attention";
  KP_RETURN_IF_ERROR(int32_on(op, page_table, q, "page_table"));
  KP_RETURN_IF_ERROR(check_pos(op, pos, q));
  const int64_t max_len = page_table.numel() * page_size;
  KP_RETURN_IF_ERROR(paged_attention_args(op, q, k_cache, v_cache, page_size, n_heads, n_kv_heads, head_dim, scratch,
                                          max_len, out));
  if (q.device_type() == DeviceType::kCPU) {
    KP_REQUIRE(host_pos(pos) >= 0 && host_pos(pos) + q.dim(0) <= max_len, "positions beyond the page table");
    KP_RETURN_IF_ERROR(pages_in_range(op, page_table.ptr<int32_t>(), host_pos(pos) + q.dim(0), page_size,
                                      k_cache.dim(0) / page_size));
  }
  KP_DISPATCH(q,
              cpu::paged_prefill_attention(q, k_cache, v_cache, page_table, host_pos(pos), page_size, n_heads,
                                           n_kv_heads, head_dim, scratch, out),
              cuda::paged_prefill_attention(q, k_cache, v_cache, page_table, pos, page_size, n_heads, n_kv_heads,
                                            head_dim, out, cu(stream)));
}

Status swiglu(const Tensor& gate, const Tensor& up, Tensor& out, Stream stream) {
  const char* op = "swiglu";
  KP_RETURN_IF_ERROR(same_device(op, gate, up, out));
  KP_RETURN_IF_ERROR(activation_dtype(op, gate));
  KP_RETURN_IF_ERROR(same_shape(op, gate, up));
  KP_RETURN_IF_ERROR(same_shape(op, gate, out));
  KP_DISPATCH(gate, cpu::swiglu(gate, up, out), cuda::swiglu(gate, up, out, cu(stream)));
}

Status matmul_swiglu(const Tensor& x, const ConstTensor& w13, const ConstTensor& scales, int group_size, Tensor& gu,
                     Tensor& out, Stream stream) {
  const char* op = "matmul_swiglu";
  KP_RETURN_IF_ERROR(same_device(op, x, w13, gu, out));
  KP_REQUIRE(w13.ndim() == 2 && w13.dim(0) % 2 == 0 && out.ndim() == 2 && out.dim(1) * 2 == w13.dim(0),
             "w13 " + desc(w13) + " must be [2 hidden, in] for out " + desc(out));
  KP_REQUIRE(gu.ndim() == 2 && gu.dim(1) == w13.dim(0), "gu must be [n, 2 hidden]: " + desc(gu));
  KP_RETURN_IF_ERROR(rows_match(op, x, out));
  KP_RETURN_IF_ERROR(rows_match(op, x, gu));
  KP_REQUIRE(out.dtype() == x.dtype() && gu.dtype() == x.dtype(), "x, gu and out dtypes differ");
#ifdef KUIPER_WITH_CUDA
  if (x.device_type() == DeviceType::kCUDA) {
    KP_RETURN_IF_ERROR(activation_dtype(op, x));
    KP_RETURN_IF_ERROR(check_weight(op, x, w13, scales, group_size));
    bool fused = false;
    KP_RETURN_IF_ERROR(cuda::matmul_swiglu_fused(x, w13, scales, group_size, out, cu(stream), &fused));
    if (fused) return Status::Ok();
  }
#endif
  KP_RETURN_IF_ERROR(matmul(x, w13, scales, group_size, gu, stream));
  const int64_t hidden = out.dim(1);
  for (int64_t i = 0; i < x.dim(0); ++i) {  // gate and up halves of row i are contiguous
    Tensor row = gu.slice_rows(i, i + 1).view({2, hidden});
    Tensor o = out.slice_rows(i, i + 1);
    KP_RETURN_IF_ERROR(swiglu(row.slice_rows(0, 1), row.slice_rows(1, 2), o, stream));
  }
  return Status::Ok();
}

Status add(const Tensor& a, const Tensor& b, Tensor& out, Stream stream) {
  const char* op = "add";
  KP_RETURN_IF_ERROR(same_device(op, a, b, out));
  KP_RETURN_IF_ERROR(activation_dtype(op, a));
  KP_RETURN_IF_ERROR(same_shape(op, a, b));
  KP_RETURN_IF_ERROR(same_shape(op, a, out));
  KP_DISPATCH(a, cpu::add(a, b, out), cuda::add(a, b, out, cu(stream)));
}

Status softmax(Tensor& x, Stream stream) {
  const char* op = "softmax";
  KP_RETURN_IF_ERROR(same_device(op, x));
  KP_REQUIRE(x.dtype() == DType::kFp32 && x.ndim() == 2, "x must be fp32 [rows, cols]");
  KP_DISPATCH(x, cpu::softmax(x), cuda::softmax(x, cu(stream)));
}

Status argmax(const Tensor& x, Tensor& out, Stream stream) {
  const char* op = "argmax";
  KP_RETURN_IF_ERROR(same_device(op, x, out));
  KP_RETURN_IF_ERROR(activation_dtype(op, x));
  KP_REQUIRE(x.ndim() == 2 && out.dtype() == DType::kInt32 && out.numel() == x.dim(0),
                             "out must be int32 [rows]");
  KP_DISPATCH(x, cpu::argmax(x, out), cuda::argmax(x, out, cu(stream)));
}

Status convert(const Tensor& in, Tensor& out, Stream stream) {
  const char* op = "convert";
  KP_RETURN_IF_ERROR(same_device(op, in, out));
  KP_REQUIRE(is_float(in.dtype()) && is_float(out.dtype()) && in.numel() == out.numel(),
                             "float tensors of equal size required");
  KP_DISPATCH(in, cpu::convert(in, out), cuda::convert(in, out, cu(stream)));
}

Status fill_random(Tensor& t, uint64_t seed, float scale, Stream stream) {
  const char* op = "fill_random";
  KP_RETURN_IF_ERROR(same_device(op, t));
  KP_REQUIRE(t.dtype() != DType::kInt32 && !base::is_block_type(t.dtype()), "int32 and block-type tensors are not filled");
  KP_DISPATCH(t, cpu::fill_random(t, seed, scale), cuda::fill_random(t, seed, scale, cu(stream)));
}

}  // namespace kernel
