// NcclHandler: the communication layer for tensor parallelism on GPUs.
//
// One process drives N GPUs of one host, one host thread per rank. The handler is a singleton that
// owns one NCCL communicator per local GPU (created together by ncclCommInitAll) and, per rank, a
// dedicated comm stream and two events made once at init. The model never calls NCCL: it sees a
// base::Communicator (communicator(rank)) with typed AllReduce (sum) and AllGather over tensors.
//
// Overlap (how an all-reduce is queued, never waited for by the CPU):
//
//   compute stream:  ...matmul... [record done] ---------------------------- [wait reduced] next op...
//   comm stream:                          [wait done] ncclAllReduce [record reduced]
//
// The host returns as soon as the five calls are queued. Batch-1 decode has nothing to overlap (the
// next op needs the sum), so there the comm stream only keeps NCCL off the compute stream; prefill
// splits the row-parallel matmul into chunks so that chunk i's all-reduce runs while chunk i+1 is
// being computed (op/matmul.cpp). Both streams can be captured into one CUDA graph: the event record
// and wait fork the comm stream into the capture and join it back.
//
// Failures: every NCCL call is checked; wait() polls ncclCommGetAsyncError while it waits, and on an
// error or a timeout aborts every communicator so no rank hangs in a collective.
#pragma once

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include <memory>
#include <mutex>
#include <vector>

#include "base/communicator.h"
#include "base/cuda_utils.h"
#include "base/status.h"

namespace base {

class NcclHandler {
 public:
  static NcclHandler& instance();
  NcclHandler(const NcclHandler&) = delete;
  NcclHandler& operator=(const NcclHandler&) = delete;

  // Creates communicators for GPUs 0..world-1 (idempotent for the same world size; another size
  // replaces them, so it must not be called while a model of the old size still runs).
  Status init(int world);
  int world_size() const { return (int)ranks_.size(); }
  // The Communicator of `rank`; valid after init.
  Communicator* communicator(int rank);

  // Sum over ranks of `count` elements, in two halves (see the overlap diagram above): start() queues
  // the collective on the comm stream after the work queued on the compute `stream` so far; finish()
  // makes `stream` wait for every collective started before it.
  Status all_reduce_start(int rank, const void* send, void* recv, size_t count, DType dtype, cudaStream_t stream);
  Status all_reduce_finish(int rank, cudaStream_t stream);
  // recv (count * world elements) = every rank's send (count elements), rank order.
  Status all_gather(int rank, const void* send, void* recv, size_t count, DType dtype, cudaStream_t stream);

  // Waits for `stream` while polling NCCL for asynchronous errors; aborts all communicators on an
  // error or after `timeout_ms`, so the other ranks' collectives fail instead of hanging.
  Status wait(int rank, cudaStream_t stream, int timeout_ms = 300000);
  // Tears everything down (also done at exit).
  void shutdown();

 private:
  NcclHandler() = default;
  ~NcclHandler();
  struct Rank;
  Status abort_all(const std::string& why);
  std::mutex mu_;
  std::vector<std::unique_ptr<Rank>> ranks_;
};

}  // namespace base

#define NCCL_CHECK(stmt)                                                                                \
  do {                                                                                                  \
    ncclResult_t kp_nr_ = (stmt);                                                                       \
    if (kp_nr_ != ncclSuccess)                                                                          \
      return ::base::Status(::base::StatusCode::kCommError, std::string("NCCL error '") +               \
                                                                ncclGetErrorString(kp_nr_) + "' in " +  \
                                                                #stmt + " at " + __FILE__ + ":" +       \
                                                                std::to_string(__LINE__));              \
  } while (0)

#endif  // KUIPER_WITH_CUDA
