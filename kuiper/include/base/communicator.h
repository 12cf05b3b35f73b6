// Communicator: the collectives tensor parallelism needs, behind one interface so the model never
// names NCCL. Implementations: NcclHandler (GPUs, base/nccl_handler.h) and CpuCommunicator (ranks as
// threads of one process, for tests of the sharding arithmetic on machines without GPUs).
#pragma once

#include "base/status.h"
#include "tensor/tensor.h"

namespace base {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // In place: t = sum over ranks of t. Every rank calls it with the same shape and dtype.
  // `stream` is the caller's compute stream (cudaStream_t on GPUs); the call is asynchronous on GPUs:
  // work queued on `stream` afterwards sees the sum, and the host does not wait.
  virtual Status all_reduce_sum(tensor::Tensor& t, void* stream) {
    KP_RETURN_IF_ERROR(all_reduce_start(t, stream));
    return all_reduce_finish(stream);
  }
  // The two halves of all_reduce_sum, for overlap: start() queues the sum of t once the work queued on
  // `stream` so far is done, without making `stream` wait for it; several starts may be in flight;
  // finish() makes `stream` wait for all of them.
  virtual Status all_reduce_start(tensor::Tensor& t, void* stream) = 0;
  virtual Status all_reduce_finish(void* stream) = 0;
  // out = concatenation of every rank's `in` along the first axis, rank 0 first.
  virtual Status all_gather(const tensor::Tensor& in, tensor::Tensor& out, void* stream) = 0;
};

}  // namespace base
