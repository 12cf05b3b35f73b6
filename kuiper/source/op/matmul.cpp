// The tensor-parallel linear layer. Each rank multiplies by its own shard; a row-parallel layer then
// sums the partial products across ranks (the only communication a Llama layer needs: after wo and
// after w2).
#include "op/matmul.h"

#include "op/kernels.h"

namespace op {

base::Status MatmulLayer::set_weight(tensor::Tensor weight, tensor::Tensor scales, int group_size) {
  if (weight.ndim() != 2) return base::InvalidArgument(name_ + ": weight must be 2-D");
  if (weight.dtype() == base::DType::kInt8 && (scales.empty() || group_size <= 0))
    return base::InvalidArgument(name_ + ": int8 weight needs scales and a group size");
  if (tp_.mode == TpMode::kRow && tp_.world_size > 1 && tp_.comm == nullptr)
    return base::InvalidArgument(name_ + ": row-parallel layer without a communicator");
  weight_ = std::move(weight);
  scales_ = std::move(scales);
  group_size_ = group_size;
  return base::Status::Ok();
}

base::Status MatmulLayer::forward(const tensor::Tensor& x, tensor::Tensor& y, void* stream) const {
  KP_RETURN_IF_ERROR(kernel::matmul(x, weight_, scales_, group_size_, y, stream));
  if (tp_.mode == TpMode::kRow && tp_.world_size > 1) {
    // Partial sums over this rank's slice of the input features: add them up across ranks.
    KP_RETURN_IF_ERROR(tp_.comm->all_reduce_sum(y, stream));
  }
  return base::Status::Ok();
}

}  // namespace op
