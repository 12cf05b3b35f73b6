// What mpi_world.cpp and mpi_communicator.cpp share: the MPI handles of the process, and the one
// bounded wait every MPI operation of the library goes through.
#pragma once

#include <mpi.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "comm/mpi_world.h"

namespace comm {

// Longest fault message carried (longer reasons are cut).
constexpr int kFaultBytes = 512;

struct MpiWorld::Impl {
  MPI_Comm world = MPI_COMM_NULL;  // a duplicate of MPI_COMM_WORLD: the library's own host messages
  MPI_Comm fault = MPI_COMM_NULL;  // the fault channel: one pre-posted receive from any rank
  MPI_Request fault_recv = MPI_REQUEST_NULL;
  char fault_in[kFaultBytes] = {0};
  std::string fault_out;                 // the reason sent to every other rank, alive while sends are in flight
  std::vector<MPI_Request> fault_sends;  // one per other rank
  std::mutex mu;                         // abort()
  std::atomic<bool> aborted{false};
  std::string why;  // the first reason, guarded by mu
};

// MPI's return code as a Status naming the call ("MPI error '...' in MPI_Iallgather").
base::Status mpi_status(int rc, const char* call);

// Polls `req` until it completes. Fails instead (and leaves `req` pending: the job is over) when the
// world was aborted, here or by another process's fault message, or after the world's timeout, which
// aborts it: "rank R: MPI <what>: the other ranks did not arrive within 60 s (a rank failed or hung)",
// R the world rank of this process.
base::Status mpi_wait(MpiWorld& w, MPI_Request* req, const char* what);

// The Communicator over `comm` (owned from now on): mpi_communicator.cpp.
std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm);

}  // namespace comm
