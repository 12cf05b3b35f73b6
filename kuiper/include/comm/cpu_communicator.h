// CpuCommunicator: the Communicator for ranks that are threads of one process on the CPU. It lets CI
// (no GPUs) run the exact sharding arithmetic of tensor parallelism: `--device cpu --tp N`.
//
// all_reduce_sum is a reduce-scatter + all-gather done in place: after a barrier, rank r sums chunk r
// of every rank's buffer (in rank order 0..N-1, so every rank gets bitwise the same sum) and writes it
// back into chunk r of every buffer; a second barrier ends the call. No scratch memory is needed.
// The barrier is a HostBarrier: a rank that fails aborts it, a rank that hangs makes it time out, and
// either way every rank's collective returns an error instead of waiting forever.
#pragma once

#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "comm/host_barrier.h"

namespace comm {

class CpuCommGroup;

class CpuCommunicator final : public Communicator {
 public:
  CpuCommunicator(CpuCommGroup* group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override;
  // On the CPU the sum is done at once, in start().
  base::Status all_reduce_start(tensor::Tensor& t, void* stream) override;
  base::Status all_reduce_finish(void*) override { return base::Status::Ok(); }
  base::Status all_gather(const tensor::Tensor& in, tensor::Tensor& out, void* stream) override;
  // Collectives are synchronous on the CPU: nothing is ever pending, only an abort can be reported.
  base::Status wait(void* stream) override;
  void abort(const std::string& why) override;
  bool aborted() const override;

 private:
  CpuCommGroup* group_;
  int rank_;
};

// Owns the communicators of `world` ranks and what they share.
class CpuCommGroup {
 public:
  explicit CpuCommGroup(int world, int timeout_ms = kDefaultTimeoutMs);
  CpuCommGroup(const CpuCommGroup&) = delete;
  CpuCommGroup& operator=(const CpuCommGroup&) = delete;
  Communicator* rank(int r) { return comms_[r].get(); }
  int world_size() const { return (int)comms_.size(); }
  void set_timeout_ms(int ms) { barrier_.set_timeout_ms(ms); }

 private:
  friend class CpuCommunicator;
  HostBarrier barrier_;
  std::vector<void*> slots_;  // each rank's buffer during a collective
  std::vector<std::unique_ptr<CpuCommunicator>> comms_;
};

}  // namespace comm
