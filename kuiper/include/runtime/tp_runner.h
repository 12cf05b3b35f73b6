// TpRunner: N tensor-parallel ranks of one model in one process, one persistent host thread per rank.
//
// Each rank owns a LlamaModel holding its shard of the weights, its share of the KV cache and its own
// workspace; the ranks meet only inside collectives (all-reduce after the row-parallel linears,
// all-gather of the logits). Every rank runs the same generation loop on the same inputs: the gathered
// logits are bitwise identical everywhere, so every rank samples the same token with the same seed and
// no token needs to be broadcast. With one rank everything runs on the caller's thread.
//
// Rank r lives on its own thread (runtime/rank_threads.h), bound to GPU r for the thread's whole
// life, with its stream and cuBLAS handle made once. Nothing hangs: every host-side wait of a rank is
// bounded (Communicator::wait, HostBarrier), and a rank that fails aborts the whole group at once,
// so run() returns within seconds with one error naming the rank and the cause. After a failure the
// runner is spent: every later run() fails with the same error.
//
// Under mpirun (comm/mpi_world.h, more than one process) the runner is this process's part of the
// job instead: one rank, of one pipeline stage (runtime/process_group.h), run on the caller's thread;
// world_size() is 1 and comm(0) is the stage's tensor-parallel group. generate() then shares world
// rank 0's stop decision with every process, and only world rank 0 calls `on_token`.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "runtime/generator.h"
#include "runtime/process_group.h"
#include "runtime/rank_threads.h"
#include "sampler/sampler.h"

namespace runtime {

// Which all-reduce the ranks of a GPU run use.
enum class AllReduce {
  kAuto,    // NCCL across distinct GPUs (the peer all-reduce once verified there), peer for ranks sharing a GPU
  kCustom,  // the one-shot peer all-reduce (comm/peer_communicator.h); fails where it cannot run
  kNccl,    // NCCL (NcclHandler)
};
bool parse_all_reduce(const std::string& s, AllReduce* out);  // "auto", "custom", "nccl"
const char* all_reduce_name(AllReduce a);

struct TpOptions {
  int world = 1;
  // GPU of each rank (empty: rank r on GPU r). A GPU may appear more than once only with the peer
  // all-reduce (NCCL refuses two ranks on one GPU): that is how the multi-rank code is tested on one GPU.
  std::vector<int> devices;
  AllReduce all_reduce = AllReduce::kAuto;
  int timeout_ms = comm::kDefaultTimeoutMs;  // how long a rank may wait for the others
  // Pipeline stages: one process per stage and tp rank, so only under mpirun (world = mpirun's -np, which
  // must be world x pp; `devices` and `all_reduce` do not apply there: NCCL, the local rank's GPU).
  int pp = 1;
};

class TpRunner {
 public:
  // Loads tp.world ranks. On the CPU the ranks share a CpuCommunicator; on GPUs rank r uses GPU
  // tp.devices[r] (default r) and the all-reduce tp.all_reduce picks (opts.device_id is ignored when
  // world > 1; opts.stream must be null: each rank makes its own).
  static base::Status create(const model::ModelFile& file, const model::ModelOptions& opts, const TpOptions& tp,
                             std::unique_ptr<TpRunner>* out);
  static base::Status create(const model::ModelFile& file, const model::ModelOptions& opts, int world,
                             std::unique_ptr<TpRunner>* out) {
    TpOptions tp;
    tp.world = world;
    return create(file, opts, tp, out);
  }
  ~TpRunner();

  int world_size() const { return (int)models_.size(); }
  model::LlamaModel& model(int rank) { return *models_[rank]; }
  // The communicator of `rank` (null with one rank and no forced collectives).
  comm::Communicator* comm(int rank) const;
  // Under mpirun: this process's place in the job; null in a single-process run.
  const ProcessGroup* process() const;
  // Whether this process talks to the user: world rank 0 under mpirun, always otherwise.
  bool is_output_rank() const;
  const model::ModelConfig& config() const { return models_[0]->config(); }
  int32_t max_seq_len() const { return models_[0]->max_seq_len(); }
  // How long any rank may wait for the others before the run is declared hung (default 60 s).
  void set_timeout_ms(int ms);
  // The all-reduce the ranks use ("nccl", "custom"; "none" with one rank and no communicator).
  const char* all_reduce_used() const;

  // Runs fn(rank) on every rank at once, each on its own thread (on the caller's with one rank), and
  // waits for all. The first failure wins: "rank R: cause", and it stops every other rank.
  base::Status run(RankFn fn);

  // One model step of a batch (model/batch.h) on every rank: the same batch everywhere, each rank's
  // cache holding its KV heads of the same pages. `out` is filled from rank 0 (the gathered logits are
  // bitwise the same on every rank). The pages are handed out by rank 0's PageAllocator (pages()).
  base::Status step(const model::BatchSeq* seqs, int32_t n_seqs, const model::StepOutput& out);
  model::PageAllocator& pages() { return models_[0]->kv_cache_pages(); }

  // generate() on every rank in lockstep; `on_token` is called on rank 0 only, and its "stop" answer
  // is shared with the other ranks before the next step, so all ranks stop at the same token.
  base::Status generate(const sampler::SamplerConfig& sc, const std::vector<int32_t>& prompt, int32_t pos,
                        const GenerateOptions& opts, const TokenCallback& on_token, GenerateStats* stats);

 private:
  TpRunner() = default;
  base::Status make_comms(const model::ModelOptions& opts, const TpOptions& tp);
  static base::Status create_process(const model::ModelFile& file, const model::ModelOptions& opts, const TpOptions& tp,
                                     std::unique_ptr<TpRunner>* out);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<std::unique_ptr<model::LlamaModel>> models_;
};

}  // namespace runtime
