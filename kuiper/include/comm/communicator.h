// Communicator: the collectives tensor parallelism needs, and the transfers between pipeline stages,
// behind one interface so the model never names NCCL or MPI. Implementations: NcclHandler's ranks
// (GPUs, comm/nccl_handler.h), PeerCommGroup's ranks (GPUs of one process by peer loads/stores,
// comm/peer_communicator.h), CpuCommunicator (ranks as threads of one process,
// comm/cpu_communicator.h) and MpiCommunicator (ranks as processes started by mpirun, on the CPU,
// comm/mpi_communicator.h).
//
// Besides the collectives, a communicator owns the two things that keep a tensor-parallel run from
// hanging: every host-side wait of a rank goes through wait() (bounded, and it sees the group's
// errors), and abort() makes every pending and later collective of every rank of the group fail.
#pragma once

#include <cstdio>
#include <string>

#include "base/status.h"
#include "op/kernels.h"
#include "tensor/tensor.h"

namespace comm {

// How long a rank may wait for its peers before the run is declared hung (milliseconds).
constexpr int kDefaultTimeoutMs = 60000;

// "60 s", "0.5 s": a timeout as the messages print it.
inline std::string seconds_text(int ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g s", ms / 1000.0);
  return buf;
}

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // In place: t = sum over ranks of t. Every rank calls it with the same shape and dtype.
  // `stream` is the caller's compute stream (cudaStream_t on GPUs); the call is asynchronous on GPUs:
  // work queued on `stream` afterwards sees the sum, and the host does not wait.
  virtual base::Status all_reduce_sum(tensor::Tensor& t, void* stream) {
    KP_RETURN_IF_ERROR(all_reduce_start(t, stream));
    return all_reduce_finish(stream);
  }
  // The two halves of all_reduce_sum, for overlap: start() queues the sum of t once the work queued on
  // `stream` so far is done, without making `stream` wait for it; several starts may be in flight;
  // finish() makes `stream` wait for all of them.
  virtual base::Status all_reduce_start(tensor::Tensor& t, void* stream) = 0;
  virtual base::Status all_reduce_finish(void* stream) = 0;
  // The row-parallel layer's epilogue, fused where the implementation can:
  //   s = sum over ranks of partial;  residual += s;  out = rmsnorm(residual) * weight
  // partial, residual, out: [n_tokens, dim] (one activation dtype); weight: fp32 [dim]. Afterwards
  // `partial` is clobbered (this default leaves the sum in it); `out` may alias `partial`, not
  // `residual`. The default is all_reduce_sum followed by kernel::add_rmsnorm.
  virtual base::Status all_reduce_add_rmsnorm(tensor::Tensor& partial, tensor::Tensor& residual,
                                              const tensor::ConstTensor& weight, float eps, tensor::Tensor& out,
                                              void* stream) {
    KP_RETURN_IF_ERROR(all_reduce_sum(partial, stream));
    return kernel::add_rmsnorm(residual, partial, weight, eps, out, stream);
  }
  // out = concatenation of every rank's `in` along the first axis, rank 0 first.
  virtual base::Status all_gather(const tensor::Tensor& in, tensor::Tensor& out, void* stream) = 0;

  // Pipeline stages (a communicator whose ranks are the stages): `t` goes from this rank to `peer`,
  // which receives it into a tensor of the same dtype and size (every stage runs the same chunks, so
  // the receiver knows the shape). Queued like the collectives on GPUs (ncclSend / ncclRecv on the
  // comm stream, after the work queued on `stream`; later work on `stream` sees the received data);
  // done at once on the CPU. Communicators of one process's threads have none (the default).
  virtual base::Status send(const tensor::Tensor& t, int peer, void* stream) {
    (void)t, (void)peer, (void)stream;
    return base::Unsupported("this communicator has no point-to-point transfers");
  }
  virtual base::Status recv(tensor::Tensor& t, int peer, void* stream) {
    (void)t, (void)peer, (void)stream;
    return base::Unsupported("this communicator has no point-to-point transfers");
  }
  // Every rank's t = rank `root`'s t (the last stage hands the next token, or the logits, to every stage).
  virtual base::Status broadcast(tensor::Tensor& t, int root, void* stream) {
    (void)t, (void)root, (void)stream;
    return base::Unsupported("this communicator has no broadcast");
  }

  // The host waits for the work queued on `stream` (a no-op on the CPU, where collectives are
  // synchronous). Fails, instead of waiting on, when the group was aborted, when the transport reports
  // an error, or after timeout_ms(); the failure aborts the group so that no other rank hangs either.
  virtual base::Status wait(void* stream) = 0;
  // Makes every pending and later collective and wait() of every rank of the group fail with `why`.
  // Safe to call from any thread, any number of times (the first reason is kept).
  virtual void abort(const std::string& why) = 0;
  // True once abort() was called on any rank of the group.
  virtual bool aborted() const = 0;
};

}  // namespace comm
