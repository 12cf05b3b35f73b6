// TpRunner: N tensor-parallel ranks of one model in one process, one host thread per rank.
//
// Each rank owns a LlamaModel holding its shard of the weights, its share of the KV cache and its own
// workspace; the ranks meet only inside collectives (all-reduce after the row-parallel linears,
// all-gather of the logits). Every rank runs the same generation loop on the same inputs: the gathered
// logits are bitwise identical everywhere, so every rank samples the same token with the same seed and
// no token needs to be broadcast. With one rank everything runs on the caller's thread.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "base/communicator.h"
#include "base/cpu_communicator.h"
#include "model/generator.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "sampler/sampler.h"

namespace model {

class TpRunner {
 public:
  // Loads `world` ranks. On the CPU the ranks share a CpuCommunicator; on GPUs rank r uses GPU r and
  // NCCL (opts.device_id is ignored; opts.stream must be null: each rank makes its own).
  static base::Status create(const ModelFile& file, const ModelOptions& opts, int world,
                             std::unique_ptr<TpRunner>* out);
  ~TpRunner();

  int world_size() const { return (int)models_.size(); }
  LlamaModel& model(int rank) { return *models_[rank]; }
  // The communicator of `rank` (null with one rank and no forced collectives).
  base::Communicator* comm(int rank) const;
  const ModelConfig& config() const { return models_[0]->config(); }
  int32_t max_seq_len() const { return models_[0]->max_seq_len(); }

  // Runs fn(rank) on every rank at once (rank 0 on the calling thread); the first error wins.
  base::Status run(const std::function<base::Status(int rank)>& fn);

  // generate() on every rank in lockstep; `on_token` is called on rank 0 only, and its "stop" answer
  // is shared with the other ranks before the next step, so all ranks stop at the same token.
  base::Status generate(const sampler::SamplerConfig& sc, const std::vector<int32_t>& prompt, int32_t pos,
                        const GenerateOptions& opts, const TokenCallback& on_token, GenerateStats* stats);

 private:
  TpRunner() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<std::unique_ptr<LlamaModel>> models_;
};

}  // namespace model
