// Helpers shared by the test suites: where the test data is, whether a GPU is present, seeded random
// tensors, and an element-wise comparison with atol + rtol * |ref| that prints the first mismatches.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "op/kernels.h"
#include "tensor/tensor.h"

namespace testutil {

// ../shared/models next to the checkout ("" when absent).
std::string models_dir();
// The project source tree (for committed fixtures under test/fixtures).
std::string source_dir();
// Folder of the built programs (llama_infer, llama_bench).
std::string bin_dir();
// Visible CUDA GPUs (0 in a CPU-only build or without a driver).
int gpu_count();

// Sets CUDA_MODULE_LOADING=EAGER for this process (effective only before the first CUDA call);
// returns true. For tests that run several ranks on one GPU.
bool eager_kernel_loading();

// Host fp32 tensor filled with uniform values in [lo, hi) from a fixed seed.
tensor::Tensor random_cpu(std::vector<int64_t> shape, uint64_t seed, float lo = -1.f, float hi = 1.f);
// Host tensor of another dtype (fp32/fp16/bf16) holding `src` converted (rounded) element-wise.
tensor::Tensor to_dtype_cpu(const tensor::Tensor& src, base::DType dtype);
// Host fp32 copy of any float tensor (any device, any float dtype).
tensor::Tensor to_fp32_cpu(const tensor::Tensor& src);
// Copy of a host tensor onto GPU `device` (same dtype).
tensor::Tensor to_gpu(const tensor::Tensor& src, int device = 0);

// Checks |got - ref| <= atol + rtol * |ref| for every element; on failure reports the count and the
// first few mismatching indices with both values.
::testing::AssertionResult all_close(const std::vector<float>& got, const std::vector<double>& ref, double atol,
                                     double rtol);
::testing::AssertionResult all_close(const tensor::Tensor& got, const std::vector<double>& ref, double atol,
                                     double rtol);

// The paged attention entry points (op/kernels.h) take a cache as [n_pages * page_size, kv_dim] with its
// page size; the kernel tests build their pools as [n_pages, page_size, kv_dim]. One sequence's chunk at
// pos, and a batch of one query per sequence of lengths `lens`.
base::Status attention_paged(const tensor::Tensor& q, const tensor::Tensor& kp, const tensor::Tensor& vp,
                             const tensor::Tensor& table, const tensor::Tensor& pos, int n_heads, int n_kv_heads,
                             int hd, tensor::Tensor& scratch, tensor::Tensor& out, kernel::Stream stream);
base::Status attention_decode_batch(const tensor::Tensor& q, const tensor::Tensor& kp, const tensor::Tensor& vp,
                                    const tensor::Tensor& tables, const tensor::Tensor& lens, int n_heads,
                                    int n_kv_heads, int hd, tensor::Tensor& scratch, tensor::Tensor& out,
                                    kernel::Stream stream);

}  // namespace testutil

#define KP_SKIP_WITHOUT_GPU()                                                 \
  do {                                                                        \
    if (testutil::gpu_count() == 0) GTEST_SKIP() << "needs a CUDA GPU; none is visible"; \
  } while (0)

#define KP_SKIP_WITHOUT_MODELS()                                                                   \
  do {                                                                                             \
    if (testutil::models_dir().empty())                                                            \
      GTEST_SKIP() << "needs ../shared/models beside the checkout (test data); it is absent";      \
  } while (0)
