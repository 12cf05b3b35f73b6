#include "comm/mpi_world.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#ifdef KUIPER_WITH_MPI
#include "mpi_internal.h"
#endif

namespace comm {

using base::Status;

#ifndef KUIPER_WITH_MPI
struct MpiWorld::Impl {};
#endif

MpiWorld::MpiWorld() : impl_(std::make_unique<Impl>()) {}
MpiWorld::~MpiWorld() = default;

MpiWorld& MpiWorld::instance() {
  static MpiWorld* w = new MpiWorld();  // never destroyed: finalize() runs from atexit
  return *w;
}

bool MpiWorld::launched() {
  // Open MPI's mpirun, the PMI of MPICH / Intel MPI (hydra) and of Slurm's srun, PMIx.
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

bool MpiWorld::built_with_mpi() {
#ifdef KUIPER_WITH_MPI
  return true;
#else
  return false;
#endif
}

Status MpiWorld::abort_status() const {
#ifdef KUIPER_WITH_MPI
  std::lock_guard<std::mutex> lock(impl_->mu);
  return Status(base::StatusCode::kCommError, impl_->why);
#else
  return Status(base::StatusCode::kCommError, "aborted");
#endif
}

#ifdef KUIPER_WITH_MPI

Status mpi_status(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return Status::Ok();
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return Status(base::StatusCode::kCommError, std::string("MPI error '") + std::string(text, len) + "' in " + call);
}

#define KP_MPI_CHECK(call) KP_RETURN_IF_ERROR(mpi_status((call), #call))

Status MpiWorld::init(int* argc, char*** argv) {
  if (active_ || !launched()) return Status::Ok();
  // Only the thread that initialised MPI calls it (FUNNELED): every MPI call of the library is made by
  // the program's main thread (one rank per process).
  int provided = 0;
  KP_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  // Collective, but every process is here at once, right after MPI_Init.
  KP_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &impl_->world));
  KP_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &impl_->fault));
  MPI_Comm_set_errhandler(impl_->world, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(impl_->fault, MPI_ERRORS_RETURN);
  MPI_Comm local;
  KP_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local));
  MPI_Comm_rank(local, &local_rank_);
  MPI_Comm_size(local, &local_size_);
  MPI_Comm_free(&local);
  KP_MPI_CHECK(MPI_Irecv(impl_->fault_in, kFaultBytes, MPI_CHAR, MPI_ANY_SOURCE, 0, impl_->fault, &impl_->fault_recv));
  active_ = true;
  std::atexit([] { instance().finalize(); });
  return Status::Ok();
}

void MpiWorld::finalize() {
  if (!active_) return;
  // A process that ends normally first meets the others (bounded): if they are still at work and then
  // fail, or hang, this one must not sit in MPI_Finalize while another calls MPI_Abort (Open MPI 4.1's
  // mpirun can then hang in its own shutdown). It ends the job itself instead, after 2 s, so that the
  // failing process's line is printed first. (After an abort every process ends here, and finalizes.)
  if (!aborted() && !barrier().ok()) {
    std::this_thread::sleep_for(std::chrono::seconds(2));
    abort_job(1);
  }
  active_ = false;
  if (impl_->fault_recv != MPI_REQUEST_NULL) {
    int done = 0;
    MPI_Test(&impl_->fault_recv, &done, MPI_STATUS_IGNORE);
    if (!done) {
      MPI_Cancel(&impl_->fault_recv);
      MPI_Wait(&impl_->fault_recv, MPI_STATUS_IGNORE);
    }
  }
  for (MPI_Request& r : impl_->fault_sends)
    if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
  MPI_Finalize();
}

void MpiWorld::abort_job(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  if (active_) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

void MpiWorld::abort(const std::string& why) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->aborted.load()) return;
  impl_->why = why;
  impl_->aborted.store(true);
  if (!active_) return;
  // Tell every other process; the sends complete in the background (eager, a few hundred bytes).
  impl_->fault_out = why.substr(0, kFaultBytes - 1);
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    impl_->fault_sends.push_back(MPI_REQUEST_NULL);
    MPI_Isend(impl_->fault_out.c_str(), (int)impl_->fault_out.size() + 1, MPI_CHAR, r, 0, impl_->fault,
              &impl_->fault_sends.back());
  }
}

bool MpiWorld::aborted() {
  if (impl_->aborted.load()) return true;
  if (!active_ || impl_->fault_recv == MPI_REQUEST_NULL) return false;
  int done = 0;
  MPI_Test(&impl_->fault_recv, &done, MPI_STATUS_IGNORE);
  if (!done) return false;
  // Another process aborted: its reason, as it gave it (it names its rank), is ours.
  impl_->fault_in[kFaultBytes - 1] = '\0';
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (!impl_->aborted.load()) {
    impl_->why = impl_->fault_in;
    impl_->aborted.store(true);
  }
  return true;
}

Status mpi_wait(MpiWorld& w, MPI_Request* req, const char* what) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::milliseconds(w.timeout_ms());
  for (int polls = 0;; ++polls) {
    if (w.aborted()) return w.abort_status();
    int done = 0;
    if (Status s = mpi_status(MPI_Test(req, &done, MPI_STATUS_IGNORE), what); !s.ok()) {
      w.abort("rank " + std::to_string(w.rank()) + ": " + s.message());
      return w.abort_status();
    }
    if (done) return Status::Ok();
    // Spin briefly (a peer a few microseconds behind), then give the core away: with more ranks than
    // cores (mpirun --oversubscribe) the rank being waited for may need this one's core.
    if (polls < 64) continue;
    const auto now = Clock::now();
    if (now > deadline) {
      w.abort("rank " + std::to_string(w.rank()) + ": MPI " + what + ": the other ranks did not arrive within " +
              seconds_text(w.timeout_ms()) + " (a rank failed or hung)");
      return w.abort_status();
    }
    if (now - t0 < std::chrono::milliseconds(20)) std::this_thread::yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

Status MpiWorld::barrier() {
  if (!active_) return Status::Ok();
  MPI_Request req;
  KP_MPI_CHECK(MPI_Ibarrier(impl_->world, &req));
  return mpi_wait(*this, &req, "barrier");
}

Status MpiWorld::broadcast(void* data, size_t bytes, int root) {
  if (!active_) return Status::Ok();
  if (aborted()) return abort_status();
  MPI_Request req;
  KP_MPI_CHECK(MPI_Ibcast(data, (int)bytes, MPI_BYTE, root, impl_->world, &req));
  return mpi_wait(*this, &req, "broadcast");
}

Status MpiWorld::all_gather(const void* in, void* out, size_t bytes) {
  if (!active_) {
    std::memcpy(out, in, bytes);
    return Status::Ok();
  }
  if (aborted()) return abort_status();
  MPI_Request req;
  KP_MPI_CHECK(MPI_Iallgather(in, (int)bytes, MPI_BYTE, out, (int)bytes, MPI_BYTE, impl_->world, &req));
  return mpi_wait(*this, &req, "all-gather");
}

namespace {
Status reduce_double(MpiWorld& w, MPI_Comm comm, double* v, MPI_Op op) {
  if (w.aborted()) return w.abort_status();
  MPI_Request req;
  KP_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, v, 1, MPI_DOUBLE, op, comm, &req));
  return mpi_wait(w, &req, "all-reduce");
}
}  // namespace

Status MpiWorld::max(double* v) { return active_ ? reduce_double(*this, impl_->world, v, MPI_MAX) : Status::Ok(); }
Status MpiWorld::sum(double* v) { return active_ ? reduce_double(*this, impl_->world, v, MPI_SUM) : Status::Ok(); }

Status MpiWorld::split(int color, int key, std::unique_ptr<Communicator>* out) {
  if (!active_) return base::InvalidArgument("MPI communicators need a process started by mpirun");
  // MPI_Comm_split blocks: it is entered only once every process is known to be here.
  KP_RETURN_IF_ERROR(barrier());
  MPI_Comm c;
  KP_MPI_CHECK(MPI_Comm_split(impl_->world, color, key, &c));
  MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN);
  *out = make_mpi_communicator(c);
  return Status::Ok();
}

#else  // no MPI in this build: one process, and a clear error when a launcher started it anyway

Status MpiWorld::init(int*, char***) {
  if (!launched()) return Status::Ok();
  return base::Unsupported("started by an MPI launcher (mpirun), but this build has no MPI: install libopenmpi-dev "
                           "(tools/setup.sh) and rebuild");
}
void MpiWorld::finalize() {}
void MpiWorld::abort_job(int code) {
  std::fflush(stdout);
  std::exit(code);
}
void MpiWorld::abort(const std::string&) {}
bool MpiWorld::aborted() { return false; }
Status MpiWorld::barrier() { return Status::Ok(); }
Status MpiWorld::broadcast(void*, size_t, int) { return Status::Ok(); }
Status MpiWorld::all_gather(const void* in, void* out, size_t bytes) {
  std::memcpy(out, in, bytes);
  return Status::Ok();
}
Status MpiWorld::max(double*) { return Status::Ok(); }
Status MpiWorld::sum(double*) { return Status::Ok(); }
Status MpiWorld::split(int, int, std::unique_ptr<Communicator>*) {
  return base::Unsupported("this build has no MPI (install libopenmpi-dev and rebuild)");
}

#endif

}  // namespace comm
