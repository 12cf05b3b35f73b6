// NcclHandler: the communication layer for tensor parallelism on GPUs.
//
// Two ways to run, one singleton per process that owns this process's communicators, and per
// communicator a dedicated comm stream and two events made once at init:
//  - one process drives N GPUs of one host, one host thread per rank (init): one NCCL communicator
//    per local GPU, created together by ncclCommInitAll;
//  - one process per GPU, started by mpirun (init_process): rank 0 makes the ncclUniqueId, the
//    launcher broadcasts it, each process joins the world with ncclCommInitRank for its one GPU, and
//    ncclCommSplit cuts it into this process's tensor-parallel group (the tp ranks of its pipeline
//    stage) and its pipeline column (the ranks of its tp index in every stage: send / receive between
//    neighbouring stages, and the broadcast of the sampled token from the last stage).
// The model never calls NCCL: it sees a comm::Communicator with typed AllReduce (sum), AllGather,
// Send / Recv and Broadcast over tensors.
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
// Failures: every NCCL call is checked. Every host-side wait of a rank goes through wait(), the
// watchdog: it polls the stream, ncclCommGetAsyncError and the abort flag, and on an error or a
// timeout aborts every communicator (ncclCommAbort), so no rank hangs in a collective. abort() does the
// same on behalf of a rank that failed on its own (a CUDA error, an exception, a refused shard); from
// then on every collective and wait of every rank fails at once with the first reason.
#pragma once

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/cuda_utils.h"
#include "base/status.h"
#include "comm/communicator.h"

namespace comm {

using base::DType;
using base::Status;

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

  // One process of `world` (mpirun), world rank `rank` on GPU `device`, in the layout of
  // comm/mpi_world.h (rank = stage * tp + tp_rank). `broadcast(bytes, n)` hands rank 0's bytes to
  // every process (MPI_Bcast): it carries the ncclUniqueId. Replaces what init() made.
  Status init_process(int world, int rank, int device, int tp,
                      const std::function<Status(void* bytes, size_t n)>& broadcast);
  // After init_process: the tensor-parallel group of this process's stage (rank = tp_rank) and its
  // pipeline column (rank = stage).
  Communicator* tensor_parallel();
  Communicator* pipeline();

  // `rank` below is a slot: the index of the Communicator in this handler (the local GPU with init(),
  // 0 = tensor-parallel and 1 = pipeline with init_process()).
  // Sum over ranks of `count` elements, in two halves (see the overlap diagram above): start() queues
  // the collective on the comm stream after the work queued on the compute `stream` so far; finish()
  // makes `stream` wait for every collective started before it.
  Status all_reduce_start(int rank, const void* send, void* recv, size_t count, DType dtype, cudaStream_t stream);
  Status all_reduce_finish(int rank, cudaStream_t stream);
  // recv (count * world elements) = every rank's send (count elements), rank order.
  Status all_gather(int rank, const void* send, void* recv, size_t count, DType dtype, cudaStream_t stream);

  // Point to point and broadcast (pipeline stages), queued like the collectives: fork, the NCCL call on
  // the comm stream, join.
  Status send(int rank, const void* buf, size_t count, DType dtype, int peer, cudaStream_t stream);
  Status recv(int rank, void* buf, size_t count, DType dtype, int peer, cudaStream_t stream);
  Status broadcast(int rank, void* buf, size_t count, DType dtype, int root, cudaStream_t stream);

  // The watchdog wait: returns when `stream` is done; fails (and aborts every communicator) when NCCL
  // reports an asynchronous error, when the handler was aborted, or after timeout_ms().
  Status wait(int rank, cudaStream_t stream);
  // ncclCommAbort on every communicator, once; every later call of the handler fails with `why`.
  // Any thread may call it, also while other threads wait or are inside NCCL.
  void abort(const std::string& why);
  bool aborted() const { return aborted_.load(std::memory_order_acquire); }
  void set_timeout_ms(int ms) { timeout_ms_ = ms; }
  int timeout_ms() const { return timeout_ms_; }
  // Asked by every wait() (the watchdog), on the waiting thread: true and *why when the job was aborted
  // outside NCCL (another process failed and said so over MPI); the wait then aborts and fails with it.
  void set_external_abort(std::function<bool(std::string* why)> f) { external_abort_ = std::move(f); }
  // Tears everything down (also done at exit).
  void shutdown();

 private:
  NcclHandler() = default;
  ~NcclHandler();
  struct Rank;
  Status abort_status() const;
  void destroy_locked();
  Status add_rank(ncclComm_t comm, int device, int comm_rank, int comm_size, int name);
  Status probe_process();
  mutable std::mutex mu_;  // init / shutdown / abort
  std::vector<std::unique_ptr<Rank>> ranks_;
  ncclComm_t world_comm_ = nullptr;  // init_process: the job's communicator the groups were split from
  std::atomic<bool> aborted_{false};
  std::string why_;  // the first abort reason, guarded by mu_
  int timeout_ms_ = kDefaultTimeoutMs;
  std::function<bool(std::string*)> external_abort_;
};

}  // namespace comm

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
