// Token embedding lookup on the GPU: out[i, :] = table[clamp(tokens[i]), :], converting the table dtype to
// the activation dtype. Ids are clamped to [0, vocab) on the device: checking them on the host would
// need a copy and a sync, which a captured decode step cannot make.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

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

}  // namespace

Status embedding(const Tensor& tokens, const ConstTensor& table, Tensor& out, cudaStream_t stream) {
  const int64_t n = tokens.numel(), vocab = table.dim(0), dim = table.dim(1);
  KP_CHECK_ARG(vocab > 0 && dim > 0, "embedding: empty table");
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
