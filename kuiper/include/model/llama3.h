// LlamaModel: the Llama family (Llama 2, Llama 3 / 3.1 / 3.2, TinyLlama, Code Llama) on one device,
// as one tensor-parallel rank of one pipeline stage (by default the only stage: every layer).
//
// A pipeline stage runs the layers [layer_begin, layer_end): the first stage embeds the tokens, each
// later one receives the hidden state from the one before (ModelOptions::pipe), and the last runs
// the final norm and the classifier, then broadcasts what leaves the step (the greedy token, or the
// logits when sampling) to every stage, so every process continues with the same token.
//
// The model wires parts together and owns none of their logic:
//   LlamaWeights     - this rank's weights (model/weights.h), sharded as they load
//   KVCacheManager   - the K/V cache of every layer in one block of pages (model/kv_cache.h)
//   Workspace        - every activation, allocated once in init_mem() (below)
//   StepPlan         - a batch of sequences as the flat arrays the kernels read (model/batch.h)
// After init_mem() nothing allocates: a step only runs kernels on these buffers.
//
// One forward step runs a batch (step()): several sequences, each with its tokens, positions and
// page table; decode rows share one matrix product per linear layer, prefill chunks ride along. The
// single-sequence calls (forward, decode_greedy, prefill) are a batch of one over the identity page
// table, which is the contiguous cache: they own the whole cache and are not mixed with step() callers
// that hand out pages.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "base/buffer.h"
#include "comm/communicator.h"
#include "model/batch.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/model_file.h"
#include "model/weights.h"
#include "tensor/tensor.h"

namespace model {

struct ModelOptions {
  base::DeviceType device = base::DeviceType::kCPU;
  int device_id = 0;
  base::DType act_dtype = base::DType::kFp32;  // activations and KV cache (fp32 on the CPU)
  int32_t max_seq_len = 0;                      // 0: the model's own
  int32_t max_batch_tokens = 256;               // tokens per step (prefill of longer prompts is chunked)
  int32_t max_batch_seqs = 1;                   // sequences per step (the server's parallel streams)
  int32_t kv_capacity = 0;                      // KV cache token rows (0: max_seq_len in whole pages, one sequence)
  int32_t page_size = 16;                       // tokens per KV page
  int rank = 0;
  int world_size = 1;
  comm::Communicator* comm = nullptr;           // collectives; null with one rank unless forced (TpRunner)
  // Pipeline stage: layers [layer_begin, layer_end) (0, 0: all, one stage). `pipe` ranks the stages of
  // this rank's pipeline column (rank = stage): send / recv of the hidden state, broadcast from the last.
  int layer_begin = 0, layer_end = 0;
  comm::Communicator* pipe = nullptr;
  void* stream = nullptr;                       // cudaStream_t for this rank's compute (GPU)
  bool cuda_graph = true;                       // capture the decode step once, replay it (GPU)
  // TpRunner: give a single rank a one-rank communicator anyway, so that the collectives (NCCL on a
  // GPU) run in the model and inside its decode graph; for tests on one GPU.
  bool collectives_at_one_rank = false;
  std::function<void(uint64_t, uint64_t)> load_progress;
};

// Every activation of one forward call, views of one allocation. T = max_batch_tokens, S = max_batch_seqs.
struct Workspace {
  tensor::Tensor x;        // act [T, dim]        residual stream
  tensor::Tensor xb;       // act [T, dim]        normed input of a sublayer
  tensor::Tensor q;        // act [T, q_local]
  tensor::Tensor k, v;     // act [T, kv_local]
  tensor::Tensor att;      // act [T, q_local]    attention output, input of wo
  tensor::Tensor proj;     // act [T, dim]        output of wo / w2 (summed over ranks)
  tensor::Tensor h1, h3;   // act [T, hidden_local] gate and up projections; h1 then holds swiglu
  // Decode (one token) runs the stacked wqkv and w13 as one product each; q1 / k1 / v1 and g1 / u1
  // are views of their one-row outputs.
  tensor::Tensor qkv1;     // act [1, q_local + 2 kv_local]
  tensor::Tensor q1, k1, v1;
  tensor::Tensor qk1;      // act [1, q_local + kv_local]  q1 and k1 (the output of wqk)
  tensor::Tensor gu1;      // act [1, 2 hidden_local]
  tensor::Tensor g1, u1;
  tensor::Tensor xl;            // act [S, dim]        normed rows of the tokens whose logits are wanted
  tensor::Tensor logits_local;  // act [S, vocab_local]
  tensor::Tensor logits_ranks;  // act [world, S, vocab_local] all-gathered (with a communicator and S > 1)
  tensor::Tensor logits_all;    // act [S, vocab]  over ranks (a view of logits_local when world 1)
  tensor::Tensor logits_f32;    // fp32 [S, vocab] (a view of logits_all when activations are fp32)
  tensor::Tensor next;     // int32 [S]           argmax of the logits, computed on the device
  // The step's int32 arrays, one block uploaded from the StepPlan (model/batch.h), same layout.
  tensor::Tensor step_ints;   // int32 [StepPlan::ints]
  tensor::Tensor tokens;      // int32 [T]
  tensor::Tensor positions;   // int32 [T]           position of each row (positions[0]: the contiguous path's pos)
  tensor::Tensor slots;       // int32 [T]           KV cache slot of each row
  tensor::Tensor page_tables; // int32 [S, max_pages]
  tensor::Tensor seq_lens;    // int32 [S]
  tensor::Tensor chunk_pos;   // int32 [S]
  tensor::Tensor logit_rows;  // int32 [S]
  tensor::Tensor scratch;  // fp32 attention scratch
  tensor::Tensor cos_sin;  // fp32 [max_seq_len, head_dim / 2, 2] RoPE table (constant)
  uint64_t bytes = 0;
};

class LlamaModel {
 public:
  // Loads the weights of this rank and allocates the KV cache and workspace.
  static base::Status create(const ModelFile& file, const ModelOptions& opts, std::unique_ptr<LlamaModel>* out);

  // One step of a batch (model/batch.h): every sequence's tokens through the model, their K/V into their
  // pages, and for each sequence that asks, the greedy next token and / or the fp32 logits into `out`
  // (host). Decode-only steps replay a CUDA graph captured for their batch-size bucket.
  base::Status step(const BatchSeq* seqs, int32_t n_seqs, const StepOutput& out);

  // Runs `n` tokens at positions [pos, pos + n) (n <= max_batch_tokens, pos + n <= max_seq_len) and,
  // when `logits` is given, writes the fp32 logits of the last token to it (host, vocab_size floats).
  base::Status forward(const int32_t* tokens, int32_t n, int32_t pos, float* logits);

  // Decodes one token at `pos` and returns the greedy next token. On GPUs the argmax runs on the device
  // and only the token id crosses to the host; the step is one CUDA graph replay when enabled.
  base::Status decode_greedy(int32_t token, int32_t pos, int32_t* next);

  // Prefill of a whole prompt in chunks of max_batch_tokens; logits of the last token as in forward().
  base::Status prefill(const std::vector<int32_t>& tokens, int32_t pos, float* logits);

  const ModelConfig& config() const { return config_; }
  int32_t max_seq_len() const { return max_seq_len_; }
  int32_t max_batch_tokens() const { return max_batch_tokens_; }
  int32_t max_batch_seqs() const { return limits_.max_seqs; }
  const StepLimits& step_limits() const { return limits_; }
  const KVCacheManager& kv_cache() const { return kv_cache_; }
  // The page accounting of the cache, for the scheduler that hands out pages to step() callers.
  PageAllocator& kv_cache_pages() { return kv_cache_.pages(); }
  const LlamaWeights& weights() const { return weights_; }
  const Workspace& workspace() const { return ws_; }
  base::DeviceAllocator* allocator() const { return alloc_; }
  void* stream() const { return opts_.stream; }  // this rank's compute stream (null on the CPU)
  // Waits for the work queued on the stream (no-op on the CPU); through the communicator when there
  // is one, so that the wait is bounded and fails when another rank failed.
  base::Status synchronize() const;

 private:
  LlamaModel();
  base::Status init_mem();
  // Uploads the plan's arrays, then runs the step (from a graph when it applies).
  base::Status run_plan();
  base::Status upload_plan();
  // Every kernel of the planned step, queued on the stream with no host synchronisation (graph-capturable).
  base::Status forward_device();
  base::Status attention_block(int layer);
  base::Status attention(int layer, tensor::Tensor& q, tensor::Tensor& k, tensor::Tensor& v);
  base::Status ffn_block(int layer);
  base::Status classifier();
  // Copies the step's results to `out` for the sequences that asked.
  base::Status fetch(const BatchSeq* seqs, const StepOutput& out);
  // The batch of one of forward() / decode_greedy() over the identity table.
  base::Status single(const int32_t* tokens, int32_t n, int32_t pos, bool host_logits, const StepOutput& out);

  ModelConfig config_;
  ModelOptions opts_;
  int32_t max_seq_len_ = 0;
  int32_t max_batch_tokens_ = 0;
  StepLimits limits_;
  StepPlan plan_;
  std::vector<int32_t> identity_pages_;  // 0, 1, 2, ...: the single-sequence table
  bool unsynced_ = false;                 // the last step's uploads may still be reading the plan
  int layer_begin_ = 0, layer_end_ = 0;  // this stage's layers
  bool first_stage_ = true, last_stage_ = true;
  bool pipe_logits_ = false;              // pipeline stages: the step broadcasts the logits (else the tokens)
  base::DeviceAllocator* alloc_ = nullptr;
  LlamaWeights weights_;
  KVCacheManager kv_cache_;
  Workspace ws_;
  std::shared_ptr<base::Buffer> ws_block_;
  struct Staging;  // host-side step arrays and results (pinned on GPUs), the decode graphs
  std::unique_ptr<Staging> staging_;

 public:
  ~LlamaModel();
};

}  // namespace model
