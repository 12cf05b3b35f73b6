// LlamaWeights: this rank's share of the model's weights, loaded once from a ModelFile.
//
// The sharding plan lives here, in one place: every linear is tagged column- or row-parallel as it is
// loaded, and only this rank's rows (column-parallel) or columns (row-parallel) are read from the file.
// Sizes are divided once and checked; the forward pass never branches on tensor parallelism.
// A pipeline stage (ShardSpec::layer_begin / layer_end) reads only its layers' tensors.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "base/buffer.h"
#include "comm/communicator.h"
#include "model/model_file.h"
#include "op/matmul.h"
#include "tensor/tensor.h"

namespace model {

// Where and how this rank loads.
struct ShardSpec {
  base::DeviceType device = base::DeviceType::kCPU;
  int device_id = 0;
  int rank = 0;
  int world_size = 1;
  comm::Communicator* comm = nullptr;  // for row-parallel layers when world_size > 1
  // Pipeline stage: the layers [layer_begin, layer_end) only (layer_end 0: to the last layer). The
  // first stage also holds the embedding, the last the classifier (and the embedding when tied).
  int layer_begin = 0, layer_end = 0;
};

// Every weight is a read-only tensor (ConstTensor): on the CPU many are views of the read-only mapping
// of the model file itself, and nothing may write to any of them once loaded.
struct LayerWeights {
  tensor::ConstTensor attention_norm;  // fp32 [dim]
  tensor::ConstTensor ffn_norm;        // fp32 [dim]
  // wqkv and w13 are empty (no weight) when their parts differ in dtype (GGUF mixes block types):
  // decode then runs the parts one by one, wq and wk as wqk where only wv differs (Q4_K_M's Q6_K wv).
  op::MatmulLayer wqkv;           // column-parallel: [q_local + 2 kv_local, dim], wq / wk / wv stacked
  op::MatmulLayer wqk;            // column-parallel: [q_local + kv_local, dim], wq / wk stacked (wqkv empty)
  op::MatmulLayer wq;             //   rows of wqkv or wqk: [n_heads_local * head_dim, dim]
  op::MatmulLayer wk, wv;         //   rows of wqkv (wk: or wqk): [n_kv_heads_local * head_dim, dim]
  op::MatmulLayer wo;             // row-parallel:    [dim, n_heads_local * head_dim]
  op::MatmulLayer w13;            // column-parallel: [2 hidden_local, dim], w1 / w3 stacked
  op::MatmulLayer w1, w3;         //   rows of w13:   [hidden_local, dim] (gate, up)
  op::MatmulLayer w2;             // row-parallel:    [dim, hidden_local] (down)
};

struct LlamaWeights {
  tensor::ConstTensor tok_embeddings;  // [vocab, dim], replicated (a gather needs no sharding); first stage
  std::vector<LayerWeights> layers;    // [n_layers]; only [layer_begin, layer_end) are loaded
  tensor::ConstTensor norm;            // fp32 [dim], on every stage (each stage's last layer fuses a norm)
  op::MatmulLayer output;         // [vocab, dim] classifier (tok_embeddings when tied); last stage
  int layer_begin = 0, layer_end = 0;  // this stage's layers
  uint64_t bytes = 0;             // weight bytes this rank holds on its device

  // Local sizes after sharding.
  int n_heads_local = 0, n_kv_heads_local = 0, hidden_local = 0;

  // Loads this rank's shard. `progress(done_bytes, total_bytes)` is called after each tensor.
  static base::Status load(const ModelFile& file, const ShardSpec& spec, LlamaWeights* out,
                           const std::function<void(uint64_t, uint64_t)>& progress = nullptr);

 private:
  std::shared_ptr<base::Buffer> block_;  // the one allocation holding every copied weight
};

}  // namespace model
