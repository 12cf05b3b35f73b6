#include "tensor/tensor.h"

#include <glog/logging.h>

#include <cstring>
#include <sstream>

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>

#include "base/cuda_utils.h"
#endif

namespace tensor {

namespace {
std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> s(shape.size());
  int64_t acc = 1;
  for (int i = (int)shape.size() - 1; i >= 0; --i) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}
}  // namespace

base::Status Tensor::create(DType dtype, std::vector<int64_t> shape, base::DeviceAllocator* alloc, Tensor* out) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d <= 0) return base::InvalidArgument("tensor dimensions must be positive");
    n *= d;
  }
  std::shared_ptr<base::Buffer> buf;
  KP_RETURN_IF_ERROR(base::Buffer::create(alloc, (size_t)n * base::dtype_size(dtype), &buf));
  *out = from_buffer(std::move(buf), 0, dtype, std::move(shape));
  return base::Status::Ok();
}

Tensor Tensor::from_buffer(std::shared_ptr<base::Buffer> buffer, size_t byte_offset, DType dtype,
                           std::vector<int64_t> shape) {
  Tensor t;
  t.buffer_ = std::move(buffer);
  t.offset_ = byte_offset;
  t.dtype_ = dtype;
  t.strides_ = contiguous_strides(shape);
  t.shape_ = std::move(shape);
  CHECK_LE(t.offset_ + t.nbytes(), t.buffer_->size()) << "tensor view exceeds its buffer";
  return t;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

bool Tensor::is_contiguous() const {
  int64_t acc = 1;
  for (int i = (int)shape_.size() - 1; i >= 0; --i) {
    if (strides_[i] != acc) return false;
    acc *= shape_[i];
  }
  return true;
}

uint16_t* Tensor::ptr_u16() const {
  CHECK(dtype_ == DType::kFp16 || dtype_ == DType::kBf16) << "ptr_u16 on " << shape_string();
  return static_cast<uint16_t*>(data());
}

void Tensor::check_dtype(DType want) const {
  CHECK(dtype_ == want) << "tensor " << shape_string() << " accessed as " << base::dtype_name(want);
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  CHECK(is_contiguous() && ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0])
      << "bad slice [" << begin << ", " << end << ") of " << shape_string();
  std::vector<int64_t> shape = shape_;
  shape[0] = end - begin;
  const size_t row_bytes = (size_t)strides_[0] * base::dtype_size(dtype_);
  Tensor t = from_buffer(buffer_, offset_ + begin * row_bytes, dtype_, std::move(shape));
  return t;
}

Tensor Tensor::view(std::vector<int64_t> shape) const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  CHECK(is_contiguous() && n == numel()) << "bad view of " << shape_string();
  return from_buffer(buffer_, offset_, dtype_, std::move(shape));
}

base::Status Tensor::copy_to(Tensor& dst) const {
  if (dst.dtype() != dtype_ || dst.numel() != numel() || !is_contiguous() || !dst.is_contiguous())
    return base::InvalidArgument("copy_to: " + shape_string() + " -> " + dst.shape_string());
  if (device_type() == DeviceType::kCPU && dst.device_type() == DeviceType::kCPU) {
    std::memcpy(dst.data(), data(), nbytes());
    return base::Status::Ok();
  }
#ifdef KUIPER_WITH_CUDA
  CUDA_CHECK(cudaMemcpy(dst.data(), data(), nbytes(), cudaMemcpyDefault));
  return base::Status::Ok();
#else
  return base::Unsupported("this build has no CUDA support");
#endif
}

std::string Tensor::shape_string() const {
  std::ostringstream os;
  os << base::dtype_name(dtype_) << "[";
  for (size_t i = 0; i < shape_.size(); ++i) os << (i ? ", " : "") << shape_[i];
  os << "] " << base::device_name(device_type());
  if (device_type() == DeviceType::kCUDA) os << ":" << device_id();
  return os.str();
}

}  // namespace tensor
