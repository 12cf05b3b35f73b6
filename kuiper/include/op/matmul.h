// MatmulLayer: a linear layer y = x W^T, tensor-parallel aware.
//
// The sharding plan tags each linear when the model is loaded (set_tp_config):
//   kColumn - output features split across ranks (wq, wk, wv, w1, w3): each rank computes its slice
//             of y; no communication.
//   kRow    - input features split (wo, w2): each rank computes a partial y from its slice of x, and
//             the partials are summed with an all-reduce.
// The forward pass is the same code for every rank and every world size.
#pragma once

#include <string>

#include "comm/communicator.h"
#include "base/status.h"
#include "tensor/tensor.h"

namespace op {

enum class TpMode { kReplicated, kColumn, kRow };

struct TpConfig {
  TpMode mode = TpMode::kReplicated;
  int rank = 0;
  int world_size = 1;
  comm::Communicator* comm = nullptr;  // required for kRow when world_size > 1; not owned
};

class MatmulLayer {
 public:
  MatmulLayer() = default;
  explicit MatmulLayer(std::string name) : name_(std::move(name)) {}

  void set_tp_config(const TpConfig& tp) { tp_ = tp; }
  const TpConfig& tp_config() const { return tp_; }

  // This rank's shard: weight [out_local, in_local] (float or int8), scales fp32 [out_local,
  // in_local / group_size] for int8 (empty otherwise).
  base::Status set_weight(tensor::ConstTensor weight, tensor::ConstTensor scales, int group_size);

  // y [n, out_local] = x [n, in_local] W^T, then (kRow) summed over ranks.
  base::Status forward(const tensor::Tensor& x, tensor::Tensor& y, void* stream) const;

  // The layer whose output joins the residual stream (wo, w2): y = x W^T summed over ranks as in
  // forward(), then residual [n, out] += y and normed [n, out] = rmsnorm(residual) * norm_weight.
  // Where the communicator fuses the sum with the add and the norm (one kernel), decode uses that.
  base::Status forward_into_residual(const tensor::Tensor& x, tensor::Tensor& y, tensor::Tensor& residual,
                                     const tensor::ConstTensor& norm_weight, float eps, tensor::Tensor& normed,
                                     void* stream) const;

  // A stacked [W1; W3] gate/up layer (column-parallel or replicated): out [n, out_local / 2] =
  // swiglu(x W1^T, x W3^T), in one GEMV in decode; gu [n, out_local] is scratch for the unfused path.
  base::Status forward_swiglu(const tensor::Tensor& x, tensor::Tensor& gu, tensor::Tensor& out, void* stream) const;

  int64_t in_features() const { return weight_.dim(1); }   // local
  int64_t out_features() const { return weight_.dim(0); }  // local
  const tensor::ConstTensor& weight() const { return weight_; }
  const tensor::ConstTensor& scales() const { return scales_; }
  const std::string& name() const { return name_; }
  size_t weight_bytes() const { return weight_.nbytes() + (scales_.empty() ? 0 : scales_.nbytes()); }

 private:
  std::string name_;
  TpConfig tp_;
  tensor::ConstTensor weight_;  // [out_local, in_local], read-only (may be the model file's mapping)
  tensor::ConstTensor scales_;  // fp32 [out_local, in_local / group_size] or empty
  int group_size_ = 0;
};

}  // namespace op
