// Element-wise and row-wise ops on fp32 host tensors: swiglu, add, softmax, argmax, dtype conversion.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu_kernels.h"
#include "thread_pool.h"

namespace kernel::cpu {

// gate, up, out: fp32 [n, hidden]. out = gate / (1 + exp(-gate)) * up.
void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) {
  const int64_t len = gate.numel();
  const float* g = gate.ptr<float>();
  const float* u = up.ptr<float>();
  float* o = out.ptr<float>();
  // An exp() is worth several multiply-adds.
  parallel_for(len, threads_for(8 * len), [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) o[j] = g[j] / (1.f + std::exp(-g[j])) * u[j];
  });
}

// a, b, out: fp32, same shape; out may alias a.
void add(const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t len = a.numel();
  const float* ap = a.ptr<float>();
  const float* bp = b.ptr<float>();
  float* o = out.ptr<float>();
  parallel_for(len, threads_for(len), [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) o[j] = ap[j] + bp[j];
  });
}

// x: fp32 [rows, cols], in place. softmax(x)_j = exp(x_j - max x) / sum exp(x - max x); subtracting
// the row maximum keeps every exp() in (0, 1], so large logits cannot overflow.
void softmax(Tensor& x) {
  const int64_t rows = x.dim(0), cols = x.dim(1);
  float* xp = x.ptr<float>();
  parallel_for(rows, threads_for(8 * rows * cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = xp + r * cols;
      const float max_v = *std::max_element(row, row + cols);
      float sum = 0.f;
      for (int64_t j = 0; j < cols; ++j) {
        row[j] = std::exp(row[j] - max_v);
        sum += row[j];
      }
      const float inv = 1.f / sum;
      for (int64_t j = 0; j < cols; ++j) row[j] *= inv;
    }
  });
}

// x: fp32 [rows, cols]; out: int32 [rows]. Strict '>' keeps the lowest index among equal maxima.
void argmax(const Tensor& x, Tensor& out) {
  const int64_t rows = x.dim(0), cols = x.dim(1);
  const float* xp = x.ptr<float>();
  int32_t* o = out.ptr<int32_t>();
  parallel_for(rows, threads_for(rows * cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xp + r * cols;
      int64_t best = 0;
      for (int64_t j = 1; j < cols; ++j)
        if (row[j] > row[best]) best = j;
      o[r] = (int32_t)best;
    }
  });
}

// in, out: fp32 / fp16 / bf16 host tensors of equal size; fp16 and bf16 round to nearest even.
// Every element goes through fp32, which holds fp16 and bf16 values exactly.
void convert(const Tensor& in, Tensor& out) {
  const int64_t len = in.numel();
  if (in.dtype() == out.dtype()) {
    if (in.data() != out.data()) std::memcpy(out.data(), in.data(), in.nbytes());
    return;
  }
  using base::DType;
  const float* in_f = in.dtype() == DType::kFp32 ? in.ptr<float>() : nullptr;
  const uint16_t* in_h = in_f ? nullptr : in.ptr_u16();
  float* out_f = out.dtype() == DType::kFp32 ? out.ptr<float>() : nullptr;
  uint16_t* out_h = out_f ? nullptr : out.ptr_u16();
  float (*widen)(uint16_t) = in.dtype() == DType::kFp16 ? base::half_to_float : base::bf16_to_float;
  uint16_t (*narrow)(float) = out.dtype() == DType::kFp16 ? base::float_to_half : base::float_to_bf16;
  parallel_for(len, threads_for(len), [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      const float v = in_f ? in_f[j] : widen(in_h[j]);
      if (out_f) {
        out_f[j] = v;
      } else {
        out_h[j] = narrow(v);
      }
    }
  });
}

}  // namespace kernel::cpu

namespace kernel::cpu {

// Same values as the CUDA kernel: hash_uniform(seed, i) scaled, rounded to the tensor's dtype.
void fill_random(Tensor& t, uint64_t seed, float scale) {
  const int64_t n = t.numel();
  parallel_for(n, threads_for(8 * n), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float u = hash_uniform(seed, (uint64_t)i);
      switch (t.dtype()) {
        case base::DType::kFp32: t.ptr<float>()[i] = u * scale; break;
        case base::DType::kFp16: t.ptr_u16()[i] = base::float_to_half(u * scale); break;
        case base::DType::kBf16: t.ptr_u16()[i] = base::float_to_bf16(u * scale); break;
        case base::DType::kInt8: t.ptr<int8_t>()[i] = (int8_t)std::lrint(u * 127.f); break;
        default: break;
      }
    }
  });
}

}  // namespace kernel::cpu
