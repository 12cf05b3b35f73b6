// RMSNorm and the fused residual add + RMSNorm, token rows split over the thread pool.
#include <cmath>

#include "cpu_kernels.h"
#include "thread_pool.h"

namespace kernel::cpu {
namespace {

// out = x / sqrt(mean(x^2) + eps) * w for one row. `out` may alias `x`: the sum of squares is
// complete before the first write.
void rmsnorm_row(const float* x, const float* w, float eps, int64_t dim, float* out) {
  float ss = 0.f;
#pragma omp simd reduction(+ : ss)
  for (int64_t j = 0; j < dim; ++j) ss += x[j] * x[j];
  const float inv_rms = 1.f / std::sqrt(ss / (float)dim + eps);
  for (int64_t j = 0; j < dim; ++j) out[j] = x[j] * inv_rms * w[j];
}

}  // namespace

// x, out: fp32 [n, dim]; weight: fp32 [dim].
void rmsnorm(const Tensor& x, const ConstTensor& weight, float eps, Tensor& out) {
  const int64_t n = x.dim(0), dim = x.dim(1);
  const float* xp = x.ptr<float>();
  const float* w = weight.ptr<float>();
  float* o = out.ptr<float>();
  parallel_for(n, n > 1 ? threads_for(2 * n * dim) : 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) rmsnorm_row(xp + i * dim, w, eps, dim, o + i * dim);
  });
}

// residual (in/out), delta, out: fp32 [n, dim]; weight: fp32 [dim].
// residual += delta; out = rmsnorm(residual).
void add_rmsnorm(Tensor& residual, const Tensor& delta, const ConstTensor& weight, float eps, Tensor& out) {
  const int64_t n = residual.dim(0), dim = residual.dim(1);
  float* r = residual.ptr<float>();
  const float* d = delta.ptr<float>();
  const float* w = weight.ptr<float>();
  float* o = out.ptr<float>();
  parallel_for(n, n > 1 ? threads_for(2 * n * dim) : 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float* ri = r + i * dim;
      const float* di = d + i * dim;
      for (int64_t j = 0; j < dim; ++j) ri[j] += di[j];
      rmsnorm_row(ri, w, eps, dim, o + i * dim);
    }
  });
}

}  // namespace kernel::cpu
