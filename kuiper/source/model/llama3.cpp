// The Llama forward pass, for prefill (n tokens at once, matrix-matrix) and decode (n == 1).
//
//   x = embed(tokens);  xb = rmsnorm(x)
//   for each layer:                                         (per rank: its heads, its FFN units)
//     q, k, v = xb Wq^T, xb Wk^T, xb Wv^T;  rope(q, k)
//     append k, v to this layer's cache rows [pos, pos + n)
//     x += attention(q, cache) Wo^T;  xb = rmsnorm(x)        Wo row-parallel
//     x += (silu(xb W1^T) * xb W3^T) W2^T;  xb = rmsnorm(x)  W2 row-parallel; the next layer's norm
//   logits = xb[last] Wout^T                                  vocabulary split over ranks, then gathered
// A pipeline stage runs its layers only: x comes from the previous stage instead of the embedding,
// goes to the next one instead of the classifier, and the last stage's token (or logits) is broadcast
// back to every stage.
// A row-parallel layer's partial products are summed over ranks, added to x and normed in one call
// (MatmulLayer::forward_into_residual): one fused kernel where the communicator has one.
#include "model/llama3.h"

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
}  // namespace

// Host-side staging of what crosses between host and device each step, and the decode graph.
struct LlamaModel::Staging {
  int32_t* tokens = nullptr;  // [max_batch_tokens]
  int32_t* pos = nullptr;     // [1]
  int32_t* next = nullptr;    // [1]
  float* logits = nullptr;    // fp32 [vocab] (GPU only: the CPU copies straight to the caller)
  std::vector<int32_t> host;  // backing store on the CPU
#ifdef KUIPER_WITH_CUDA
  base::PinnedBuffer pinned;  // backing store on GPUs, so copies are asynchronous
  base::CudaGraph decode_graph[2];  // the decode step returning the logits [0] or the greedy token [1]
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
  m->max_batch_tokens_ = std::min(opts.max_batch_tokens, m->max_seq_len_);
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
  const int64_t q_local = (int64_t)weights_.n_heads_local * c.head_dim;
  const int64_t kv_local = (int64_t)weights_.n_kv_heads_local * c.head_dim;
  const int64_t vocab_local = c.vocab_size / opts_.world_size;

  KP_RETURN_IF_ERROR(
      kv_cache_.init({layer_end_ - layer_begin_, max_seq_len_, weights_.n_kv_heads_local, c.head_dim, act}, alloc_));

  struct Slot { Tensor* t; DType dtype; tensor::Shape shape; uint64_t offset; };
  std::vector<Slot> slots = {
      {&ws_.x, act, {T, c.dim}, 0},           {&ws_.xb, act, {T, c.dim}, 0},
      {&ws_.q, act, {T, q_local}, 0},         {&ws_.k, act, {T, kv_local}, 0},
      {&ws_.v, act, {T, kv_local}, 0},        {&ws_.att, act, {T, q_local}, 0},
      {&ws_.proj, act, {T, c.dim}, 0},        {&ws_.h1, act, {T, weights_.hidden_local}, 0},
      {&ws_.h3, act, {T, weights_.hidden_local}, 0},
      {&ws_.qkv1, act, {1, q_local + 2 * kv_local}, 0}, {&ws_.gu1, act, {1, 2 * (int64_t)weights_.hidden_local}, 0},
      {&ws_.logits_local, act, {1, vocab_local}, 0}, {&ws_.tokens, DType::kInt32, {T}, 0},
      {&ws_.pos, DType::kInt32, {1}, 0}, {&ws_.next, DType::kInt32, {1}, 0},
      {&ws_.scratch, DType::kFp32,
       {std::max<int64_t>(1, kernel::attention_scratch_floats(T, weights_.n_heads_local, c.head_dim, max_seq_len_,
                                                              opts_.device))},
       0},
      {&ws_.cos_sin, DType::kFp32, {max_seq_len_, c.head_dim / 2, 2}, 0},
  };
  if (opts_.comm != nullptr) slots.push_back({&ws_.logits_all, act, {1, c.vocab_size}, 0});
  if (act != DType::kFp32) slots.push_back({&ws_.logits_f32, DType::kFp32, {1, c.vocab_size}, 0});
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
  ws_.g1 = columns(ws_.gu1, 0, weights_.hidden_local);
  ws_.u1 = columns(ws_.gu1, weights_.hidden_local, weights_.hidden_local);
  if (opts_.comm == nullptr) ws_.logits_all = ws_.logits_local;
  if (act == DType::kFp32) ws_.logits_f32 = ws_.logits_all;
  ws_.bytes = total;

  const std::vector<float> table = rope_cos_sin_table(c, max_seq_len_);
  KP_RETURN_IF_ERROR(upload(table.data(), table.size() * sizeof(float), ws_.cos_sin, opts_.stream));

  staging_ = std::make_unique<Staging>();
  const size_t n_ints = (size_t)T + 2;
  int32_t* base_ptr = nullptr;
  if (opts_.device == DeviceType::kCPU) {
    staging_->host.resize(n_ints);
    base_ptr = staging_->host.data();
  } else {
#ifdef KUIPER_WITH_CUDA
    KP_RETURN_IF_ERROR(staging_->pinned.create(n_ints * sizeof(int32_t) + (size_t)c.vocab_size * sizeof(float)));
    base_ptr = static_cast<int32_t*>(staging_->pinned.data());
    staging_->logits = reinterpret_cast<float*>(base_ptr + n_ints);
    KP_RETURN_IF_ERROR(synchronize());
#endif
  }
  staging_->tokens = base_ptr;
  staging_->pos = base_ptr + T;
  staging_->next = base_ptr + T + 1;
  return Status::Ok();
}

Status LlamaModel::attention_block(int layer, int32_t n) {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[layer];
  void* s = opts_.stream;
  Tensor xb = ws_.xb.slice_rows(0, n), att = ws_.att.slice_rows(0, n), proj = ws_.proj.slice_rows(0, n);
  Tensor q, k, v;
  if (n == 1) {  // one pass over the stacked weights
    q = ws_.q1, k = ws_.k1, v = ws_.v1;
    KP_RETURN_IF_ERROR(L.wqkv.forward(xb, ws_.qkv1, s));
  } else {       // three GEMMs into contiguous q, k, v
    q = ws_.q.slice_rows(0, n), k = ws_.k.slice_rows(0, n), v = ws_.v.slice_rows(0, n);
    KP_RETURN_IF_ERROR(L.wq.forward(xb, q, s));
    KP_RETURN_IF_ERROR(L.wk.forward(xb, k, s));
    KP_RETURN_IF_ERROR(L.wv.forward(xb, v, s));
  }
  KP_RETURN_IF_ERROR(kernel::rope(q, k, ws_.pos, ws_.cos_sin, c.head_dim, s));
  Tensor kc = kv_cache_.key(layer - layer_begin_), vc = kv_cache_.value(layer - layer_begin_);  // this stage's
  KP_RETURN_IF_ERROR(kernel::kv_append(k, v, kc, vc, ws_.pos, s));
  KP_RETURN_IF_ERROR(kernel::attention(q, kc, vc, ws_.pos, weights_.n_heads_local, weights_.n_kv_heads_local,
                                       c.head_dim, ws_.scratch, att, s));
  // x += att Wo^T (summed over ranks); xb = rmsnorm(x) for the FFN.
  Tensor x = ws_.x.slice_rows(0, n);
  return L.wo.forward_into_residual(att, proj, x, L.ffn_norm, c.norm_eps, xb, s);
}

Status LlamaModel::ffn_block(int layer, int32_t n) {
  const LayerWeights& L = weights_.layers[layer];
  void* s = opts_.stream;
  Tensor xb = ws_.xb.slice_rows(0, n), proj = ws_.proj.slice_rows(0, n);
  Tensor gate, up;
  if (n == 1) {  // one pass over the stacked weights
    gate = ws_.g1, up = ws_.u1;
    KP_RETURN_IF_ERROR(L.w13.forward(xb, ws_.gu1, s));
  } else {
    gate = ws_.h1.slice_rows(0, n), up = ws_.h3.slice_rows(0, n);
    KP_RETURN_IF_ERROR(L.w1.forward(xb, gate, s));
    KP_RETURN_IF_ERROR(L.w3.forward(xb, up, s));
  }
  KP_RETURN_IF_ERROR(kernel::swiglu(gate, up, gate, s));
  // x += h W2^T (summed over ranks); xb = rmsnorm(x) with the next layer's norm (or the final one; on
  // a stage before the last that xb is not used: the next stage norms x itself).
  Tensor x = ws_.x.slice_rows(0, n);
  const tensor::ConstTensor& next_norm = layer + 1 < layer_end_ ? weights_.layers[layer + 1].attention_norm : weights_.norm;
  return L.w2.forward_into_residual(gate, proj, x, next_norm, config_.norm_eps, xb, s);
}

// Logits of the last token: this rank's slice of the vocabulary, gathered from every rank, widened to
// fp32, and their argmax, all on the device.
Status LlamaModel::classifier(int32_t n) {
  void* s = opts_.stream;
  // Only the last token's logits are needed: its normed row is already in xb.
  KP_RETURN_IF_ERROR(weights_.output.forward(ws_.xb.slice_rows(n - 1, n), ws_.logits_local, s));
  if (opts_.comm != nullptr) KP_RETURN_IF_ERROR(opts_.comm->all_gather(ws_.logits_local, ws_.logits_all, s));
  if (ws_.logits_all.dtype() != DType::kFp32) KP_RETURN_IF_ERROR(kernel::convert(ws_.logits_all, ws_.logits_f32, s));
  return kernel::argmax(ws_.logits_f32, ws_.next, s);
}

Status LlamaModel::forward_device(int32_t n, Output out) {
  const ModelConfig& c = config_;
  void* s = opts_.stream;
  Tensor x = ws_.x.slice_rows(0, n), xb = ws_.xb.slice_rows(0, n);  // act [n, dim]
  if (first_stage_) KP_RETURN_IF_ERROR(kernel::embedding(ws_.tokens.slice_rows(0, n), weights_.tok_embeddings, x, s));
  else KP_RETURN_IF_ERROR(opts_.pipe->recv(x, opts_.pipe->rank() - 1, s));  // the previous stage's residual stream
  KP_RETURN_IF_ERROR(kernel::rmsnorm(x, weights_.layers[layer_begin_].attention_norm, c.norm_eps, xb, s));
  // Each block ends with its residual add fused with the norm that follows it.
  for (int l = layer_begin_; l < layer_end_; ++l) {
    KP_RETURN_IF_ERROR(attention_block(l, n));
    KP_RETURN_IF_ERROR(ffn_block(l, n));
  }
  if (!last_stage_) KP_RETURN_IF_ERROR(opts_.pipe->send(x, opts_.pipe->rank() + 1, s));
  if (out == Output::kNone) return Status::Ok();
  if (last_stage_) KP_RETURN_IF_ERROR(classifier(n));
  if (opts_.pipe == nullptr) return Status::Ok();
  // Every stage goes on with the last stage's result, a copy of the same bytes: the token (int32 [1])
  // when decoding greedily, else the fp32 logits [1, vocab], which every stage's sampler (same seed)
  // turns into the same token.
  const int last = opts_.pipe->world_size() - 1;
  return out == Output::kToken ? opts_.pipe->broadcast(ws_.next, last, s) : opts_.pipe->broadcast(ws_.logits_f32, last, s);
}

Status LlamaModel::run_step(const int32_t* tokens, int32_t n, int32_t pos, Output out) {
  if (n < 1 || n > max_batch_tokens_) return base::InvalidArgument("forward: token count out of range");
  if (pos < 0 || pos + n > max_seq_len_)
    return base::InvalidArgument("context full: position " + std::to_string(pos + n) + " exceeds max_seq_len " +
                                 std::to_string(max_seq_len_));
  for (int32_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size)
      return base::InvalidArgument("token id " + std::to_string(tokens[i]) + " outside the vocabulary");
  void* s = opts_.stream;
  std::memcpy(staging_->tokens, tokens, n * sizeof(int32_t));
  *staging_->pos = pos;
  KP_RETURN_IF_ERROR(upload(staging_->tokens, n * sizeof(int32_t), ws_.tokens, s));
  KP_RETURN_IF_ERROR(upload(staging_->pos, sizeof(int32_t), ws_.pos, s));
#ifdef KUIPER_WITH_CUDA
  // The decode step is the same kernels on the same buffers every time (the position is read from
  // device memory), so it is captured once and replayed: one launch instead of hundreds.
  if (opts_.device == DeviceType::kCUDA && opts_.cuda_graph && n == 1 && out != Output::kNone) {
    // One graph per output (they differ only where a pipeline broadcasts the token or the logits).
    auto& graph = staging_->decode_graph[out == Output::kToken ? 1 : 0];
    if (!graph.ready()) {
      // The first step runs normally (its results stand: replaying it would write the same cache row
      // and logits again), which also creates any lazily made handles outside the capture.
      KP_RETURN_IF_ERROR(forward_device(1, out));
      return graph.capture(static_cast<cudaStream_t>(s), [&] { return forward_device(1, out); });
    }
    return graph.launch(static_cast<cudaStream_t>(s));
  }
#endif
  return forward_device(n, out);
}

Status LlamaModel::forward(const int32_t* tokens, int32_t n, int32_t pos, float* logits) {
  KP_RETURN_IF_ERROR(run_step(tokens, n, pos, logits != nullptr ? Output::kLogits : Output::kNone));
  if (logits == nullptr) return Status::Ok();
  const size_t bytes = (size_t)config_.vocab_size * sizeof(float);
  if (staging_->logits == nullptr) return copy_to_host(ws_.logits_f32, logits, bytes, opts_.stream);  // CPU
  // Through pinned memory: the copy is asynchronous and synchronize() waits for it (bounded, through
  // the communicator). A copy into the caller's pageable memory would block this thread inside CUDA,
  // out of the watchdog's reach, and with ranks sharing a GPU it stalled the other ranks' launches.
  KP_RETURN_IF_ERROR(copy_to_host(ws_.logits_f32, staging_->logits, bytes, opts_.stream));
  KP_RETURN_IF_ERROR(synchronize());
  std::memcpy(logits, staging_->logits, bytes);
  return Status::Ok();
}

Status LlamaModel::decode_greedy(int32_t token, int32_t pos, int32_t* next) {
  KP_RETURN_IF_ERROR(run_step(&token, 1, pos, Output::kToken));
  KP_RETURN_IF_ERROR(copy_to_host(ws_.next, staging_->next, sizeof(int32_t), opts_.stream));
  KP_RETURN_IF_ERROR(synchronize());
  *next = *staging_->next;
  return Status::Ok();
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
