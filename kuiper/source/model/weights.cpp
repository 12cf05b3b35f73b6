#include "model/weights.h"

#include <cmath>
#include <cstring>
#include <deque>
#include <string>

#include "op/kernels.h"

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>

#include "base/cuda_utils.h"
#endif

namespace model {

namespace {

using base::DeviceType;
using base::DType;
using base::Status;
using tensor::ConstTensor;
using tensor::Tensor;

constexpr uint64_t kAlign = 256;
uint64_t align_up(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// A tensor the loader fills: one or more pieces stacked along its rows. The loader writes through the
// weight block (a writable Buffer it owns); the weights it hands out are read-only views.
struct Dest {
  ConstTensor* tensor = nullptr;
  DType dtype = DType::kFp32;
  int64_t rows = 0, cols = 0;
  bool one_d = false;
  int pieces = 0;
  bool zero_copy = false;  // its one piece is used in place, from the mapping
  uint64_t offset = 0;  // in the weight block
  uint64_t bytes() const { return (uint64_t)rows * base::dtype_bytes(dtype, cols); }
  tensor::Shape shape() const { return one_d ? tensor::Shape{cols} : tensor::Shape{rows, cols}; }
};

// Rows [r0, r0 + nr) x columns [c0, c0 + nc) of a 2-D entry (1-D entries are one row), converted to
// the destination's dtype and written at its row `dst_row0`.
struct Piece {
  const TensorEntry* entry = nullptr;
  int64_t r0 = 0, nr = 0, c0 = 0, nc = 0;
  Dest* dest = nullptr;
  int64_t dst_row0 = 0;
  bool zero_copy = false;  // CPU, same dtype, whole rows, alone in its Dest: wrap the mapping
  DType dtype() const { return dest->dtype; }
  uint64_t bytes() const { return (uint64_t)nr * base::dtype_bytes(dest->dtype, nc); }
};

float load_float(const uint8_t* p, DType t) {
  uint16_t h;
  switch (t) {
    case DType::kFp32: { float f; std::memcpy(&f, p, 4); return f; }
    case DType::kFp16: std::memcpy(&h, p, 2); return base::half_to_float(h);
    case DType::kBf16: std::memcpy(&h, p, 2); return base::bf16_to_float(h);
    default: return 0.f;
  }
}

// Copies a piece from the mapping into host memory `dst` (same dtype, or float dtypes widened to fp32).
// Block types are copied as bytes: the planner made c0 and nc whole blocks.
void copy_piece_host(const ModelFile& f, const Piece& p, uint8_t* dst) {
  const TensorEntry& e = *p.entry;
  const int64_t cols = e.shape.size() == 2 ? e.shape[1] : e.shape[0];
  const size_t src_es = base::dtype_size(e.dtype);
  const uint64_t src_row = base::dtype_bytes(e.dtype, cols), dst_row = base::dtype_bytes(p.dtype(), p.nc);
  const uint8_t* src = static_cast<const uint8_t*>(f.data(e));
  for (int64_t r = 0; r < p.nr; ++r) {
    const uint8_t* s = src + (p.r0 + r) * src_row + base::dtype_bytes(e.dtype, p.c0);
    uint8_t* d = dst + r * dst_row;
    if (e.dtype == p.dtype()) {
      std::memcpy(d, s, dst_row);
    } else {
      float* df = reinterpret_cast<float*>(d);
      for (int64_t c = 0; c < p.nc; ++c) df[c] = load_float(s + c * src_es, e.dtype);
    }
  }
}

Status copy_piece_device(const ModelFile& f, const Piece& p, uint8_t* dst, int device_id) {
#ifdef KUIPER_WITH_CUDA
  const TensorEntry& e = *p.entry;
  const int64_t cols = e.shape.size() == 2 ? e.shape[1] : e.shape[0];
  const uint64_t src_row = base::dtype_bytes(e.dtype, cols), dst_row = base::dtype_bytes(e.dtype, p.nc);
  const uint8_t* src = static_cast<const uint8_t*>(f.data(e)) + p.r0 * src_row + base::dtype_bytes(e.dtype, p.c0);
  CUDA_CHECK(cudaSetDevice(device_id));
  // Straight from the mmapped file: a strided 2-D copy when only some columns are ours.
  CUDA_CHECK(cudaMemcpy2D(dst, dst_row, src, src_row, dst_row, p.nr, cudaMemcpyHostToDevice));
  return Status::Ok();
#else
  (void)f; (void)p; (void)dst; (void)device_id;
  return base::Unsupported("this build has no CUDA support");
#endif
}

class Planner {
 public:
  Planner(const ModelFile& f, const ShardSpec& s) : file_(f), spec_(s) {}

  // Whole tensor, replicated on every rank.
  Status whole(const std::string& name, std::vector<int64_t> shape, ConstTensor* dst, bool norm = false) {
    const TensorEntry* e;
    KP_RETURN_IF_ERROR(file_.get(name, shape, &e));
    const int64_t rows = shape.size() == 2 ? shape[0] : 1;
    return add(e, 0, rows, 0, shape.back(), new_dest(dst, shape.size() == 1), 0, norm);
  }

  // Starts a stack: the column-parallel linears added until end_stack() share one weight tensor `w`
  // (and `s` for int8 scales), their shards one after another along the output rows.
  void begin_stack(ConstTensor* w, ConstTensor* s) {
    stack_w_ = new_dest(w, false);
    stack_s_ = new_dest(s, false);
  }
  void end_stack() { stack_w_ = stack_s_ = nullptr; }

  // A linear layer's shard: rows (column-parallel) or columns (row-parallel) of this rank.
  // `rows` overrides the row range of a column-parallel shard (replicated KV heads). Inside a stack,
  // *row0 receives the first row of this layer in the stacked tensor.
  Status linear(const std::string& name, int64_t out, int64_t in, op::TpMode mode, op::MatmulLayer* layer,
                ConstTensor* w, ConstTensor* s, std::pair<int64_t, int64_t> rows = {-1, -1}, int64_t* row0 = nullptr) {
    const TensorEntry* e;
    KP_RETURN_IF_ERROR(file_.get(name, {out, in}, &e));
    const int world = mode == op::TpMode::kReplicated ? 1 : spec_.world_size;
    int64_t r_len = mode == op::TpMode::kColumn ? out / world : out;
    const int64_t c_len = mode == op::TpMode::kRow ? in / world : in;
    int64_t r0 = mode == op::TpMode::kColumn ? spec_.rank * r_len : 0;
    if (rows.first >= 0) r0 = rows.first, r_len = rows.second;
    const int64_t c0 = mode == op::TpMode::kRow ? spec_.rank * c_len : 0;
    // A row-parallel shard of a block type must be whole quantization blocks.
    const int64_t block = base::dtype_block_elems(e->dtype);
    if (c_len % block != 0)
      return base::InvalidArgument("--tp " + std::to_string(world) + " would split the " + base::dtype_name(e->dtype) +
                                   " blocks of " + name + " in " + file_.path() + ": " + std::to_string(in) +
                                   " inputs per row / " + std::to_string(world) + " = " + std::to_string(c_len) +
                                   " is not a multiple of " + std::to_string(block));
    layer->set_tp_config({mode, spec_.rank, world, spec_.comm});
    Dest* wd = stack_w_ ? stack_w_ : new_dest(w, false);
    if (row0) *row0 = wd->rows;
    KP_RETURN_IF_ERROR(add(e, r0, r_len, c0, c_len, wd, wd->rows, false));
    if (e->dtype == DType::kInt8) {
      const int64_t g = file_.config().group_size;
      const TensorEntry* se;
      KP_RETURN_IF_ERROR(file_.get(name + ".scales", {out, in / g}, &se));
      if (se->dtype != DType::kFp32) return base::BadModelFile(file_.path() + ": " + name + ".scales must be fp32");
      Dest* sd = stack_s_ ? stack_s_ : new_dest(s, false);
      KP_RETURN_IF_ERROR(add(se, r0, r_len, c0 / g, c_len / g, sd, sd->rows, true));
    }
    return Status::Ok();
  }

  // Assigns offsets, allocates the one block, copies. Tensors are views of it (or of the mapping).
  Status execute(std::shared_ptr<base::Buffer>* block, uint64_t* device_bytes,
                 const std::function<void(uint64_t, uint64_t)>& progress) {
    mark_zero_copy();
    uint64_t total = 0;
    for (Dest& d : dests_) {
      if (d.zero_copy) continue;
      d.offset = total;
      total += align_up(d.bytes());
    }
    base::DeviceAllocator* alloc = spec_.device == DeviceType::kCPU
                                       ? static_cast<base::DeviceAllocator*>(base::CPUAllocator::get())
                                       : base::CUDAAllocator::get(spec_.device_id);
    if (total > 0) {
      Status st = base::Buffer::create(alloc, total, block);
      if (st.code() == base::StatusCode::kOutOfMemory) return base::OutOfMemory(does_not_fit(total, *alloc));
      if (!st.ok()) return st;
    }
    for (Dest& d : dests_) {
      if (d.rows == 0 || d.zero_copy) continue;  // an empty stack (float weights have no scales)
      *d.tensor = Tensor::from_buffer(*block, d.offset, d.dtype, d.shape());
    }
#ifdef KUIPER_WITH_CUDA
    if (spec_.device == DeviceType::kCUDA) CUDA_CHECK(cudaSetDevice(spec_.device_id));
#endif
    uint64_t done = 0, all = 0;
    for (const Piece& p : pieces_) all += p.bytes();
    for (const Piece& p : pieces_) {
      const Dest& d = *p.dest;
      if (file_.is_synthetic()) {
        // Random values made where the tensor lives: a 70B-shaped model needs no file and no host copy.
        const Tensor whole = Tensor::from_buffer(*block, d.offset, d.dtype, d.shape());  // writable, the loader's
        Tensor part = d.one_d ? whole : whole.slice_rows(p.dst_row0, p.dst_row0 + p.nr);
        const float scale = d.one_d ? 1.f : 1.f / std::sqrt((float)p.entry->shape.back());
        KP_RETURN_IF_ERROR(kernel::fill_random(part, 0x5eed + (uint64_t)(&p - pieces_.data()), scale, nullptr));
      } else if (p.zero_copy) {
        const TensorEntry& e = *p.entry;
        // The mapping is read-only (PROT_READ): it is wrapped as a const Buffer, so no writable view exists.
        auto view = base::Buffer::wrap_read_only(file_.data(e), e.nbytes, DeviceType::kCPU, 0, file_.keepalive());
        *d.tensor = ConstTensor::from_buffer(view, (size_t)(p.r0 * base::dtype_bytes(e.dtype, d.cols)), d.dtype,
                                             d.shape());
      } else {
        uint8_t* dst = static_cast<uint8_t*>((*block)->data()) + d.offset +
                       (uint64_t)p.dst_row0 * base::dtype_bytes(d.dtype, d.cols);
        if (spec_.device == DeviceType::kCPU) copy_piece_host(file_, p, dst);
        else KP_RETURN_IF_ERROR(copy_piece_device(file_, p, dst, spec_.device_id));
        // The copy is what is used from now on: let go of the file pages it was read from, so that
        // they do not stay in this process's memory beside it.
        file_.release_pages(*p.entry);
      }
      done += p.bytes();
      if (progress) progress(done, all);
    }
    *device_bytes = all;
#ifdef KUIPER_WITH_CUDA
    if (file_.is_synthetic() && spec_.device == DeviceType::kCUDA) CUDA_CHECK(cudaDeviceSynchronize());
#endif
    return Status::Ok();
  }

 private:
  // The one line for weights that do not fit: what they need, what the device has, what to change.
  std::string does_not_fit(uint64_t bytes, const base::DeviceAllocator& alloc) const {
    const std::string what = spec_.world_size > 1 ? "rank " + std::to_string(spec_.rank) + "'s share (1/" +
                                                        std::to_string(spec_.world_size) + ") of the model weights needs "
                                                  : "the model weights need ";
    const std::string advice = alloc.device_type() == DeviceType::kCUDA ? "use more --tp ranks or an int8 export"
                                                                        : "use an int8 export";
    return what + base::format_size(bytes) + " " + base::memory_report(alloc) + "; " + advice;
  }

  Dest* new_dest(ConstTensor* t, bool one_d) {
    dests_.push_back(Dest{t});
    dests_.back().one_d = one_d;
    return &dests_.back();
  }

  Status add(const TensorEntry* e, int64_t r0, int64_t nr, int64_t c0, int64_t nc, Dest* d, int64_t dst_row0,
             bool keep_fp32) {
    if (keep_fp32 && e->dtype != DType::kFp32)
      return base::BadModelFile(file_.path() + ": " + e->name + " must be fp32");
    // Weights keep the file's dtype on every device: the CPU kernels widen fp16 / bf16 as they read
    // them, so a model takes about its file size in RAM (widened once at load, fp16 took twice that).
    const DType dtype = e->dtype;
    if (d->rows == 0) {
      d->dtype = dtype;
      d->cols = nc;
    } else if (d->dtype != dtype || d->cols != nc) {
      return base::BadModelFile(file_.path() + ": " + e->name + " cannot be stacked with the tensors before it");
    }
    d->rows += nr;
    ++d->pieces;
    Piece p{e, r0, nr, c0, nc, d, dst_row0};
    pieces_.push_back(p);
    return Status::Ok();
  }

  // Pieces alone in their destination, whole rows, same dtype on the CPU: no copy (the mapping is used).
  void mark_zero_copy() {
    for (Piece& p : pieces_) {
      const int64_t cols = p.entry->shape.size() == 2 ? p.entry->shape[1] : p.entry->shape[0];
      p.zero_copy = !file_.is_synthetic() && spec_.device == DeviceType::kCPU && p.dest->pieces == 1 &&
                    p.dtype() == p.entry->dtype && p.c0 == 0 && p.nc == cols &&
                    (p.entry->offset + p.r0 * base::dtype_bytes(p.entry->dtype, cols)) % 64 == 0;
      p.dest->zero_copy = p.zero_copy;
    }
  }

  const ModelFile& file_;
  const ShardSpec& spec_;
  std::deque<Dest> dests_;  // stable addresses: pieces point at them
  std::vector<Piece> pieces_;
  Dest* stack_w_ = nullptr;
  Dest* stack_s_ = nullptr;
};

Status divisible(const ModelFile& f, const char* what, int64_t n, int world) {
  if (n % world == 0) return Status::Ok();
  return base::InvalidArgument("--tp " + std::to_string(world) + " does not divide " + what + " (" +
                               std::to_string(n) + ") of " + f.path());
}

}  // namespace

Status LlamaWeights::load(const ModelFile& file, const ShardSpec& spec, LlamaWeights* out,
                          const std::function<void(uint64_t, uint64_t)>& progress) {
  const ModelConfig& c = file.config();
  const int w = spec.world_size;
  if (w < 1 || spec.rank < 0 || spec.rank >= w) return base::InvalidArgument("bad tensor-parallel rank");
  KP_RETURN_IF_ERROR(divisible(file, "the query heads", c.n_heads, w));
  // More ranks than KV heads: each KV head is replicated on world / n_kv_heads ranks (as large
  // deployments do), provided every rank's query heads share one KV head.
  const bool replicate_kv = w > c.n_kv_heads;
  if (replicate_kv) {
    if (w % c.n_kv_heads != 0)
      return base::InvalidArgument("--tp " + std::to_string(w) + " is neither a divisor nor a multiple of the " +
                                   std::to_string(c.n_kv_heads) + " key/value heads of " + file.path());
  } else {
    KP_RETURN_IF_ERROR(divisible(file, "the key/value heads", c.n_kv_heads, w));
  }
  KP_RETURN_IF_ERROR(divisible(file, "the FFN width", c.hidden_dim, w));
  KP_RETURN_IF_ERROR(divisible(file, "the vocabulary", c.vocab_size, w));
  if (c.weight_dtype == DType::kInt8) {
    if ((c.hidden_dim / w) % c.group_size || (c.q_dim() / w) % c.group_size)
      return base::InvalidArgument("--tp " + std::to_string(w) + " splits the int8 scale groups of " + file.path());
  }
  LlamaWeights& W = *out;
  W.n_heads_local = c.n_heads / w;
  W.n_kv_heads_local = replicate_kv ? 1 : c.n_kv_heads / w;
  // Rows of wk / wv this rank reads: its KV heads, or the one KV head its query heads use.
  const int64_t kv_rows = (int64_t)W.n_kv_heads_local * c.head_dim;
  const int64_t kv_row0 = replicate_kv ? (int64_t)(spec.rank * W.n_heads_local / (c.n_heads / c.n_kv_heads)) * c.head_dim
                                       : spec.rank * kv_rows;
  W.hidden_local = c.hidden_dim / w;
  W.layers.assign(c.n_layers, LayerWeights{});
  W.layer_begin = spec.layer_begin;
  W.layer_end = spec.layer_end > 0 ? spec.layer_end : c.n_layers;
  if (W.layer_begin < 0 || W.layer_begin >= W.layer_end || W.layer_end > c.n_layers)
    return base::InvalidArgument("pipeline stage: layers [" + std::to_string(W.layer_begin) + ", " +
                                 std::to_string(W.layer_end) + ") are not a range of the " +
                                 std::to_string(c.n_layers) + " layers of " + file.path());
  const bool first = W.layer_begin == 0, last = W.layer_end == c.n_layers;

  const int64_t D = c.dim, F = c.hidden_dim, Q = c.q_dim(), KV = c.kv_dim(), V = c.vocab_size;
  using op::TpMode;
  Planner plan(file, spec);
  if (first || (last && c.tied_embeddings)) KP_RETURN_IF_ERROR(plan.whole("tok_embeddings", {V, D}, &W.tok_embeddings));
  // Each linear's weight (and int8 scales) until set_weight after loading. A stacked linear (wq, wk,
  // wv in wqkv, or wq, wk in wqk; w1, w3 in w13) is the rows [row0, row0 + rows) of its stack's tensors.
  struct Lin { op::MatmulLayer* layer; ConstTensor w, s; Lin* stack; int64_t row0, rows; };
  std::deque<Lin> lins;
  Lin* stack = nullptr;
  auto linear = [&](const std::string& name, int64_t o, int64_t i, TpMode mode, op::MatmulLayer* layer,
                    std::pair<int64_t, int64_t> rows = {-1, -1}) {
    *layer = op::MatmulLayer(name);
    lins.push_back({layer, {}, {}, stack, 0, 0});
    Lin& lin = lins.back();
    KP_RETURN_IF_ERROR(plan.linear(name, o, i, mode, layer, &lin.w, &lin.s, rows, &lin.row0));
    lin.rows = rows.first >= 0 ? rows.second : o / (mode == TpMode::kColumn ? w : 1);
    return Status::Ok();
  };
  // Column-parallel linears reading the same input, stacked so that decode runs them as one
  // matrix-vector product (one pass over the weights, one launch instead of several).
  auto begin_stack = [&](const std::string& name, op::MatmulLayer* fused) {
    *fused = op::MatmulLayer(name);
    fused->set_tp_config({TpMode::kColumn, spec.rank, w, spec.comm});
    lins.push_back({fused, {}, {}, nullptr, 0, 0});
    stack = &lins.back();
    plan.begin_stack(&stack->w, &stack->s);
  };
  auto end_stack = [&] {
    plan.end_stack();
    stack = nullptr;
  };
  // Linears of different dtypes (a GGUF Q4_K_M file mixes Q4_K and Q6_K) are not stacked: decode
  // then runs them one by one (wq and wk still as wqk when only wv differs), and the fused layer
  // stays empty.
  auto same_dtype = [&](std::initializer_list<std::string> names) {
    const TensorEntry* first = nullptr;
    for (const std::string& n : names) {
      const TensorEntry* e = file.find(n);
      if (e == nullptr) return true;  // reported as missing when it is loaded
      if (first != nullptr && e->dtype != first->dtype) return false;
      first = e;
    }
    return true;
  };
  for (int l = W.layer_begin; l < W.layer_end; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerWeights& L = W.layers[l];
    KP_RETURN_IF_ERROR(plan.whole(p + "attention_norm", {D}, &L.attention_norm, true));
    const bool fuse_qkv = same_dtype({p + "wq", p + "wk", p + "wv"});
    const bool fuse_qk = !fuse_qkv && same_dtype({p + "wq", p + "wk"});
    if (fuse_qkv) begin_stack(p + "wqkv", &L.wqkv);
    if (fuse_qk) begin_stack(p + "wqk", &L.wqk);
    KP_RETURN_IF_ERROR(linear(p + "wq", Q, D, TpMode::kColumn, &L.wq));
    KP_RETURN_IF_ERROR(linear(p + "wk", KV, D, TpMode::kColumn, &L.wk, {kv_row0, kv_rows}));
    if (fuse_qk) end_stack();
    KP_RETURN_IF_ERROR(linear(p + "wv", KV, D, TpMode::kColumn, &L.wv, {kv_row0, kv_rows}));
    if (fuse_qkv) end_stack();
    KP_RETURN_IF_ERROR(linear(p + "wo", D, Q, TpMode::kRow, &L.wo));
    KP_RETURN_IF_ERROR(plan.whole(p + "ffn_norm", {D}, &L.ffn_norm, true));
    const bool fuse_13 = same_dtype({p + "w1", p + "w3"});
    if (fuse_13) begin_stack(p + "w13", &L.w13);
    KP_RETURN_IF_ERROR(linear(p + "w1", F, D, TpMode::kColumn, &L.w1));
    KP_RETURN_IF_ERROR(linear(p + "w3", F, D, TpMode::kColumn, &L.w3));
    if (fuse_13) end_stack();
    KP_RETURN_IF_ERROR(linear(p + "w2", D, F, TpMode::kRow, &L.w2));
  }
  KP_RETURN_IF_ERROR(plan.whole("norm", {D}, &W.norm, true));
  if (last && !c.tied_embeddings) KP_RETURN_IF_ERROR(linear("output", V, D, TpMode::kColumn, &W.output));
  KP_RETURN_IF_ERROR(plan.execute(&W.block_, &W.bytes, progress));

  for (Lin& lin : lins) {
    if (lin.stack != nullptr) {
      const ConstTensor& sw = lin.stack->w;
      const ConstTensor& ss = lin.stack->s;
      lin.w = sw.slice_rows(lin.row0, lin.row0 + lin.rows);
      if (!ss.empty()) lin.s = ss.slice_rows(lin.row0, lin.row0 + lin.rows);
    }
    KP_RETURN_IF_ERROR(lin.layer->set_weight(lin.w, lin.s, c.group_size));
  }
  if (last && c.tied_embeddings) {
    // The classifier is the embedding table; each rank uses its rows of the vocabulary.
    W.output = op::MatmulLayer("output");
    W.output.set_tp_config({TpMode::kColumn, spec.rank, w, spec.comm});
    KP_RETURN_IF_ERROR(W.output.set_weight(W.tok_embeddings.slice_rows(spec.rank * (V / w), (spec.rank + 1) * (V / w)),
                                           ConstTensor(), 0));
  }
  return Status::Ok();
}

}  // namespace model
