#include "comm/cpu_communicator.h"

#include <cstring>

namespace comm {

using base::Status;

CpuCommGroup::CpuCommGroup(int world, int timeout_ms) : barrier_(world, timeout_ms), slots_(world, nullptr) {
  for (int r = 0; r < world; ++r) comms_.push_back(std::make_unique<CpuCommunicator>(this, r));
}

int CpuCommunicator::world_size() const { return group_->world_size(); }

Status CpuCommunicator::all_reduce_start(tensor::Tensor& t, void*) {
  if (t.dtype() != base::DType::kFp32 || t.device_type() != base::DeviceType::kCPU || !t.is_contiguous())
    return base::InvalidArgument("CPU all-reduce takes contiguous fp32 host tensors");
  const int world = world_size();
  const int64_t n = t.numel();
  group_->slots_[rank_] = t.data();
  KP_RETURN_IF_ERROR(group_->barrier_.wait(rank_));  // every rank's buffer is published
  const int64_t begin = n * rank_ / world, end = n * (rank_ + 1) / world;
  for (int64_t i = begin; i < end; ++i) {
    float sum = 0.f;
    for (int r = 0; r < world; ++r) sum += static_cast<const float*>(group_->slots_[r])[i];
    for (int r = 0; r < world; ++r) static_cast<float*>(group_->slots_[r])[i] = sum;
  }
  return group_->barrier_.wait(rank_);  // every chunk is summed everywhere
}

Status CpuCommunicator::all_gather(const tensor::Tensor& in, tensor::Tensor& out, void*) {
  const int world = world_size();
  if (in.device_type() != base::DeviceType::kCPU || out.dtype() != in.dtype() || out.numel() != in.numel() * world)
    return base::InvalidArgument("CPU all-gather: out must hold world_size copies of in");
  group_->slots_[rank_] = in.data();
  KP_RETURN_IF_ERROR(group_->barrier_.wait(rank_));
  const size_t bytes = in.nbytes();
  for (int r = 0; r < world; ++r)
    std::memcpy(static_cast<char*>(out.data()) + r * bytes, group_->slots_[r], bytes);
  return group_->barrier_.wait(rank_);  // nobody reuses `in` before everyone has copied it
}

Status CpuCommunicator::wait(void*) {
  return group_->barrier_.aborted() ? group_->barrier_.abort_status() : Status::Ok();
}

void CpuCommunicator::abort(const std::string& why) { group_->barrier_.abort(why); }

bool CpuCommunicator::aborted() const { return group_->barrier_.aborted(); }

}  // namespace comm
