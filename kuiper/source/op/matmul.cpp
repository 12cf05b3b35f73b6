// The tensor-parallel linear layer. Each rank multiplies by its own shard; a row-parallel layer then
// sums the partial products across ranks (the only communication a Llama layer needs: after wo and
// after w2).
#include "op/matmul.h"

#include <algorithm>

#include "op/kernels.h"

namespace op {

base::Status MatmulLayer::set_weight(tensor::ConstTensor weight, tensor::ConstTensor scales, int group_size) {
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

// Row-parallel prefill is cut into chunks of this many tokens so that the all-reduce of one chunk (on
// the comm stream) runs while the next chunk is multiplied (on the compute stream).
constexpr int64_t kOverlapChunk = 128;

base::Status MatmulLayer::forward(const tensor::Tensor& x, tensor::Tensor& y, void* stream) const {
  // Without a communicator (one rank) there is nothing to sum. A one-rank communicator still runs the
  // collectives: that is how the NCCL path is exercised on a single GPU.
  if (tp_.mode != TpMode::kRow || tp_.comm == nullptr)
    return kernel::matmul(x, weight_, scales_, group_size_, y, stream);

  // y holds partial sums over this rank's slice of the input features: add them up across ranks.
  //   compute: [matmul c0][matmul c1][matmul c2]...            [wait: all reduced] next op
  //   comm:               [reduce c0][reduce c1][reduce c2]...
  // Decode (one token) is one chunk: the next op needs the sum, so nothing overlaps there.
  const int64_t n = x.dim(0);
  for (int64_t begin = 0; begin < n; begin += kOverlapChunk) {
    const int64_t end = std::min(n, begin + kOverlapChunk);
    tensor::Tensor yc = y.slice_rows(begin, end);
    KP_RETURN_IF_ERROR(kernel::matmul(x.slice_rows(begin, end), weight_, scales_, group_size_, yc, stream));
    KP_RETURN_IF_ERROR(tp_.comm->all_reduce_start(yc, stream));
  }
  return tp_.comm->all_reduce_finish(stream);
}

base::Status MatmulLayer::forward_into_residual(const tensor::Tensor& x, tensor::Tensor& y, tensor::Tensor& residual,
                                                const tensor::ConstTensor& norm_weight, float eps, tensor::Tensor& normed,
                                                void* stream) const {
  // Decode (one token, nothing to overlap): the partial product, then one call that sums it over the
  // ranks, adds it to the residual and norms it (one kernel with the peer all-reduce).
  if (tp_.mode == TpMode::kRow && tp_.comm != nullptr && x.dim(0) == 1) {
    KP_RETURN_IF_ERROR(kernel::matmul(x, weight_, scales_, group_size_, y, stream));
    return tp_.comm->all_reduce_add_rmsnorm(y, residual, norm_weight, eps, normed, stream);
  }
  KP_RETURN_IF_ERROR(forward(x, y, stream));  // prefill: chunked, each chunk's all-reduce overlapping the next
  return kernel::add_rmsnorm(residual, y, norm_weight, eps, normed, stream);
}

base::Status MatmulLayer::forward_swiglu(const tensor::Tensor& x, tensor::Tensor& gu, tensor::Tensor& out,
                                         void* stream) const {
  if (tp_.mode == TpMode::kRow) return base::Internal(name_ + ": a row-parallel layer has no swiglu epilogue");
  return kernel::matmul_swiglu(x, weight_, scales_, group_size_, gu, out, stream);
}

}  // namespace op
