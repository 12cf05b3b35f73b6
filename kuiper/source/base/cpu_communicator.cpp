#include "base/cpu_communicator.h"

#include <cstring>

namespace base {

void HostBarrier::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t gen = generation_;
  if (++waiting_ == n_) {
    waiting_ = 0;
    ++generation_;
    cv_.notify_all();
    return;
  }
  cv_.wait(lock, [&] { return generation_ != gen; });
}

CpuCommGroup::CpuCommGroup(int world) : barrier_(world), slots_(world, nullptr) {
  for (int r = 0; r < world; ++r) comms_.push_back(std::make_unique<CpuCommunicator>(this, r));
}

int CpuCommunicator::world_size() const { return group_->world_size(); }

Status CpuCommunicator::all_reduce_start(tensor::Tensor& t, void*) {
  if (t.dtype() != DType::kFp32 || t.device_type() != DeviceType::kCPU || !t.is_contiguous())
    return InvalidArgument("CPU all-reduce takes contiguous fp32 host tensors");
  const int world = world_size();
  const int64_t n = t.numel();
  group_->slots_[rank_] = t.data();
  group_->barrier_.wait();  // every rank's buffer is published
  const int64_t begin = n * rank_ / world, end = n * (rank_ + 1) / world;
  for (int64_t i = begin; i < end; ++i) {
    float sum = 0.f;
    for (int r = 0; r < world; ++r) sum += static_cast<const float*>(group_->slots_[r])[i];
    for (int r = 0; r < world; ++r) static_cast<float*>(group_->slots_[r])[i] = sum;
  }
  group_->barrier_.wait();  // every chunk is summed everywhere
  return Status::Ok();
}

Status CpuCommunicator::all_gather(const tensor::Tensor& in, tensor::Tensor& out, void*) {
  const int world = world_size();
  if (in.device_type() != DeviceType::kCPU || out.dtype() != in.dtype() || out.numel() != in.numel() * world)
    return InvalidArgument("CPU all-gather: out must hold world_size copies of in");
  group_->slots_[rank_] = in.data();
  group_->barrier_.wait();
  const size_t bytes = in.nbytes();
  for (int r = 0; r < world; ++r)
    std::memcpy(static_cast<char*>(out.data()) + r * bytes, group_->slots_[r], bytes);
  group_->barrier_.wait();  // nobody reuses `in` before everyone has copied it
  return Status::Ok();
}

}  // namespace base
