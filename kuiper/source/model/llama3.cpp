// The Llama forward pass over one step of a batch (model/batch.h): the rows of several sequences at
// once, matrix-matrix for every linear layer, whatever mix of decode rows and prefill chunks it holds.
//
//   x = embed(tokens);  xb = rmsnorm(x)
//   for each layer:                                         (per rank: its heads, its FFN units)
//     q, k, v = xb Wq^T, xb Wk^T, xb Wv^T;  rope(q, k) at each row's position
//     write k, v to each row's cache slot (its sequence's page, its row in the page)
//     att = paged decode attention (the one-token rows) | paged prefill attention (each chunk)
//     x += att Wo^T;  xb = rmsnorm(x)                        Wo row-parallel
//     x += (silu(xb W1^T) * xb W3^T) W2^T;  xb = rmsnorm(x)  W2 row-parallel; the next layer's norm
//   logits = xb[rows asking] Wout^T                           vocabulary split over ranks, then gathered
// One sequence whose page table is the identity (llama_infer) is the contiguous cache, and runs the
// contiguous kernels (rope / kv_append / attention at a start position) as before paging.
// A row-parallel layer's partial products are summed over ranks, added to x and normed in one call
// (MatmulLayer::forward_into_residual): one fused kernel where the communicator has one.
#include "model/llama3.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "op/kernels.h"

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>

#include "base/cuda_utils.h"
#endif

namespace model {

using base::DeviceType;
using base::DType;
using base::Status;
using tensor::Tensor;

namespace {
constexpr uint64_t kAlign = 256;
uint64_t align_up(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Copies host bytes to a tensor on its device (stream-ordered on GPUs).
Status upload(const void* src, size_t bytes, const Tensor& dst, void* stream) {
  if (dst.device_type() == DeviceType::kCPU) {
    std::memcpy(dst.data(), src, bytes);
    return Status::Ok();
  }
#ifdef KUIPER_WITH_CUDA
  CUDA_CHECK(cudaMemcpyAsync(dst.data(), src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)));
  return Status::Ok();
#else
  (void)stream;
  return base::Unsupported("this build has no CUDA support");
#endif
}

// Queues a copy of a device tensor to host memory (done at once on the CPU); synchronize() waits for it.
Status copy_to_host(const Tensor& src, void* dst, size_t bytes, void* stream) {
  if (src.device_type() == DeviceType::kCPU) {
    std::memcpy(dst, src.data(), bytes);
    return Status::Ok();
  }
#ifdef KUIPER_WITH_CUDA
  CUDA_CHECK(cudaMemcpyAsync(dst, src.data(), bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)));
  return Status::Ok();
#else
  (void)stream;
  return base::Unsupported("this build has no CUDA support");
#endif
}
// dst[r, c0 + j] = src[r, j] for the rows of src: one rank's columns of the logits (CPU memcpy per
// row, one 2-D copy on a GPU; graph-capturable).
Status copy_columns(const Tensor& src, int64_t rows, int64_t cols, Tensor& dst, int64_t dst_cols, int64_t c0,
                    void* stream) {
  const size_t e = base::dtype_size(src.dtype());
  const char* sp = static_cast<const char*>(src.data());
  char* dp = static_cast<char*>(dst.data()) + c0 * e;
  if (src.device_type() == DeviceType::kCPU) {
    for (int64_t r = 0; r < rows; ++r) std::memcpy(dp + r * dst_cols * e, sp + r * cols * e, cols * e);
    return Status::Ok();
  }
#ifdef KUIPER_WITH_CUDA
  CUDA_CHECK(cudaMemcpy2DAsync(dp, dst_cols * e, sp, cols * e, cols * e, rows, cudaMemcpyDeviceToDevice,
                               static_cast<cudaStream_t>(stream)));
  return Status::Ok();
#else
  (void)stream;
  return base::Unsupported("this build has no CUDA support");
#endif
}

#ifdef KUIPER_WITH_CUDA
// Decode steps replay a graph captured for the smallest bucket that holds their rows: 1, 2, 4, 8, then
// multiples of 8, and max_seqs itself (a step padded to its bucket costs the padding rows' matmul rows,
// at most 7 past 8).
int32_t bucket_for(int32_t rows, int32_t max_seqs) {
  int32_t b = rows <= 8 ? 1 : (rows + 7) / 8 * 8;
  while (b < rows) b *= 2;
  return std::min(b, max_seqs);
}
// Index of a bucket among 1, 2, 4, 8, 16, 24, ... (a bucket capped at max_seqs shares the index of the
// standard bucket above it, which then cannot occur).
int32_t bucket_index(int32_t bucket) {
  if (bucket > 8) return 3 + (bucket - 1) / 8;  // 9..16 -> 4, 17..24 -> 5, ...
  int32_t i = 0;
  while ((1 << i) < bucket) ++i;
  return i;
}
#endif
}  // namespace

// Host-side staging of what crosses between host and device each step, and the decode graphs.
struct LlamaModel::Staging {
  std::vector<int32_t> host;  // the plan's arrays on the CPU are the device arrays themselves; next [S] here
  int32_t* plan_ints = nullptr;  // StepPlan::ints
  int32_t* next = nullptr;       // [S]
  float* logits = nullptr;       // fp32 [S, vocab] (GPU only: the CPU copies straight to the caller)
#ifdef KUIPER_WITH_CUDA
  base::PinnedBuffer pinned;  // backing store on GPUs, so copies are asynchronous
  // [0]: the contiguous single-sequence decode; [1 + bucket_index]: paged decode of a bucket's rows.
  std::unique_ptr<base::CudaGraph[]> graphs;
#endif
};

LlamaModel::LlamaModel() = default;
LlamaModel::~LlamaModel() = default;

Status LlamaModel::create(const ModelFile& file, const ModelOptions& opts, std::unique_ptr<LlamaModel>* out) {
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  m->config_ = file.config();
  m->opts_ = opts;
  if (opts.device == DeviceType::kCPU && opts.act_dtype != DType::kFp32)
    return base::InvalidArgument("the CPU engine computes in fp32 (--dtype fp32)");
  if (opts.act_dtype != DType::kFp32 && opts.act_dtype != DType::kFp16 && opts.act_dtype != DType::kBf16)
    return base::InvalidArgument("activation dtype must be fp32, fp16 or bf16");
  if (opts.max_seq_len < 0 || opts.max_seq_len > m->config_.max_seq_len)
    return base::InvalidArgument("--max_seq_len " + std::to_string(opts.max_seq_len) + " exceeds the model's context of " +
                                 std::to_string(m->config_.max_seq_len));
  m->max_seq_len_ = opts.max_seq_len > 0 ? opts.max_seq_len : m->config_.max_seq_len;
  if (opts.max_batch_tokens <= 0) return base::InvalidArgument("max_batch_tokens must be positive");
  if (opts.max_batch_seqs <= 0) return base::InvalidArgument("max_batch_seqs must be positive");
  if (opts.page_size <= 0) return base::InvalidArgument("the KV page size must be positive");
  if (opts.kv_capacity < 0) return base::InvalidArgument("the KV cache capacity must not be negative");
  // One sequence never needs more rows than its context; a batch needs one row per sequence at least.
  m->max_batch_tokens_ = std::max(opts.max_batch_seqs, opts.max_batch_seqs == 1
                                                          ? std::min(opts.max_batch_tokens, m->max_seq_len_)
                                                          : opts.max_batch_tokens);
  m->alloc_ = opts.device == DeviceType::kCPU ? static_cast<base::DeviceAllocator*>(base::CPUAllocator::get())
                                              : base::CUDAAllocator::get(opts.device_id);

  ShardSpec spec{opts.device, opts.device_id, opts.rank, opts.world_size, opts.comm, opts.layer_begin, opts.layer_end};
  KP_RETURN_IF_ERROR(LlamaWeights::load(file, spec, &m->weights_, opts.load_progress));
  m->layer_begin_ = m->weights_.layer_begin;
  m->layer_end_ = m->weights_.layer_end;
  m->first_stage_ = m->layer_begin_ == 0;
  m->last_stage_ = m->layer_end_ == m->config_.n_layers;
  if (!(m->first_stage_ && m->last_stage_)) {
    const comm::Communicator* p = opts.pipe;
    if (p == nullptr || p->world_size() < 2 || m->first_stage_ != (p->rank() == 0) ||
        m->last_stage_ != (p->rank() == p->world_size() - 1))
      return base::InvalidArgument("layers [" + std::to_string(m->layer_begin_) + ", " + std::to_string(m->layer_end_) +
                                   ") are a pipeline stage: it needs a pipeline communicator that ranks it among the stages");
  }
  KP_RETURN_IF_ERROR(m->init_mem());
  *out = std::move(m);
  return Status::Ok();
}

// The KV cache (one block) and the workspace (one block), both sized for the worst case up front.
Status LlamaModel::init_mem() {
  const ModelConfig& c = config_;
  const DType act = opts_.act_dtype;
  const int64_t T = max_batch_tokens_;
  const int64_t S = opts_.max_batch_seqs;
  const int32_t ps = opts_.page_size;
  const int64_t q_local = (int64_t)weights_.n_heads_local * c.head_dim;
  const int64_t kv_local = (int64_t)weights_.n_kv_heads_local * c.head_dim;
  const int64_t vocab_local = c.vocab_size / opts_.world_size;
  const int32_t max_pages = (max_seq_len_ + ps - 1) / ps;
  const int64_t want = opts_.kv_capacity > 0 ? opts_.kv_capacity : max_seq_len_;
  if ((want + ps - 1) / ps > INT32_MAX / ps) return base::InvalidArgument("KV cache capacity out of range");
  const int32_t capacity = (int32_t)((want + ps - 1) / ps * ps);

  KP_RETURN_IF_ERROR(kv_cache_.init({layer_end_ - layer_begin_, capacity, weights_.n_kv_heads_local, c.head_dim, act, ps}, alloc_));
  limits_ = {(int32_t)T, (int32_t)S, max_pages, ps, kv_cache_.n_pages(), max_seq_len_, c.vocab_size};
  identity_pages_.resize(std::min(max_pages, kv_cache_.n_pages()));
  for (size_t j = 0; j < identity_pages_.size(); ++j) identity_pages_[j] = (int32_t)j;

  const int64_t max_len = std::max<int64_t>(capacity, (int64_t)max_pages * ps);
  // Attention scratch: a prefill chunk or one sequence's decode, and (S > 1) the batched decode's split-K
  // partials over each sequence's page table.
  int64_t scratch_floats = kernel::attention_scratch_floats(T, weights_.n_heads_local, c.head_dim, max_len, opts_.device);
  if (S > 1)
    scratch_floats = std::max(scratch_floats, kernel::attention_batch_scratch_floats(
                                                  S, weights_.n_heads_local, c.head_dim, (int64_t)max_pages * ps,
                                                  opts_.device));
  struct Slot { Tensor* t; DType dtype; tensor::Shape shape; uint64_t offset; };
  std::vector<Slot> slots = {
      {&ws_.x, act, {T, c.dim}, 0},           {&ws_.xb, act, {T, c.dim}, 0},
      {&ws_.q, act, {T, q_local}, 0},         {&ws_.k, act, {T, kv_local}, 0},
      {&ws_.v, act, {T, kv_local}, 0},        {&ws_.att, act, {T, q_local}, 0},
      {&ws_.proj, act, {T, c.dim}, 0},        {&ws_.h1, act, {T, weights_.hidden_local}, 0},
      {&ws_.h3, act, {T, weights_.hidden_local}, 0},
      {&ws_.qkv1, act, {1, q_local + 2 * kv_local}, 0}, {&ws_.gu1, act, {1, 2 * (int64_t)weights_.hidden_local}, 0},
      {&ws_.xl, act, {S, c.dim}, 0},
      {&ws_.logits_local, act, {S, vocab_local}, 0}, {&ws_.next, DType::kInt32, {S}, 0},
      {&ws_.step_ints, DType::kInt32, {StepPlan::ints(limits_)}, 0},
      {&ws_.scratch, DType::kFp32, {std::max<int64_t>(1, scratch_floats)}, 0},
      {&ws_.cos_sin, DType::kFp32, {max_seq_len_, c.head_dim / 2, 2}, 0},
  };
  if (opts_.comm != nullptr) slots.push_back({&ws_.logits_all, act, {S, c.vocab_size}, 0});
  if (opts_.comm != nullptr && S > 1) slots.push_back({&ws_.logits_ranks, act, {opts_.world_size * S, vocab_local}, 0});
  if (act != DType::kFp32) slots.push_back({&ws_.logits_f32, DType::kFp32, {S, c.vocab_size}, 0});
  uint64_t total = 0;
  for (Slot& s : slots) {
    uint64_t n = base::dtype_size(s.dtype);
    for (int64_t d : s.shape) n *= (uint64_t)d;
    s.offset = total;
    total += align_up(n);
  }
  Status st = base::Buffer::create(alloc_, total, &ws_block_);
  if (st.code() == base::StatusCode::kOutOfMemory)
    return base::OutOfMemory("the activation workspace needs " + base::format_size(total) + " " +
                             base::memory_report(*alloc_) + "; lower --max_seq_len");
  if (!st.ok()) return st;
  for (Slot& s : slots) *s.t = Tensor::from_buffer(ws_block_, s.offset, s.dtype, s.shape);
  auto columns = [](const Tensor& row, int64_t begin, int64_t len) {
    return Tensor::from_buffer(row.buffer(), row.byte_offset() + begin * base::dtype_size(row.dtype()), row.dtype(),
                               {1, len});
  };
  ws_.q1 = columns(ws_.qkv1, 0, q_local);
  ws_.k1 = columns(ws_.qkv1, q_local, kv_local);
  ws_.v1 = columns(ws_.qkv1, q_local + kv_local, kv_local);
  ws_.qk1 = columns(ws_.qkv1, 0, q_local + kv_local);
  ws_.g1 = columns(ws_.gu1, 0, weights_.hidden_local);
  ws_.u1 = columns(ws_.gu1, weights_.hidden_local, weights_.hidden_local);
  if (opts_.comm == nullptr) ws_.logits_all = ws_.logits_local;
  if (act == DType::kFp32) ws_.logits_f32 = ws_.logits_all;
  ws_.bytes = total;

  const std::vector<float> table = rope_cos_sin_table(c, max_seq_len_);
  KP_RETURN_IF_ERROR(upload(table.data(), table.size() * sizeof(float), ws_.cos_sin, opts_.stream));

  staging_ = std::make_unique<Staging>();
  if (opts_.device == DeviceType::kCPU) {
    staging_->host.resize(S);
    staging_->next = staging_->host.data();
    staging_->plan_ints = ws_.step_ints.ptr<int32_t>();  // the kernels read the plan where it is written
  } else {
#ifdef KUIPER_WITH_CUDA
    const int64_t plan_ints = StepPlan::ints(limits_);
    const size_t int_bytes = align_up((plan_ints + S) * sizeof(int32_t));
    KP_RETURN_IF_ERROR(staging_->pinned.create(int_bytes + (size_t)S * c.vocab_size * sizeof(float)));
    staging_->plan_ints = static_cast<int32_t*>(staging_->pinned.data());
    staging_->next = staging_->plan_ints + plan_ints;
    staging_->logits = reinterpret_cast<float*>(static_cast<char*>(staging_->pinned.data()) + int_bytes);
    staging_->graphs.reset(new base::CudaGraph[2 + bucket_index((int32_t)S)]);
    KP_RETURN_IF_ERROR(synchronize());
#endif
  }
  plan_.init(limits_, staging_->plan_ints);
  // The device arrays: views of step_ints at the plan's offsets.
  auto ints = [&](const int32_t* host, tensor::Shape shape) {
    return Tensor::from_buffer(ws_.step_ints.buffer(), ws_.step_ints.byte_offset() + plan_.offset_of(host) * 4,
                               DType::kInt32, shape);
  };
  ws_.tokens = ints(plan_.tokens, {T});
  ws_.positions = ints(plan_.positions, {T});
  ws_.slots = ints(plan_.slots, {T});
  ws_.page_tables = ints(plan_.tables, {S, max_pages});
  ws_.seq_lens = ints(plan_.seq_lens, {S});
  ws_.chunk_pos = ints(plan_.chunk_pos, {S});
  ws_.logit_rows = ints(plan_.logit_rows, {S});
  return Status::Ok();
}

// Attention of every row over its sequence's cache, after rope and the K/V write.
Status LlamaModel::attention(int layer, Tensor& q, Tensor& k, Tensor& v) {
  const ModelConfig& c = config_;
  void* s = opts_.stream;
  const int nh = weights_.n_heads_local, nkv = weights_.n_kv_heads_local, ps = kv_cache_.page_size();
  const int32_t n = plan_.n_rows;
  Tensor kc = kv_cache_.key(layer - layer_begin_), vc = kv_cache_.value(layer - layer_begin_);  // this stage's
  Tensor att = ws_.att.slice_rows(0, n);
  if (plan_.contiguous) {  // one sequence over the identity table: the contiguous kernels at its start position
    Tensor pos = ws_.positions.slice_rows(0, 1);
    KP_RETURN_IF_ERROR(kernel::rope_kv_append(q, k, v, kc, vc, pos, ws_.cos_sin, c.head_dim, s));
    return kernel::attention(q, kc, vc, pos, nh, nkv, c.head_dim, ws_.scratch, att, s);
  }
  KP_RETURN_IF_ERROR(kernel::rope_at(q, k, ws_.positions.slice_rows(0, n), ws_.cos_sin, c.head_dim, s));
  KP_RETURN_IF_ERROR(kernel::kv_append_paged(k, v, kc, vc, ws_.slots.slice_rows(0, n), s));
  if (plan_.n_decode > 0) {
    Tensor qd = q.slice_rows(0, plan_.n_decode), od = att.slice_rows(0, plan_.n_decode);
    KP_RETURN_IF_ERROR(kernel::paged_decode_attention(qd, kc, vc, ws_.page_tables, ws_.seq_lens, ps, nh, nkv,
                                                      c.head_dim, ws_.scratch, od, s));
  }
  for (int32_t ch = 0; ch < plan_.n_chunks; ++ch) {
    const int32_t r0 = plan_.chunk_start[ch], r1 = r0 + plan_.chunk_len[ch];
    const int32_t table_row = plan_.n_decode + ch;
    Tensor qc = q.slice_rows(r0, r1), oc = att.slice_rows(r0, r1);
    KP_RETURN_IF_ERROR(kernel::paged_prefill_attention(qc, kc, vc, ws_.page_tables.slice_rows(table_row, table_row + 1),
                                                       ws_.chunk_pos.slice_rows(ch, ch + 1), ps, nh, nkv, c.head_dim,
                                                       ws_.scratch, oc, s));
  }
  return Status::Ok();
}

Status LlamaModel::attention_block(int layer) {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[layer];
  void* s = opts_.stream;
  const int32_t n = plan_.n_rows;
  Tensor xb = ws_.xb.slice_rows(0, n), att = ws_.att.slice_rows(0, n), proj = ws_.proj.slice_rows(0, n);
  Tensor q, k, v;
  if (n == 1) {  // one pass over the stacked weights (or over its parts, when their types differ)
    q = ws_.q1, k = ws_.k1, v = ws_.v1;
    if (!L.wqkv.weight().empty()) {
      KP_RETURN_IF_ERROR(L.wqkv.forward(xb, ws_.qkv1, s));
    } else {  // q, k and v of different types (a GGUF Q4_K_M file): wq and wk stacked, or none
      if (!L.wqk.weight().empty()) {
        KP_RETURN_IF_ERROR(L.wqk.forward(xb, ws_.qk1, s));
      } else {
        KP_RETURN_IF_ERROR(L.wq.forward(xb, q, s));
        KP_RETURN_IF_ERROR(L.wk.forward(xb, k, s));
      }
      KP_RETURN_IF_ERROR(L.wv.forward(xb, v, s));
    }
  } else {       // three GEMMs into contiguous q, k, v (B decode rows: one product each)
    q = ws_.q.slice_rows(0, n), k = ws_.k.slice_rows(0, n), v = ws_.v.slice_rows(0, n);
    KP_RETURN_IF_ERROR(L.wq.forward(xb, q, s));
    KP_RETURN_IF_ERROR(L.wk.forward(xb, k, s));
    KP_RETURN_IF_ERROR(L.wv.forward(xb, v, s));
  }
  KP_RETURN_IF_ERROR(attention(layer, q, k, v));
  // x += att Wo^T (summed over ranks); xb = rmsnorm(x) for the FFN.
  Tensor x = ws_.x.slice_rows(0, n);
  return L.wo.forward_into_residual(att, proj, x, L.ffn_norm, c.norm_eps, xb, s);
}

Status LlamaModel::ffn_block(int layer) {
  const LayerWeights& L = weights_.layers[layer];
  void* s = opts_.stream;
  const int32_t n = plan_.n_rows;
  Tensor xb = ws_.xb.slice_rows(0, n), proj = ws_.proj.slice_rows(0, n);
  Tensor gate;  // swiglu(gate, up), [n, hidden_local]
  if (n == 1) {  // one pass over the stacked weights, swiglu in the GEMV's epilogue on GPUs
    gate = ws_.g1;
    if (!L.w13.weight().empty()) {
      KP_RETURN_IF_ERROR(L.w13.forward_swiglu(xb, ws_.gu1, gate, s));
    } else {  // w1 and w3 of different types: not stacked
      KP_RETURN_IF_ERROR(L.w1.forward(xb, gate, s));
      KP_RETURN_IF_ERROR(L.w3.forward(xb, ws_.u1, s));
      KP_RETURN_IF_ERROR(kernel::swiglu(gate, ws_.u1, gate, s));
    }
  } else {
    gate = ws_.h1.slice_rows(0, n);
    Tensor up = ws_.h3.slice_rows(0, n);
    KP_RETURN_IF_ERROR(L.w1.forward(xb, gate, s));
    KP_RETURN_IF_ERROR(L.w3.forward(xb, up, s));
    KP_RETURN_IF_ERROR(kernel::swiglu(gate, up, gate, s));
  }
  // x += h W2^T (summed over ranks); xb = rmsnorm(x) with the next layer's norm (or the final one).
  Tensor x = ws_.x.slice_rows(0, n);
  const tensor::ConstTensor& next_norm = layer + 1 < layer_end_ ? weights_.layers[layer + 1].attention_norm : weights_.norm;
  return L.w2.forward_into_residual(gate, proj, x, next_norm, config_.norm_eps, xb, s);
}

// Logits of the rows that ask: their normed rows gathered (the embedding kernel is a row gather), this
// rank's slice of the vocabulary, gathered from every rank, widened to fp32, and their argmax, all on
// the device.
Status LlamaModel::classifier() {
  void* s = opts_.stream;
  const int32_t R = plan_.n_logits, n = plan_.n_rows;
  Tensor xl;
  if (plan_.contiguous) {  // one sequence: its last row, already in place
    xl = ws_.xb.slice_rows(n - 1, n);
  } else {
    xl = ws_.xl.slice_rows(0, R);
    KP_RETURN_IF_ERROR(kernel::embedding(ws_.logit_rows.slice_rows(0, R), ws_.xb.slice_rows(0, n), xl, s));
  }
  Tensor local = ws_.logits_local.slice_rows(0, R), all = ws_.logits_all.slice_rows(0, R);
  KP_RETURN_IF_ERROR(weights_.output.forward(xl, local, s));
  if (opts_.comm != nullptr) {
    if (R == 1 || opts_.world_size == 1) {
      KP_RETURN_IF_ERROR(opts_.comm->all_gather(local, all, s));
    } else {  // [world, R, vocab_local] -> [R, vocab]: each rank's block is a band of columns
      const int64_t vl = local.dim(1), world = opts_.world_size;
      Tensor ranks = ws_.logits_ranks.slice_rows(0, world * R);
      KP_RETURN_IF_ERROR(opts_.comm->all_gather(local, ranks, s));
      for (int64_t r = 0; r < world; ++r)
        KP_RETURN_IF_ERROR(copy_columns(ranks.slice_rows(r * R, (r + 1) * R), R, vl, all, all.dim(1), r * vl, s));
    }
  }
  Tensor f32 = ws_.logits_f32.slice_rows(0, R), next = ws_.next.slice_rows(0, R);
  if (all.dtype() != DType::kFp32) KP_RETURN_IF_ERROR(kernel::convert(all, f32, s));
  return kernel::argmax(f32, next, s);
}

Status LlamaModel::forward_device() {
  const ModelConfig& c = config_;
  void* s = opts_.stream;
  const int32_t n = plan_.n_rows;
  Tensor x = ws_.x.slice_rows(0, n), xb = ws_.xb.slice_rows(0, n);  // act [n, dim]
  if (first_stage_) KP_RETURN_IF_ERROR(kernel::embedding(ws_.tokens.slice_rows(0, n), weights_.tok_embeddings, x, s));
  else KP_RETURN_IF_ERROR(opts_.pipe->recv(x, opts_.pipe->rank() - 1, s));  // the previous stage's residual stream
  KP_RETURN_IF_ERROR(kernel::rmsnorm(x, weights_.layers[layer_begin_].attention_norm, c.norm_eps, xb, s));
  // Each block ends with its residual add fused with the norm that follows it.
  for (int l = layer_begin_; l < layer_end_; ++l) {
    KP_RETURN_IF_ERROR(attention_block(l));
    KP_RETURN_IF_ERROR(ffn_block(l));
  }
  if (!last_stage_) KP_RETURN_IF_ERROR(opts_.pipe->send(x, opts_.pipe->rank() + 1, s));
  const int32_t R = plan_.n_logits;
  if (R == 0) return Status::Ok();
  if (last_stage_) KP_RETURN_IF_ERROR(classifier());
  if (opts_.pipe == nullptr) return Status::Ok();
  // Every stage goes on with the last stage's result, a copy of the same bytes: the tokens (int32 [R])
  // when only they are asked for, else the fp32 logits [R, vocab], which every stage's sampler (same
  // seed) turns into the same tokens.
  const int last = opts_.pipe->world_size() - 1;
  Tensor next = ws_.next.slice_rows(0, R), logits = ws_.logits_f32.slice_rows(0, R);
  return pipe_logits_ ? opts_.pipe->broadcast(logits, last, s) : opts_.pipe->broadcast(next, last, s);
}

// The used part of each of the plan's arrays (on the CPU the kernels read the plan in place). The
// contiguous path reads only the tokens and the first position.
Status LlamaModel::upload_plan() {
  if (opts_.device == DeviceType::kCPU) return Status::Ok();
  void* s = opts_.stream;
  const StepPlan& p = plan_;
  auto put = [&](const int32_t* host, int64_t count, const Tensor& dev) -> Status {
    if (count == 0) return Status::Ok();
    return upload(host, (size_t)count * sizeof(int32_t), dev, s);
  };
  KP_RETURN_IF_ERROR(put(p.tokens, p.n_rows, ws_.tokens));
  if (p.contiguous) return put(p.positions, 1, ws_.positions);
  KP_RETURN_IF_ERROR(put(p.positions, p.n_rows, ws_.positions));
  KP_RETURN_IF_ERROR(put(p.slots, p.n_rows, ws_.slots));
  KP_RETURN_IF_ERROR(put(p.tables, (int64_t)(p.n_decode + p.n_chunks) * limits_.max_pages, ws_.page_tables));
  KP_RETURN_IF_ERROR(put(p.seq_lens, p.n_decode, ws_.seq_lens));
  KP_RETURN_IF_ERROR(put(p.chunk_pos, p.n_chunks, ws_.chunk_pos));
  return put(p.logit_rows, p.n_logits, ws_.logit_rows);
}

Status LlamaModel::run_plan() {
#ifdef KUIPER_WITH_CUDA
  // A decode step is the same kernels on the same buffers every time (positions, slots, tables and
  // lengths are read from device memory), so it is captured once per batch-size bucket and replayed:
  // one launch instead of hundreds.
  // With pipeline stages the step runs as plain launches (its send / receive / broadcast are not captured).
  if (opts_.device == DeviceType::kCUDA && opts_.cuda_graph && opts_.pipe == nullptr && plan_.n_chunks == 0 &&
      plan_.n_logits == plan_.n_seqs &&
      (plan_.contiguous ? plan_.n_rows == 1 : true)) {
    base::CudaGraph* graph = &staging_->graphs[0];
    if (!plan_.contiguous) {
      const int32_t bucket = bucket_for(plan_.n_decode, limits_.max_seqs);
      plan_.pad_decode(bucket);
      graph = &staging_->graphs[1 + bucket_index(bucket)];
    }
    KP_RETURN_IF_ERROR(upload_plan());
    cudaStream_t s = static_cast<cudaStream_t>(opts_.stream);
    if (!graph->ready()) {
      // The first step of a bucket runs normally (its results stand: replaying it would write the same
      // cache rows and logits again), which also creates any lazily made handles outside the capture.
      KP_RETURN_IF_ERROR(forward_device());
      return graph->capture(s, [&] { return forward_device(); });
    }
    return graph->launch(s);
  }
#endif
  KP_RETURN_IF_ERROR(upload_plan());
  return forward_device();
}

Status LlamaModel::fetch(const BatchSeq* seqs, const StepOutput& out) {
  if (plan_.n_logits == 0) return Status::Ok();
  void* s = opts_.stream;
  const size_t row_bytes = (size_t)config_.vocab_size * sizeof(float);
  bool want_next = false;
  for (int32_t i = 0; i < plan_.n_seqs; ++i) {
    if (plan_.out_row[i] < 0) continue;
    want_next = want_next || seqs[i].sample;
    if (!seqs[i].host_logits || out.logits == nullptr) continue;
    // Through pinned memory on GPUs: the copy is asynchronous and synchronize() waits for it (bounded,
    // through the communicator). A copy into the caller's pageable memory would block this thread
    // inside CUDA, out of the watchdog's reach, and with ranks sharing a GPU it stalled the others.
    float* dst = staging_->logits != nullptr ? staging_->logits + (size_t)plan_.out_row[i] * config_.vocab_size
                                             : out.logits + (size_t)i * config_.vocab_size;
    KP_RETURN_IF_ERROR(copy_to_host(ws_.logits_f32.slice_rows(plan_.out_row[i], plan_.out_row[i] + 1), dst,
                                    row_bytes, s));
  }
  if (want_next && out.next != nullptr)
    KP_RETURN_IF_ERROR(copy_to_host(ws_.next, staging_->next, plan_.n_logits * sizeof(int32_t), s));
  KP_RETURN_IF_ERROR(synchronize());
  for (int32_t i = 0; i < plan_.n_seqs; ++i) {
    const int32_t r = plan_.out_row[i];
    if (r < 0) continue;
    if (seqs[i].sample && out.next != nullptr) out.next[i] = staging_->next[r];
    if (seqs[i].host_logits && out.logits != nullptr && staging_->logits != nullptr)
      std::memcpy(out.logits + (size_t)i * config_.vocab_size, staging_->logits + (size_t)r * config_.vocab_size,
                  row_bytes);
  }
  return Status::Ok();
}

Status LlamaModel::step(const BatchSeq* seqs, int32_t n_seqs, const StepOutput& out) {
  // The previous step's uploads read the pinned plan asynchronously: a step that ended without waiting
  // (no logits) is waited for before its arrays are overwritten.
  if (unsynced_) KP_RETURN_IF_ERROR(synchronize());
  unsynced_ = false;
  KP_RETURN_IF_ERROR(plan_.build(seqs, n_seqs));
  pipe_logits_ = false;
  for (int32_t i = 0; i < n_seqs; ++i) pipe_logits_ = pipe_logits_ || seqs[i].host_logits;
  KP_RETURN_IF_ERROR(run_plan());
  unsynced_ = plan_.n_logits == 0 && opts_.device != DeviceType::kCPU;
  return fetch(seqs, out);
}

Status LlamaModel::single(const int32_t* tokens, int32_t n, int32_t pos, bool host_logits, const StepOutput& out) {
  BatchSeq seq;
  seq.tokens = tokens;
  seq.n = n;
  seq.pos = pos;
  seq.pages = identity_pages_.data();
  const int64_t need = pos >= 0 && n >= 0 ? ((int64_t)pos + n + limits_.page_size - 1) / limits_.page_size : 0;
  seq.n_pages = (int32_t)std::min<int64_t>(need, (int64_t)identity_pages_.size());
  seq.sample = out.next != nullptr;
  seq.host_logits = host_logits;
  return step(&seq, 1, out);
}

Status LlamaModel::forward(const int32_t* tokens, int32_t n, int32_t pos, float* logits) {
  StepOutput out;
  out.logits = logits;
  return single(tokens, n, pos, logits != nullptr, out);
}

Status LlamaModel::decode_greedy(int32_t token, int32_t pos, int32_t* next) {
  StepOutput out;
  out.next = next;
  return single(&token, 1, pos, false, out);
}

// With a communicator the wait is the communicator's: bounded, and it sees the other ranks' failures
// (a plain cudaStreamSynchronize would wait forever for a collective whose peer is gone).
Status LlamaModel::synchronize() const {
  if (opts_.comm != nullptr) return opts_.comm->wait(opts_.stream);
  if (opts_.pipe != nullptr) return opts_.pipe->wait(opts_.stream);
#ifdef KUIPER_WITH_CUDA
  if (opts_.device == DeviceType::kCUDA) CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(opts_.stream)));
#endif
  return Status::Ok();
}

Status LlamaModel::prefill(const std::vector<int32_t>& tokens, int32_t pos, float* logits) {
  if (tokens.empty()) return base::InvalidArgument("prefill of an empty prompt");
  const int32_t total = (int32_t)tokens.size();
  for (int32_t done = 0; done < total; done += max_batch_tokens_) {
    const int32_t n = std::min(max_batch_tokens_, total - done);
    const bool last = done + n == total;
    KP_RETURN_IF_ERROR(forward(tokens.data() + done, n, pos + done, last ? logits : nullptr));
  }
  return Status::Ok();
}

}  // namespace model
