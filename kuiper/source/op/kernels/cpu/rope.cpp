// Rotary position embedding on interleaved pairs, driven by the model's precomputed cos/sin table.
#include "cpu_kernels.h"
#include "thread_pool.h"

namespace kernel::cpu {
namespace {

// Rotates every head of one token row: (a, b) -> (a cos t - b sin t, a sin t + b cos t).
// x: [width] = n_heads_x * head_dim; cs: [head_dim / 2, 2] = (cos t_j, sin t_j) for this position.
void rotate_row(float* x, int64_t width, const float* cs, int head_dim) {
  for (int64_t h = 0; h < width; h += head_dim) {
    float* v = x + h;
    for (int j = 0; j < head_dim / 2; ++j) {
      const float c = cs[2 * j], s = cs[2 * j + 1];
      const float a = v[2 * j], b = v[2 * j + 1];
      v[2 * j] = a * c - b * s;
      v[2 * j + 1] = a * s + b * c;
    }
  }
}

}  // namespace

// q: fp32 [n, n_heads * head_dim]; k: fp32 [n, n_kv_heads * head_dim], both rotated in place.
// cos_sin: fp32 [max_seq_len, head_dim / 2, 2]; token i uses row pos + i (bounds checked by the dispatcher).
void rope(Tensor& q, Tensor& k, int32_t pos, const Tensor& cos_sin, int head_dim) {
  const int64_t n = q.dim(0), q_width = q.dim(1), k_width = k.dim(1);
  float* qp = q.ptr<float>();
  float* kp = k.ptr<float>();
  const float* table = cos_sin.ptr<float>();
  parallel_for(n, n > 1 ? threads_for(2 * n * (q_width + k_width)) : 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* cs = table + (pos + i) * head_dim;  // head_dim / 2 pairs of (cos, sin)
      rotate_row(qp + i * q_width, q_width, cs, head_dim);
      rotate_row(kp + i * k_width, k_width, cs, head_dim);
    }
  });
}

// As rope(), with row i at positions[i] (int32 [n], in range: checked by the dispatcher).
void rope_at(Tensor& q, Tensor& k, const Tensor& positions, const Tensor& cos_sin, int head_dim) {
  const int64_t n = q.dim(0), q_width = q.dim(1), k_width = k.dim(1);
  float* qp = q.ptr<float>();
  float* kp = k.ptr<float>();
  const int32_t* ps = positions.ptr<int32_t>();
  const float* table = cos_sin.ptr<float>();
  parallel_for(n, n > 1 ? threads_for(2 * n * (q_width + k_width)) : 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* cs = table + (int64_t)ps[i] * head_dim;
      rotate_row(qp + i * q_width, q_width, cs, head_dim);
      rotate_row(kp + i * k_width, k_width, cs, head_dim);
    }
  });
}

}  // namespace kernel::cpu
