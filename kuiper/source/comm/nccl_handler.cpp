#include "comm/nccl_handler.h"

#include "stream_watch.h"

namespace comm {

namespace {
ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::kFp32: return ncclFloat32;
    case DType::kFp16: return ncclFloat16;
    case DType::kBf16: return ncclBfloat16;
    case DType::kInt8: return ncclInt8;
    case DType::kInt32: return ncclInt32;
  }
  return ncclFloat32;
}
}  // namespace

// Per rank: its communicator, comm stream and the two events of the overlap protocol.
struct NcclHandler::Rank final : Communicator {
  NcclHandler* handler = nullptr;
  int index = 0;      // slot in the handler
  int comm_rank = 0;  // rank in `comm`
  int comm_size = 1;
  int name = 0;       // the rank messages name: the local GPU (init), the world rank (init_process)
  ncclComm_t comm = nullptr;
  base::CudaStream comm_stream;
  base::CudaEvent done;     // recorded on the compute stream when the partial result is complete
  base::CudaEvent reduced;  // recorded on the comm stream when the collective has finished

  // compute: [record done]  ->  comm: [wait done]   (a collective queued next sees the partial result)
  Status fork(cudaStream_t compute) {
    CUDA_CHECK(cudaEventRecord(done.get(), compute));
    CUDA_CHECK(cudaStreamWaitEvent(comm_stream.get(), done.get(), 0));
    return Status::Ok();
  }
  // comm: [record reduced]  ->  compute: [wait reduced]   (covers every collective queued before)
  Status join(cudaStream_t compute) {
    CUDA_CHECK(cudaEventRecord(reduced.get(), comm_stream.get()));
    CUDA_CHECK(cudaStreamWaitEvent(compute, reduced.get(), 0));
    return Status::Ok();
  }

  int rank() const override { return comm_rank; }
  int world_size() const override { return comm_size; }
  Status all_reduce_start(tensor::Tensor& t, void* stream) override {
    return handler->all_reduce_start(index, t.data(), t.data(), t.numel(), t.dtype(), static_cast<cudaStream_t>(stream));
  }
  Status all_reduce_finish(void* stream) override {
    return handler->all_reduce_finish(index, static_cast<cudaStream_t>(stream));
  }
  Status all_gather(const tensor::Tensor& in, tensor::Tensor& out, void* stream) override {
    if (out.numel() != in.numel() * world_size() || out.dtype() != in.dtype())
      return base::InvalidArgument("all_gather: out must hold world_size copies of in");
    return handler->all_gather(index, in.data(), out.data(), in.numel(), in.dtype(), static_cast<cudaStream_t>(stream));
  }
  Status send(const tensor::Tensor& t, int peer, void* stream) override {
    return handler->send(index, t.data(), t.numel(), t.dtype(), peer, static_cast<cudaStream_t>(stream));
  }
  Status recv(tensor::Tensor& t, int peer, void* stream) override {
    return handler->recv(index, t.data(), t.numel(), t.dtype(), peer, static_cast<cudaStream_t>(stream));
  }
  Status broadcast(tensor::Tensor& t, int root, void* stream) override {
    return handler->broadcast(index, t.data(), t.numel(), t.dtype(), root, static_cast<cudaStream_t>(stream));
  }
  Status wait(void* stream) override { return handler->wait(index, static_cast<cudaStream_t>(stream)); }
  void abort(const std::string& why) override { handler->abort(why); }
  bool aborted() const override { return handler->aborted(); }
};

NcclHandler& NcclHandler::instance() {
  static NcclHandler h;
  return h;
}

NcclHandler::~NcclHandler() { shutdown(); }

void NcclHandler::destroy_locked() {
  // Aborted communicators were already torn down by ncclCommAbort.
  if (!aborted()) {
    for (auto& r : ranks_)
      if (r->comm) ncclCommDestroy(r->comm);
    if (world_comm_) ncclCommDestroy(world_comm_);
  }
  ranks_.clear();
  world_comm_ = nullptr;
  aborted_.store(false, std::memory_order_release);
  why_.clear();
}

void NcclHandler::shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  destroy_locked();
}

Status NcclHandler::init(int world) {
  std::lock_guard<std::mutex> lock(mu_);
  if ((int)ranks_.size() == world && !aborted()) return Status::Ok();
  // Another world size, or communicators an earlier failure aborted: start afresh (nothing may still
  // be using the old ones).
  destroy_locked();
  int prev_device = 0;
  cudaGetDevice(&prev_device);
  std::vector<ncclComm_t> comms(world);
  std::vector<int> devs(world);
  for (int i = 0; i < world; ++i) devs[i] = i;
  NCCL_CHECK(ncclCommInitAll(comms.data(), world, devs.data()));
  for (int i = 0; i < world; ++i) KP_RETURN_IF_ERROR(add_rank(comms[i], i, i, world, i));
  // One all-reduce of one float on every rank, driven from this thread as one NCCL group: NCCL makes
  // its peer connections now, not inside the first decode step, and a broken setup fails here.
  std::vector<float*> probe(world, nullptr);
  Status s;
  for (int i = 0; i < world && s.ok(); ++i) {
    cudaSetDevice(i);
    if (cudaMalloc(&probe[i], sizeof(float)) != cudaSuccess || cudaMemset(probe[i], 0, sizeof(float)) != cudaSuccess)
      s = base::cuda_error(cudaGetLastError(), "cudaMalloc(probe)", __FILE__, __LINE__);
  }
  if (s.ok()) {
    ncclGroupStart();
    for (int i = 0; i < world; ++i)
      ncclAllReduce(probe[i], probe[i], 1, ncclFloat32, ncclSum, comms[i], ranks_[i]->comm_stream.get());
    const ncclResult_t nr = ncclGroupEnd();
    if (nr != ncclSuccess) s = Status(base::StatusCode::kCommError, std::string("NCCL error '") + ncclGetErrorString(nr) +
                                                                       "' in the first all-reduce of " + std::to_string(world) + " GPUs");
  }
  for (int i = 0; i < world; ++i) {
    if (s.ok()) s = wait(i, ranks_[i]->comm_stream.get());
    cudaSetDevice(i);
    cudaFree(probe[i]);
  }
  cudaSetDevice(prev_device);
  return s;
}

Status NcclHandler::add_rank(ncclComm_t comm, int device, int comm_rank, int comm_size, int name) {
  auto r = std::make_unique<Rank>();
  r->name = name;
  r->handler = this;
  r->index = (int)ranks_.size();
  r->comm_rank = comm_rank;
  r->comm_size = comm_size;
  r->comm = comm;
  KP_RETURN_IF_ERROR(r->comm_stream.create(device));
  KP_RETURN_IF_ERROR(r->done.create(device));
  KP_RETURN_IF_ERROR(r->reduced.create(device));
  ranks_.push_back(std::move(r));
  return Status::Ok();
}

Communicator* NcclHandler::communicator(int rank) { return ranks_.at(rank).get(); }

Status NcclHandler::init_process(int world, int rank, int device, int tp,
                                 const std::function<Status(void*, size_t)>& broadcast) {
  std::lock_guard<std::mutex> lock(mu_);
  destroy_locked();
  if (tp < 1 || world % tp != 0 || rank < 0 || rank >= world)
    return base::InvalidArgument("NCCL: " + std::to_string(world) + " processes cannot form tensor-parallel groups of " +
                                 std::to_string(tp));
  CUDA_CHECK(cudaSetDevice(device));
  ncclUniqueId id{};
  if (rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  KP_RETURN_IF_ERROR(broadcast(&id, sizeof id));
  NCCL_CHECK(ncclCommInitRank(&world_comm_, world, id, rank));
  // Tensor-parallel group: the tp consecutive ranks of one stage, ranked by tp_rank. Pipeline column:
  // the ranks of one tp_rank, ranked by stage. (A group of one is a valid NCCL communicator.)
  const int stage = rank / tp, tp_rank = rank % tp, pp = world / tp;
  ncclComm_t tp_comm = nullptr, pipe_comm = nullptr;
  NCCL_CHECK(ncclCommSplit(world_comm_, stage, tp_rank, &tp_comm, nullptr));
  NCCL_CHECK(ncclCommSplit(world_comm_, tp_rank, stage, &pipe_comm, nullptr));
  KP_RETURN_IF_ERROR(add_rank(tp_comm, device, tp_rank, tp, rank));
  KP_RETURN_IF_ERROR(add_rank(pipe_comm, device, stage, pp, rank));
  return probe_process();
}

// One all-reduce in the tensor-parallel group, one send / receive between every pair of neighbouring
// stages and one broadcast from the last stage: NCCL makes every connection now, not inside the first
// step (where a peer's connection could hold the host inside NCCL, out of the watchdog's reach).
Status NcclHandler::probe_process() {
  Rank& t = *ranks_[0];
  Rank& p = *ranks_[1];
  float* probe = nullptr;
  CUDA_CHECK(cudaMalloc(&probe, 2 * sizeof(float)));
  const cudaError_t ce = cudaMemset(probe, 0, 2 * sizeof(float));
  Status s = ce == cudaSuccess ? Status::Ok() : base::cuda_error(ce, "cudaMemset(probe)", __FILE__, __LINE__);
  auto nccl = [&](ncclResult_t nr, const char* what) {
    if (s.ok() && nr != ncclSuccess)
      s = Status(base::StatusCode::kCommError, std::string("NCCL error '") + ncclGetErrorString(nr) + "' in " + what);
  };
  if (s.ok()) nccl(ncclAllReduce(probe, probe, 1, ncclFloat32, ncclSum, t.comm, t.comm_stream.get()), "the first all-reduce");
  if (s.ok() && p.comm_size > 1) {
    ncclGroupStart();
    if (p.comm_rank + 1 < p.comm_size) ncclSend(probe, 1, ncclFloat32, p.comm_rank + 1, p.comm, p.comm_stream.get());
    if (p.comm_rank > 0) ncclRecv(probe + 1, 1, ncclFloat32, p.comm_rank - 1, p.comm, p.comm_stream.get());
    nccl(ncclGroupEnd(), "the first send / receive between pipeline stages");
    if (s.ok())
      nccl(ncclBroadcast(probe, probe, 1, ncclFloat32, p.comm_size - 1, p.comm, p.comm_stream.get()),
           "the first broadcast from the last pipeline stage");
  }
  if (s.ok()) s = wait(0, t.comm_stream.get());
  if (s.ok()) s = wait(1, p.comm_stream.get());
  cudaFree(probe);
  return s;
}

Communicator* NcclHandler::tensor_parallel() { return world_comm_ ? ranks_.at(0).get() : nullptr; }
Communicator* NcclHandler::pipeline() { return world_comm_ ? ranks_.at(1).get() : nullptr; }

Status NcclHandler::abort_status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return Status(base::StatusCode::kCommError, why_);
}

// fork, then ncclAllReduce on the comm stream (the host returns at once)
Status NcclHandler::all_reduce_start(int rank, const void* send, void* recv, size_t count, DType dtype,
                                     cudaStream_t stream) {
  if (aborted()) return abort_status();
  Rank& r = *ranks_.at(rank);
  KP_RETURN_IF_ERROR(r.fork(stream));
  NCCL_CHECK(ncclAllReduce(send, recv, count, nccl_type(dtype), ncclSum, r.comm, r.comm_stream.get()));
  return Status::Ok();
}

// join: the compute stream waits for every all-reduce started before
Status NcclHandler::all_reduce_finish(int rank, cudaStream_t stream) {
  if (aborted()) return abort_status();
  return ranks_.at(rank)->join(stream);
}

Status NcclHandler::all_gather(int rank, const void* send, void* recv, size_t count, DType dtype,
                               cudaStream_t stream) {
  if (aborted()) return abort_status();
  Rank& r = *ranks_.at(rank);
  KP_RETURN_IF_ERROR(r.fork(stream));
  NCCL_CHECK(ncclAllGather(send, recv, count, nccl_type(dtype), r.comm, r.comm_stream.get()));
  return r.join(stream);
}

Status NcclHandler::send(int rank, const void* buf, size_t count, DType dtype, int peer, cudaStream_t stream) {
  if (aborted()) return abort_status();
  Rank& r = *ranks_.at(rank);
  KP_RETURN_IF_ERROR(r.fork(stream));
  NCCL_CHECK(ncclSend(buf, count, nccl_type(dtype), peer, r.comm, r.comm_stream.get()));
  return r.join(stream);  // the buffer is not rewritten before it has left
}

Status NcclHandler::recv(int rank, void* buf, size_t count, DType dtype, int peer, cudaStream_t stream) {
  if (aborted()) return abort_status();
  Rank& r = *ranks_.at(rank);
  KP_RETURN_IF_ERROR(r.fork(stream));
  NCCL_CHECK(ncclRecv(buf, count, nccl_type(dtype), peer, r.comm, r.comm_stream.get()));
  return r.join(stream);
}

Status NcclHandler::broadcast(int rank, void* buf, size_t count, DType dtype, int root, cudaStream_t stream) {
  if (aborted()) return abort_status();
  Rank& r = *ranks_.at(rank);
  KP_RETURN_IF_ERROR(r.fork(stream));
  NCCL_CHECK(ncclBroadcast(buf, buf, count, nccl_type(dtype), root, r.comm, r.comm_stream.get()));
  return r.join(stream);
}

// No lock is held around ncclCommAbort: a rank can be blocked inside NCCL (waiting for a peer that
// died), and the abort is what releases it. The flag goes up first, so no rank starts a new call.
void NcclHandler::abort(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted()) return;
    why_ = why + " (every NCCL communicator was aborted)";
    aborted_.store(true, std::memory_order_release);
  }
  for (auto& r : ranks_)
    if (r->comm) ncclCommAbort(r->comm);
  if (world_comm_) ncclCommAbort(world_comm_);
}

Status NcclHandler::wait(int rank, cudaStream_t stream) {
  Rank& r = *ranks_.at(rank);
  auto check = [&]() -> Status {
    if (aborted()) return abort_status();
    // Under mpirun: another process failed (its reason came over MPI): stop too.
    std::string why;
    if (external_abort_ && external_abort_(&why)) {
      abort(why);
      return abort_status();
    }
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(r.comm, &async);
    if (async == ncclSuccess || async == ncclInProgress) return Status::Ok();
    abort("rank " + std::to_string(r.name) + ": NCCL reported '" + ncclGetErrorString(async) + "'");
    return abort_status();
  };
  auto fail = [&](const std::string& why) {
    abort(why);
    return abort_status();
  };
  return watch_stream(r.name, stream, timeout_ms_, check, fail);
}

}  // namespace comm
