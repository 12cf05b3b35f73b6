#include "base/nccl_handler.h"

#include <chrono>
#include <thread>

namespace base {

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
  int index = 0;
  ncclComm_t comm = nullptr;
  CudaStream comm_stream;
  CudaEvent done;     // recorded on the compute stream when the partial result is complete
  CudaEvent reduced;  // recorded on the comm stream when the collective has finished

  int rank() const override { return index; }
  int world_size() const override { return handler->world_size(); }
  Status all_reduce_start(tensor::Tensor& t, void* stream) override {
    return handler->all_reduce_start(index, t.data(), t.data(), t.numel(), t.dtype(), static_cast<cudaStream_t>(stream));
  }
  Status all_reduce_finish(void* stream) override {
    return handler->all_reduce_finish(index, static_cast<cudaStream_t>(stream));
  }
  Status all_gather(const tensor::Tensor& in, tensor::Tensor& out, void* stream) override {
    if (out.numel() != in.numel() * world_size() || out.dtype() != in.dtype())
      return InvalidArgument("all_gather: out must hold world_size copies of in");
    return handler->all_gather(index, in.data(), out.data(), in.numel(), in.dtype(), static_cast<cudaStream_t>(stream));
  }
};

NcclHandler& NcclHandler::instance() {
  static NcclHandler h;
  return h;
}

NcclHandler::~NcclHandler() { shutdown(); }

void NcclHandler::shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& r : ranks_)
    if (r->comm) ncclCommDestroy(r->comm);
  ranks_.clear();
}

Status NcclHandler::init(int world) {
  std::lock_guard<std::mutex> lock(mu_);
  if ((int)ranks_.size() == world) return Status::Ok();
  // Another world size: the old communicators go (nothing may still be using them).
  for (auto& r : ranks_)
    if (r->comm) ncclCommDestroy(r->comm);
  ranks_.clear();
  std::vector<ncclComm_t> comms(world);
  std::vector<int> devs(world);
  for (int i = 0; i < world; ++i) devs[i] = i;
  NCCL_CHECK(ncclCommInitAll(comms.data(), world, devs.data()));
  for (int i = 0; i < world; ++i) {
    auto r = std::make_unique<Rank>();
    r->handler = this;
    r->index = i;
    r->comm = comms[i];
    KP_RETURN_IF_ERROR(r->comm_stream.create(i));
    KP_RETURN_IF_ERROR(r->done.create(i));
    KP_RETURN_IF_ERROR(r->reduced.create(i));
    ranks_.push_back(std::move(r));
  }
  return Status::Ok();
}

Communicator* NcclHandler::communicator(int rank) { return ranks_.at(rank).get(); }

// compute: [record done]      comm: [wait done] ncclAllReduce      (the host returns at once)
Status NcclHandler::all_reduce_start(int rank, const void* send, void* recv, size_t count, DType dtype,
                                     cudaStream_t stream) {
  Rank& r = *ranks_.at(rank);
  CUDA_CHECK(cudaEventRecord(r.done.get(), stream));
  CUDA_CHECK(cudaStreamWaitEvent(r.comm_stream.get(), r.done.get(), 0));
  NCCL_CHECK(ncclAllReduce(send, recv, count, nccl_type(dtype), ncclSum, r.comm, r.comm_stream.get()));
  return Status::Ok();
}

// comm: [record reduced]      compute: [wait reduced]   (covers every all-reduce started before)
Status NcclHandler::all_reduce_finish(int rank, cudaStream_t stream) {
  Rank& r = *ranks_.at(rank);
  CUDA_CHECK(cudaEventRecord(r.reduced.get(), r.comm_stream.get()));
  CUDA_CHECK(cudaStreamWaitEvent(stream, r.reduced.get(), 0));
  return Status::Ok();
}

Status NcclHandler::all_gather(int rank, const void* send, void* recv, size_t count, DType dtype,
                               cudaStream_t stream) {
  Rank& r = *ranks_.at(rank);
  CUDA_CHECK(cudaEventRecord(r.done.get(), stream));
  CUDA_CHECK(cudaStreamWaitEvent(r.comm_stream.get(), r.done.get(), 0));
  NCCL_CHECK(ncclAllGather(send, recv, count, nccl_type(dtype), r.comm, r.comm_stream.get()));
  CUDA_CHECK(cudaEventRecord(r.reduced.get(), r.comm_stream.get()));
  CUDA_CHECK(cudaStreamWaitEvent(stream, r.reduced.get(), 0));
  return Status::Ok();
}

Status NcclHandler::abort_all(const std::string& why) {
  for (auto& r : ranks_)
    if (r->comm) ncclCommAbort(r->comm), r->comm = nullptr;
  return Status(StatusCode::kCommError, why + "; all NCCL communicators were aborted");
}

Status NcclHandler::wait(int rank, cudaStream_t stream, int timeout_ms) {
  const auto t0 = std::chrono::steady_clock::now();
  Rank& r = *ranks_.at(rank);
  while (true) {
    const cudaError_t q = cudaStreamQuery(stream);
    if (q == cudaSuccess) return Status::Ok();
    if (q != cudaErrorNotReady) return cuda_error(q, "cudaStreamQuery(stream)", __FILE__, __LINE__);
    ncclResult_t async = ncclSuccess;
    if (r.comm) ncclCommGetAsyncError(r.comm, &async);
    if (async != ncclSuccess && async != ncclInProgress)
      return abort_all("rank " + std::to_string(rank) + ": NCCL reported '" + ncclGetErrorString(async) + "'");
    if (std::chrono::steady_clock::now() - t0 > std::chrono::milliseconds(timeout_ms))
      return abort_all("rank " + std::to_string(rank) + ": a collective did not finish within " +
                       std::to_string(timeout_ms / 1000) + " s (a rank failed or hung)");
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

}  // namespace base
