// CpuCommunicator: the Communicator for ranks that are threads of one process on the CPU. It lets CI
// (no GPUs) run the exact sharding arithmetic of tensor parallelism: `--device cpu --tp N`.
//
// all_reduce_sum is a reduce-scatter + all-gather done in place: after a barrier, rank r sums chunk r
// of every rank's buffer (in rank order 0..N-1, so every rank gets bitwise the same sum) and writes it
// back into chunk r of every buffer; a second barrier ends the call. No scratch memory is needed.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

#include "base/communicator.h"

namespace base {

// A reusable barrier for a fixed number of threads.
class HostBarrier {
 public:
  explicit HostBarrier(int n) : n_(n) {}
  void wait();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const int n_;
  int waiting_ = 0;
  uint64_t generation_ = 0;
};

class CpuCommGroup;

class CpuCommunicator final : public Communicator {
 public:
  CpuCommunicator(CpuCommGroup* group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override;
  // On the CPU the sum is done at once, in start().
  Status all_reduce_start(tensor::Tensor& t, void* stream) override;
  Status all_reduce_finish(void*) override { return Status::Ok(); }
  Status all_gather(const tensor::Tensor& in, tensor::Tensor& out, void* stream) override;

 private:
  CpuCommGroup* group_;
  int rank_;
};

// Owns the communicators of `world` ranks and what they share.
class CpuCommGroup {
 public:
  explicit CpuCommGroup(int world);
  CpuCommGroup(const CpuCommGroup&) = delete;
  CpuCommGroup& operator=(const CpuCommGroup&) = delete;
  Communicator* rank(int r) { return comms_[r].get(); }
  int world_size() const { return (int)comms_.size(); }

 private:
  friend class CpuCommunicator;
  HostBarrier barrier_;
  std::vector<void*> slots_;  // each rank's buffer during a collective
  std::vector<std::unique_ptr<CpuCommunicator>> comms_;
};

}  // namespace base
