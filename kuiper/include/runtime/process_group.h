// ProcessGroup: this process's part of a job that mpirun started (comm/mpi_world.h), one model rank
// per process: N = tp x pp processes, each holding 1/tp of the weights of one pipeline stage.
//
//   stage = world rank / tp,  tp_rank = world rank % tp;  stage s runs layers [s L / pp, (s + 1) L / pp)
//
// It makes the two communicators the model sees: the tensor-parallel group of its stage
// (ModelOptions::comm) and its pipeline column (ModelOptions::pipe). On the CPU they are
// MpiCommunicators; on GPUs NCCL's (NcclHandler::init_process: rank 0's ncclUniqueId is broadcast over
// MPI, ncclCommInitRank on this host's local-rank GPU, ncclCommSplit for the two groups). Besides, it
// carries what the processes must agree on outside the model: that they loaded one model, and rank
// 0's stop decision after every token.
#pragma once

#include <memory>
#include <utility>

#include "base/status.h"
#include "comm/communicator.h"
#include "model/config.h"

namespace runtime {

struct ProcessLayout {
  int world = 1, rank = 0;  // the MPI world
  int tp = 1, pp = 1;
  int stage = 0, tp_rank = 0;
};

class ProcessGroup {
 public:
  // Needs MpiWorld::instance().size() == tp x pp. `timeout_ms` bounds every wait for the others.
  static base::Status create(base::DeviceType device, int tp, int pp, int timeout_ms, std::unique_ptr<ProcessGroup>* out);
  ~ProcessGroup();

  const ProcessLayout& layout() const { return layout_; }
  int device_id() const { return device_id_; }  // the GPU of this process (its local rank on the host)
  comm::Communicator* tensor_parallel() const { return tp_; }  // null when tp == 1
  comm::Communicator* pipeline() const { return pipe_; }       // null when pp == 1
  // This stage's layers [first, second) of a model of n_layers; fails when there are fewer layers than stages.
  base::Status layers(int n_layers, std::pair<int, int>* range) const;
  // Every process loaded a model of these hyperparameters (the model path may differ between hosts,
  // the model may not): else every process fails with the first that differs.
  base::Status check_same_model(const model::ModelConfig& c) const;
  // This process failed with `s`: every other process's pending and later communication fails at once
  // with it ("rank R: cause"), instead of waiting for this one until the timeout.
  // Returns `s` as the job reports it: naming this rank.
  base::Status abort(const base::Status& s) const;
  // Rank 0's `*stop` reaches every process (a broadcast of one int).
  base::Status share_stop(bool* stop) const;
  void set_timeout_ms(int ms);

 private:
  ProcessGroup() = default;
  ProcessLayout layout_;
  base::DeviceType device_ = base::DeviceType::kCPU;
  int device_id_ = 0;
  std::unique_ptr<comm::Communicator> mpi_tp_, mpi_pipe_;  // the CPU's communicators (owned)
  comm::Communicator* tp_ = nullptr;
  comm::Communicator* pipe_ = nullptr;
};

}  // namespace runtime
