// Token embedding lookup on the GPU: out[i, :] = table[clamp(tokens[i]), :], converting the table dtype to
// the activation dtype. Ids are clamped to [0, vocab) on the device: checking them on the host would
// need a copy and a sync, which a captured decode step cannot make.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/quant_blocks.h"

namespace kernel::cuda {
namespace {

constexpr int kThreads = 256;

// tokens: int32 [n]; table: Tt [vocab, dim]; out: To [n, dim]. Grid-stride over the n * dim outputs.
template <typename Tt, typename To>
static __global__ void embedding_kernel(const int32_t* __restrict__ tokens, const Tt* __restrict__ table,
                                        To* __restrict__ out, int64_t n, int64_t dim, int64_t vocab) {
  pdl_wait();
  pdl_trigger();
  const int64_t total = n * dim;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = e / dim, d = e - i * dim;
    int64_t id = tokens[i];
    id = id < 0 ? 0 : (id >= vocab ? vocab - 1 : id);
    out[e] = from_float<To>(to_float(table[id * dim + d]));
  }
}

// The same for a block-type table (row_bytes per row): each value decoded exactly (quant_blocks.h).
template <base::DType QT, typename To>
static __global__ void embedding_quant_kernel(const int32_t* __restrict__ tokens, const uint8_t* __restrict__ table,
                                              To* __restrict__ out, int64_t n, int64_t dim, int64_t vocab,
                                              int64_t row_bytes) {
  constexpr int kElems = (int)base::dtype_block_elems(QT);
  constexpr int64_t kBytes = (int64_t)base::dtype_block_bytes(QT);
  pdl_wait();
  pdl_trigger();
  const int64_t total = n * dim;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = e / dim, d = e - i * dim;
    int64_t id = tokens[i];
    id = id < 0 ? 0 : (id >= vocab ? vocab - 1 : id);
    out[e] = from_float<To>(quant::value<QT>(table + id * row_bytes + (d / kElems) * kBytes, (int)(d % kElems)));
  }
}

template <base::DType QT>
Status embedding_quant(const Tensor& tokens, const ConstTensor& table, Tensor& out, cudaStream_t stream) {
  const int64_t n = tokens.numel(), vocab = table.dim(0), dim = table.dim(1);
  const int64_t row_bytes = (int64_t)base::dtype_bytes(QT, dim);
  return dispatch_float(out.dtype(), "embedding", [&](auto out_tag) -> Status {
    using To = typename decltype(out_tag)::type;
    return launch_kernel(embedding_quant_kernel<QT, To>, grid_for(n * dim, kThreads), kThreads, 0, stream, 1,
                         tokens.ptr<int32_t>(), static_cast<const uint8_t*>(table.data()), static_cast<To*>(out.data()),
                         n, dim, vocab, row_bytes);
  });
}

}  // namespace

Status embedding(const Tensor& tokens, const ConstTensor& table, Tensor& out, cudaStream_t stream) {
  const int64_t n = tokens.numel(), vocab = table.dim(0), dim = table.dim(1);
  KP_CHECK_ARG(vocab > 0 && dim > 0, "embedding: empty table");
  switch (table.dtype()) {
    case base::DType::kQ8_0: return embedding_quant<base::DType::kQ8_0>(tokens, table, out, stream);
    case base::DType::kQ4_0: return embedding_quant<base::DType::kQ4_0>(tokens, table, out, stream);
    case base::DType::kQ4_K: return embedding_quant<base::DType::kQ4_K>(tokens, table, out, stream);
    case base::DType::kQ6_K: return embedding_quant<base::DType::kQ6_K>(tokens, table, out, stream);
    default: break;
  }
  return dispatch_float(table.dtype(), "embedding", [&](auto table_tag) -> Status {
    using Tt = typename decltype(table_tag)::type;
    return dispatch_float(out.dtype(), "embedding", [&](auto out_tag) -> Status {
      using To = typename decltype(out_tag)::type;
      return launch_kernel(embedding_kernel<Tt, To>, grid_for(n * dim, kThreads), kThreads, 0, stream, 1,
                           tokens.ptr<int32_t>(), static_cast<const Tt*>(table.data()),
                           static_cast<To*>(out.data()), n, dim, vocab);
    });
  });
}

}  // namespace kernel::cuda
