// MpiWorld: this process's place in a job that an MPI launcher (mpirun, mpiexec, srun) started: one
// process per GPU, or per CPU rank. MPI only starts the processes and carries small host messages
// (the NCCL id, the prompt, the seed, the stop flag, timings, and on the CPU the activations); the
// model never sees it, only Communicators.
//
// Layout of the ranks, tensor-parallel groups first:
//   world rank = stage * tp + tp_rank        (stage in [0, pp), tp_rank in [0, tp))
// so the tp ranks of one stage are consecutive, which mpirun places on one host (by slot), and the
// ranks with one tp_rank form a pipeline column (stage 0 .. pp-1) whose neighbours exchange activations.
//
// Nothing here can hang. Every MPI operation is non-blocking and polled against a deadline (the
// timeout) and against the fault channel: abort(why) sends `why` to every other process on a
// communicator of its own, each poll looks for such a message, and from then on every MPI call of
// every process fails at once with that reason. A process that fails prints one line and ends the
// job with MPI_Abort (the program decides that: demo/app_common.cpp); the fault channel is what
// makes the others fail within milliseconds where the job goes on (a library user, the tests).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "base/status.h"
#include "comm/communicator.h"

namespace comm {

class MpiWorld {
 public:
  static MpiWorld& instance();
  MpiWorld(const MpiWorld&) = delete;
  MpiWorld& operator=(const MpiWorld&) = delete;

  // True when an MPI launcher started this process (read from its environment, before MPI_Init).
  static bool launched();
  // Whether this build links MPI (KUIPER_WITH_MPI).
  static bool built_with_mpi();

  // MPI_Init_thread once, when launched(); nothing otherwise. MPI_Finalize runs at exit.
  base::Status init(int* argc, char*** argv);
  bool active() const { return active_; }
  int rank() const { return rank_; }              // 0 without MPI
  int size() const { return size_; }              // 1 without MPI
  int local_rank() const { return local_rank_; }  // among this host's processes (picks the GPU)
  int local_size() const { return local_size_; }

  // Ends every process of the job with exit status `code` (MPI_Abort); without MPI, exit(code).
  [[noreturn]] void abort_job(int code);

  // Host-memory operations over every process (bounded, and failing once the job is aborted).
  base::Status barrier();
  base::Status broadcast(void* data, size_t bytes, int root);
  base::Status all_gather(const void* in, void* out, size_t bytes);  // out: size() x bytes, rank order
  base::Status max(double* v);                                       // in place, over every process
  base::Status sum(double* v);

  // A communicator of the processes with the same `color`, ranked by `key` (MPI_Comm_split), for
  // host tensors: MpiCommunicator (comm/mpi_communicator.h).
  base::Status split(int color, int key, std::unique_ptr<Communicator>* out);

  void set_timeout_ms(int ms) { timeout_ms_ = ms; }
  int timeout_ms() const { return timeout_ms_; }
  // Every pending and later MPI call of every process fails with `why` (the first reason is kept).
  void abort(const std::string& why);
  bool aborted();
  base::Status abort_status() const;

  struct Impl;  // the MPI handles (mpi_world.cpp), shared with mpi_communicator.cpp
  Impl* impl() { return impl_.get(); }

 private:
  MpiWorld();
  ~MpiWorld();
  void finalize();
  bool active_ = false;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  int timeout_ms_ = kDefaultTimeoutMs;
  std::unique_ptr<Impl> impl_;
};

}  // namespace comm
