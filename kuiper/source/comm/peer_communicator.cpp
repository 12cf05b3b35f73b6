// PeerCommGroup's host side: setup (peer access, the regions, the pointers every rank gets), the
// Communicator of each rank, and the watchdog. The kernels are in peer_kernels.cu; the protocol is
// described in comm/peer_communicator.h.
#include "comm/peer_communicator.h"

#include <cstdlib>

#include <algorithm>
#include <cstring>

#include "base/cuda_utils.h"
#include "op/kernels.h"
#include "peer_kernels.h"
#include "stream_watch.h"

namespace comm {

using base::Status;
using tensor::Tensor;

namespace {

constexpr size_t kMinCapacity = 16 << 10;
// One rank's flag and counter region: flags [kMaxChannels][kMaxRanks], then counters [kMaxChannels].
constexpr size_t kFlagWords = (size_t)peer::kMaxChannels * peer::kMaxRanks;
constexpr size_t kCtrlBytes = (kFlagWords + peer::kMaxChannels) * sizeof(uint64_t);

static_assert(PeerCommGroup::kMaxRanks == peer::kMaxRanks, "one bound on ranks");

// Restores the calling thread's current device when it goes out of scope.
class DeviceGuard {
 public:
  DeviceGuard() {
    if (cudaGetDevice(&prev_) != cudaSuccess) {
      cudaGetLastError();
      prev_ = -1;
    }
  }
  ~DeviceGuard() {
    if (prev_ >= 0) cudaSetDevice(prev_);
  }

 private:
  int prev_ = -1;
};

Status check_devices(const std::vector<int>& devices) {
  const int n = (int)devices.size();
  if (n < 1 || n > peer::kMaxRanks)
    return base::InvalidArgument("peer collectives: 1 to " + std::to_string(peer::kMaxRanks) + " ranks, not " +
                                 std::to_string(n));
  const int count = base::cuda_device_count();
  for (int d : devices)
    if (d < 0 || d >= count)
      return base::InvalidArgument("peer collectives: no GPU " + std::to_string(d) + " (" + std::to_string(count) +
                                   " visible)");
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      if (devices[i] == devices[j]) continue;
      int can = 0;
      CUDA_CHECK(cudaDeviceCanAccessPeer(&can, devices[i], devices[j]));
      if (!can)
        return base::Unsupported("peer collectives: GPU " + std::to_string(devices[i]) + " cannot access GPU " +
                                 std::to_string(devices[j]) + " directly (cudaDeviceCanAccessPeer); use NCCL");
    }
  return Status::Ok();
}

const char* op_name(peer::Op op) {
  switch (op) {
    case peer::Op::kAllReduce: return "peer all-reduce";
    case peer::Op::kAllReduceAddRmsnorm: return "peer all-reduce + add_rmsnorm";
    case peer::Op::kAllGather: return "peer all-gather";
  }
  return "peer collective";
}

}  // namespace

class PeerCommunicator;

struct PeerCommGroup::Rank {
  int device = 0;
  void* data = nullptr;  // [2 parity][world src][capacity] bytes on `device`
  void* ctrl = nullptr;  // flags uint64 [kMaxChannels][kMaxRanks], counters uint64 [kMaxChannels]
  peer::Args args;
  std::unique_ptr<PeerCommunicator> comm;
};

// ---------------------------------------------------------------------------------------------------
// The Communicator of one rank. all_reduce_start does the whole reduction, one kernel on the caller's
// stream: there is no comm stream to overlap with (the kernel is the communication), so finish() only
// reports a failure.

class PeerCommunicator final : public Communicator {
 public:
  PeerCommunicator(PeerCommGroup* group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return group_->world_size(); }

  Status all_reduce_start(Tensor& t, void* stream) override {
    KP_RETURN_IF_ERROR(ready());
    KP_RETURN_IF_ERROR(check_tensor(t, "all-reduce", "t"));
    return peer::launch_all_reduce(args(), t.data(), t.numel(), t.dtype(), static_cast<cudaStream_t>(stream));
  }
  Status all_reduce_finish(void*) override { return group_->aborted() ? group_->failure() : Status::Ok(); }

  Status all_reduce_add_rmsnorm(Tensor& partial, Tensor& residual, const tensor::ConstTensor& weight, float eps, Tensor& out,
                                void* stream) override {
    KP_RETURN_IF_ERROR(ready());
    KP_RETURN_IF_ERROR(check_tensor(partial, "all-reduce + add_rmsnorm", "partial"));
    KP_RETURN_IF_ERROR(check_tensor(residual, "all-reduce + add_rmsnorm", "residual"));
    KP_RETURN_IF_ERROR(check_tensor(out, "all-reduce + add_rmsnorm", "out"));
    KP_RETURN_IF_ERROR(check_tensor(weight, "all-reduce + add_rmsnorm", "weight"));
    if (partial.ndim() != 2 || residual.shape() != partial.shape() || out.shape() != partial.shape() ||
        residual.dtype() != partial.dtype() || out.dtype() != partial.dtype())
      return base::InvalidArgument("peer all-reduce + add_rmsnorm: partial, residual and out must be [n, dim] of one dtype");
    const int64_t rows = partial.dim(0), dim = partial.dim(1);
    if (weight.dtype() != base::DType::kFp32 || weight.numel() != dim)
      return base::InvalidArgument("peer all-reduce + add_rmsnorm: weight must be fp32 [dim]");
    // Rows too long for a channel's segment: the two-kernel default (it is the same arithmetic).
    if (!peer::add_rmsnorm_fits(args(), dim, partial.dtype()))
      return Communicator::all_reduce_add_rmsnorm(partial, residual, weight, eps, out, stream);
    return peer::launch_all_reduce_add_rmsnorm(args(), partial.data(), residual.data(), weight.ptr<float>(), eps,
                                               out.data(), rows, dim, partial.dtype(),
                                               static_cast<cudaStream_t>(stream));
  }

  Status all_gather(const Tensor& in, Tensor& out, void* stream) override {
    KP_RETURN_IF_ERROR(ready());
    KP_RETURN_IF_ERROR(check_tensor(in, "all-gather", "in"));
    KP_RETURN_IF_ERROR(check_tensor(out, "all-gather", "out"));
    if (out.numel() != in.numel() * world_size() || out.dtype() != in.dtype())
      return base::InvalidArgument("peer all-gather: out must hold world_size copies of in");
    return peer::launch_all_gather(args(), in.data(), out.data(), in.nbytes(), static_cast<cudaStream_t>(stream));
  }

  Status wait(void* stream) override { return group_->wait(rank_, static_cast<cudaStream_t>(stream)); }
  void abort(const std::string& why) override { group_->abort(why); }
  bool aborted() const override { return group_->aborted(); }

 private:
  const peer::Args& args() const { return group_->ranks_[rank_]->args; }
  int device() const { return group_->devices_[rank_]; }

  // Fails once the group failed; makes the rank's device current (the launch needs it).
  Status ready() {
    if (group_->aborted()) return group_->failure();
    int cur = -1;
    CUDA_CHECK(cudaGetDevice(&cur));
    if (cur != device()) CUDA_CHECK(cudaSetDevice(device()));
    return Status::Ok();
  }

  template <typename B>
  Status check_tensor(const tensor::BasicTensor<B>& t, const char* op, const char* name) const {
    if (t.empty() || t.device_type() != base::DeviceType::kCUDA || t.device_id() != device() || !t.is_contiguous())
      return base::InvalidArgument(std::string("peer ") + op + ": rank " + std::to_string(rank_) + "'s " + name +
                                   " must be a contiguous tensor on cuda:" + std::to_string(device()) + " (got " +
                                   (t.empty() ? std::string("none") : t.shape_string()) + ")");
    return Status::Ok();
  }

  PeerCommGroup* group_;
  int rank_;
};

// ---------------------------------------------------------------------------------------------------
// The group.

bool PeerCommGroup::supported(const std::vector<int>& devices) {
  const bool ok = check_devices(devices).ok();
  cudaGetLastError();  // a failed query leaves nothing behind
  return ok;
}

Status PeerCommGroup::create(const std::vector<int>& devices, size_t capacity_bytes,
                             std::unique_ptr<PeerCommGroup>* out) {
  KP_RETURN_IF_ERROR(check_devices(devices));
  if (capacity_bytes < kMinCapacity)
    return base::InvalidArgument("peer collectives: capacity must be at least " + std::to_string(kMinCapacity) +
                                 " bytes");
  DeviceGuard guard;
  std::unique_ptr<PeerCommGroup> g(new PeerCommGroup());
  g->devices_ = devices;
  const int world = (int)devices.size();

  std::vector<int> distinct = devices;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  // Ranks that share a GPU spin in one CUDA context. With lazy kernel loading (CUDA's default), the
  // first launch of a kernel may have to wait for that context to go idle, which it never does while
  // a peer is waiting for the launching rank: a deadlock (the CUDA C++ Programming Guide, "Lazy
  // Loading"). Eager loading, chosen before CUDA starts, rules it out. Ranks on distinct GPUs are
  // safe: a rank's loading waits only for its own GPU, whose collectives the peers have all issued.
  const char* loading = std::getenv("CUDA_MODULE_LOADING");
  if (distinct.size() < devices.size() && (loading == nullptr || std::string(loading) != "EAGER"))
    return base::Unsupported(
        "peer collectives: ranks sharing a GPU need CUDA_MODULE_LOADING=EAGER in the environment (lazy kernel "
        "loading can deadlock ranks that spin in one context)");
  // Peer access between every ordered pair of distinct devices; it is process-wide and stays enabled.
  for (int a : distinct)
    for (int b : distinct) {
      if (a == b) continue;
      CUDA_CHECK(cudaSetDevice(a));
      const cudaError_t e = cudaDeviceEnablePeerAccess(b, 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) {
        cudaGetLastError();
      } else if (e != cudaSuccess) {
        return base::cuda_error(e, "cudaDeviceEnablePeerAccess", __FILE__, __LINE__);
      }
    }
  // Co-residency: the blocks of every rank on one GPU must fit on it at once, with room to spare.
  int channels = peer::kMaxChannels;
  for (int d : distinct) {
    int sms = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, d));
    const int on = (int)std::count(devices.begin(), devices.end(), d);
    channels = std::min(channels, std::max(1, sms / (2 * on)));
  }
  g->channels_ = channels;
  g->seg_ = (capacity_bytes / channels) / 256 * 256;
  g->capacity_ = g->seg_ * channels;

  void* host = nullptr;
  CUDA_CHECK(cudaHostAlloc(&host, sizeof(peer::Control), cudaHostAllocMapped | cudaHostAllocPortable));
  g->control_ = static_cast<peer::Control*>(host);
  std::memset(host, 0, sizeof(peer::Control));
  g->set_timeout_ms(kDefaultPeerTimeoutMs);

  for (int r = 0; r < world; ++r) {
    auto rk = std::make_unique<Rank>();
    rk->device = devices[r];
    CUDA_CHECK(cudaSetDevice(rk->device));
    const cudaError_t e1 = cudaMalloc(&rk->data, 2 * (size_t)world * g->capacity_);
    const cudaError_t e2 = e1 == cudaSuccess ? cudaMalloc(&rk->ctrl, kCtrlBytes) : e1;
    g->ranks_.push_back(std::move(rk));  // owned before any failure return, so the destructor frees it
    if (e1 != cudaSuccess || e2 != cudaSuccess) {
      cudaGetLastError();
      return base::OutOfMemory("peer collectives: cannot allocate " +
                               std::to_string(2 * (size_t)world * g->capacity_ + kCtrlBytes) + " bytes on GPU " +
                               std::to_string(devices[r]) + " for rank " + std::to_string(r));
    }
    CUDA_CHECK(cudaMemset(g->ranks_[r]->ctrl, 0, kCtrlBytes));
  }
  // The memsets run on the legacy stream; the collectives will run on non-blocking streams.
  for (int d : distinct) {
    CUDA_CHECK(cudaSetDevice(d));
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  for (int r = 0; r < world; ++r) {
    Rank& rk = *g->ranks_[r];
    peer::Args& a = rk.args;
    for (int s = 0; s < world; ++s) {
      a.data[s] = static_cast<char*>(g->ranks_[s]->data);
      a.flags[s] = static_cast<uint64_t*>(g->ranks_[s]->ctrl);
    }
    a.counters = static_cast<uint64_t*>(rk.ctrl) + kFlagWords;
    CUDA_CHECK(cudaSetDevice(rk.device));
    void* dev_control = nullptr;
    CUDA_CHECK(cudaHostGetDevicePointer(&dev_control, host, 0));
    a.control = static_cast<peer::Control*>(dev_control);
    a.rank = r;
    a.world = world;
    a.channels = g->channels_;
    a.capacity = g->capacity_;
    a.seg = g->seg_;
    a.block_bytes = kDefaultBlockBytes;
    rk.comm = std::make_unique<PeerCommunicator>(g.get(), r);
  }
  *out = std::move(g);
  return Status::Ok();
}

PeerCommGroup::~PeerCommGroup() {
  DeviceGuard guard;
  // No kernel of any rank may still touch a region or the control block when they are freed.
  for (const auto& r : ranks_) {
    cudaSetDevice(r->device);
    cudaDeviceSynchronize();
  }
  for (const auto& r : ranks_) {
    cudaSetDevice(r->device);
    if (r->data) cudaFree(r->data);
    if (r->ctrl) cudaFree(r->ctrl);
  }
  if (control_) cudaFreeHost(control_);
  cudaGetLastError();
}

Communicator* PeerCommGroup::rank(int r) { return ranks_.at(r)->comm.get(); }

void PeerCommGroup::set_timeout_ms(int ms) {
  timeout_ms_.store(ms);
  __atomic_store_n(&control_->timeout_ns, (uint64_t)std::max(ms, 1) * 1000000ull, __ATOMIC_RELEASE);
}

void PeerCommGroup::set_block_bytes(size_t bytes) {
  for (auto& r : ranks_) r->args.block_bytes = std::max<size_t>(bytes, 16);
}

uint64_t PeerCommGroup::status_word() const { return __atomic_load_n(&control_->status, __ATOMIC_ACQUIRE); }

bool PeerCommGroup::aborted() const { return aborted_.load(std::memory_order_acquire) || status_word() != 0; }

std::string PeerCommGroup::describe(uint64_t status) const {
  if (!peer::is_timeout_record(status)) return "peer collectives: aborted";
  return "rank " + std::to_string(peer::record_waiter(status)) + ": " + op_name(peer::record_op(status)) + ": rank " +
         std::to_string(peer::record_missing(status)) + " did not arrive within " + seconds_text(timeout_ms());
}

Status PeerCommGroup::failure() {
  const uint64_t st = status_word();
  if (!aborted_.load(std::memory_order_acquire) && st != 0) abort(describe(st));  // a kernel's record comes first
  std::lock_guard<std::mutex> lock(mu_);
  return Status(base::StatusCode::kCommError, why_);
}

void PeerCommGroup::abort(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted_.load(std::memory_order_acquire)) return;
    why_ = why;
    aborted_.store(true, std::memory_order_release);
  }
  // The word the spinning kernels poll; a kernel's timeout record already there is kept.
  uint64_t expected = 0;
  __atomic_compare_exchange_n(&control_->status, &expected, peer::kStatusHostAbort, false, __ATOMIC_SEQ_CST,
                              __ATOMIC_SEQ_CST);
}

Status PeerCommGroup::wait(int rank, cudaStream_t stream) {
  auto check = [&]() -> Status {
    return aborted_.load(std::memory_order_acquire) || status_word() != 0 ? failure() : Status::Ok();
  };
  auto fail = [&](const std::string& why) {
    abort(why);
    return failure();
  };
  return watch_stream(rank, stream, wait_timeout_ms(), check, fail);
}

}  // namespace comm
