#include "test_util.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <sstream>

#ifdef KUIPER_WITH_CUDA
#include "base/cuda_utils.h"
#endif

namespace testutil {

// The compiled-in paths can be overridden (tests run from a copied tree, e.g. on the GPU machine).
static std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

std::string models_dir() {
  const std::string d = env_or("KUIPER_SHARED_DIR", KUIPER_SHARED_DIR) + "/models";
  struct stat st;
  return stat(d.c_str(), &st) == 0 && S_ISDIR(st.st_mode) ? d : "";
}

std::string source_dir() { return env_or("KUIPER_SOURCE_DIR", KUIPER_SOURCE_DIR); }
std::string bin_dir() { return env_or("KUIPER_BIN_DIR", KUIPER_BIN_DIR); }

bool eager_kernel_loading() { return setenv("CUDA_MODULE_LOADING", "EAGER", 1) == 0; }

int gpu_count() {
#ifdef KUIPER_WITH_CUDA
  return base::cuda_device_count();
#else
  return 0;
#endif
}

tensor::Tensor random_cpu(std::vector<int64_t> shape, uint64_t seed, float lo, float hi) {
  tensor::Tensor t;
  EXPECT_TRUE(tensor::Tensor::create(base::DType::kFp32, std::move(shape), base::CPUAllocator::get(), &t).ok());
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  float* p = t.ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
  return t;
}

tensor::Tensor to_dtype_cpu(const tensor::Tensor& src, base::DType dtype) {
  tensor::Tensor f = to_fp32_cpu(src);
  tensor::Tensor t;
  EXPECT_TRUE(tensor::Tensor::create(dtype, f.shape(), base::CPUAllocator::get(), &t).ok());
  const float* p = f.ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (dtype) {
      case base::DType::kFp32: t.ptr<float>()[i] = p[i]; break;
      case base::DType::kFp16: t.ptr_u16()[i] = base::float_to_half(p[i]); break;
      case base::DType::kBf16: t.ptr_u16()[i] = base::float_to_bf16(p[i]); break;
      default: ADD_FAILURE() << "to_dtype_cpu: not a float dtype"; return t;
    }
  }
  return t;
}

tensor::Tensor to_fp32_cpu(const tensor::Tensor& src) {
  tensor::Tensor host = src;
  if (src.device_type() != base::DeviceType::kCPU) {
    EXPECT_TRUE(tensor::Tensor::create(src.dtype(), src.shape(), base::CPUAllocator::get(), &host).ok());
    EXPECT_TRUE(src.copy_to(host).ok());
  }
  tensor::Tensor out;
  EXPECT_TRUE(tensor::Tensor::create(base::DType::kFp32, src.shape(), base::CPUAllocator::get(), &out).ok());
  for (int64_t i = 0; i < out.numel(); ++i) {
    float v = 0;
    switch (host.dtype()) {
      case base::DType::kFp32: v = host.ptr<float>()[i]; break;
      case base::DType::kFp16: v = base::half_to_float(host.ptr_u16()[i]); break;
      case base::DType::kBf16: v = base::bf16_to_float(host.ptr_u16()[i]); break;
      default: ADD_FAILURE() << "to_fp32_cpu: not a float dtype"; return out;
    }
    out.ptr<float>()[i] = v;
  }
  return out;
}

tensor::Tensor to_gpu(const tensor::Tensor& src, int device) {
  tensor::Tensor t;
  EXPECT_TRUE(tensor::Tensor::create(src.dtype(), src.shape(), base::CUDAAllocator::get(device), &t).ok());
  EXPECT_TRUE(src.copy_to(t).ok());
  return t;
}

::testing::AssertionResult all_close(const std::vector<float>& got, const std::vector<double>& ref, double atol,
                                     double rtol) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " != reference size " << ref.size();
  size_t bad = 0;
  std::ostringstream first;
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs((double)got[i] - ref[i]);
    const double tol = atol + rtol * std::fabs(ref[i]);
    if (!(err <= tol)) {  // also catches NaN
      if (bad < 8) first << "\n  [" << i << "] got " << got[i] << " ref " << ref[i] << " err " << err;
      ++bad;
    }
    if (err > worst || std::isnan(err)) worst = err;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " elements outside atol " << atol
                                       << " + rtol " << rtol << " * |ref| (worst error " << worst << "); first:"
                                       << first.str();
}

::testing::AssertionResult all_close(const tensor::Tensor& got, const std::vector<double>& ref, double atol,
                                     double rtol) {
  tensor::Tensor f = to_fp32_cpu(got);
  std::vector<float> v(f.ptr<float>(), f.ptr<float>() + f.numel());
  return all_close(v, ref, atol, rtol);
}

namespace {
tensor::Tensor slots_of(const tensor::Tensor& pages) {
  return pages.view({pages.dim(0) * pages.dim(1), pages.dim(2)});
}
}  // namespace

base::Status attention_paged(const tensor::Tensor& q, const tensor::Tensor& kp, const tensor::Tensor& vp,
                             const tensor::Tensor& table, const tensor::Tensor& pos, int n_heads, int n_kv_heads,
                             int hd, tensor::Tensor& scratch, tensor::Tensor& out, kernel::Stream stream) {
  return kernel::paged_prefill_attention(q, slots_of(kp), slots_of(vp), table, pos, (int)kp.dim(1), n_heads,
                                         n_kv_heads, hd, scratch, out, stream);
}

base::Status attention_decode_batch(const tensor::Tensor& q, const tensor::Tensor& kp, const tensor::Tensor& vp,
                                    const tensor::Tensor& tables, const tensor::Tensor& lens, int n_heads,
                                    int n_kv_heads, int hd, tensor::Tensor& scratch, tensor::Tensor& out,
                                    kernel::Stream stream) {
  return kernel::paged_decode_attention(q, slots_of(kp), slots_of(vp), tables, lens, (int)kp.dim(1), n_heads,
                                        n_kv_heads, hd, scratch, out, stream);
}

}  // namespace testutil
