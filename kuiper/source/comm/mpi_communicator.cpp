#include "comm/mpi_communicator.h"

#include <vector>

#include "mpi_internal.h"

namespace comm {

using base::Status;

namespace {

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm c) : comm_(c) {
    MPI_Comm_rank(c, &rank_);
    MPI_Comm_size(c, &size_);
  }
  ~MpiCommunicator() override {
    // A communicator with operations left pending by an abort is left to the end of the job.
    if (!world().aborted()) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int world_size() const override { return size_; }

  // On the CPU the sum is done at once, in start().
  Status all_reduce_start(tensor::Tensor& t, void*) override {
    if (t.dtype() != base::DType::kFp32 || !host(t))
      return base::InvalidArgument("MPI all-reduce takes contiguous fp32 host tensors");
    const size_t n = (size_t)t.numel();
    if (scratch_.size() < n * size_) scratch_.resize(n * size_);
    KP_RETURN_IF_ERROR(gather(t.data(), scratch_.data(), n * sizeof(float), "all-reduce"));
    float* out = t.ptr<float>();
    for (size_t i = 0; i < n; ++i) {
      float sum = 0.f;
      for (int r = 0; r < size_; ++r) sum += scratch_[r * n + i];
      out[i] = sum;
    }
    return Status::Ok();
  }
  Status all_reduce_finish(void*) override { return Status::Ok(); }

  Status all_gather(const tensor::Tensor& in, tensor::Tensor& out, void*) override {
    if (!host(in) || !host(out) || out.dtype() != in.dtype() || out.numel() != in.numel() * size_)
      return base::InvalidArgument("MPI all-gather: out must hold world_size copies of in (contiguous host tensors)");
    return gather(in.data(), out.data(), in.nbytes(), "all-gather");
  }

  Status send(const tensor::Tensor& t, int peer, void*) override {
    KP_RETURN_IF_ERROR(check_p2p(t, peer, "send"));
    MPI_Request req;
    KP_RETURN_IF_ERROR(mpi_status(MPI_Isend(t.data(), (int)t.nbytes(), MPI_BYTE, peer, kTag, comm_, &req), "MPI_Isend"));
    return mpi_wait(world(), &req, "send to the next pipeline stage");
  }
  Status recv(tensor::Tensor& t, int peer, void*) override {
    KP_RETURN_IF_ERROR(check_p2p(t, peer, "recv"));
    MPI_Request req;
    KP_RETURN_IF_ERROR(mpi_status(MPI_Irecv(t.data(), (int)t.nbytes(), MPI_BYTE, peer, kTag, comm_, &req), "MPI_Irecv"));
    return mpi_wait(world(), &req, "receive from the previous pipeline stage");
  }
  Status broadcast(tensor::Tensor& t, int root, void*) override {
    if (!host(t) || root < 0 || root >= size_) return base::InvalidArgument("MPI broadcast: a contiguous host tensor and a root rank");
    if (world().aborted()) return world().abort_status();
    MPI_Request req;
    KP_RETURN_IF_ERROR(mpi_status(MPI_Ibcast(t.data(), (int)t.nbytes(), MPI_BYTE, root, comm_, &req), "MPI_Ibcast"));
    return mpi_wait(world(), &req, "broadcast");
  }

  // Nothing is ever pending once a call has returned: only an abort can be reported.
  Status wait(void*) override { return world().aborted() ? world().abort_status() : Status::Ok(); }
  void abort(const std::string& why) override { world().abort(why); }
  bool aborted() const override { return world().aborted(); }

 private:
  static constexpr int kTag = 7;
  static MpiWorld& world() { return MpiWorld::instance(); }
  static bool host(const tensor::Tensor& t) { return t.device_type() == base::DeviceType::kCPU && t.is_contiguous(); }

  Status check_p2p(const tensor::Tensor& t, int peer, const char* what) const {
    if (!host(t)) return base::InvalidArgument(std::string("MPI ") + what + " takes contiguous host tensors");
    if (peer < 0 || peer >= size_ || peer == rank_)
      return base::InvalidArgument(std::string("MPI ") + what + ": no rank " + std::to_string(peer) + " to talk to");
    return world().aborted() ? world().abort_status() : Status::Ok();
  }

  Status gather(const void* in, void* out, size_t bytes, const char* what) {
    if (world().aborted()) return world().abort_status();
    MPI_Request req;
    KP_RETURN_IF_ERROR(mpi_status(
        MPI_Iallgather(in, (int)bytes, MPI_BYTE, out, (int)bytes, MPI_BYTE, comm_, &req), "MPI_Iallgather"));
    return mpi_wait(world(), &req, what);
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::vector<float> scratch_;  // fp32 [world, numel] of the largest all-reduce so far
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm) { return std::make_unique<MpiCommunicator>(comm); }

}  // namespace comm
