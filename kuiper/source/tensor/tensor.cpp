#include "tensor/tensor.h"

#include <glog/logging.h>

#include <cstring>
#include <sstream>

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>

#include "base/cuda_utils.h"
#endif

namespace tensor {

void Shape::assign(const int64_t* dims, size_t n) {
  CHECK_LE(n, (size_t)kMaxDims) << "a tensor has at most " << kMaxDims << " axes";
  n_ = (int)n;
  for (size_t i = 0; i < n; ++i) d_[i] = dims[i];
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int64_t d : *this) n *= d;
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (n_ != o.n_) return false;
  for (int i = 0; i < n_; ++i)
    if (d_[i] != o.d_[i]) return false;
  return true;
}

std::ostream& operator<<(std::ostream& os, const Shape& s) {
  os << "[";
  for (int i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  return os << "]";
}

namespace {
// Row-major strides, in elements: the last axis is contiguous.
Shape contiguous_strides(const Shape& shape) {
  Shape s = shape;
  int64_t acc = 1;
  for (int i = shape.size() - 1; i >= 0; --i) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}
}  // namespace

base::Status Tensor::create(DType dtype, const Shape& shape, base::DeviceAllocator* alloc, Tensor* out) {
  for (int64_t d : shape)
    if (d <= 0) return base::InvalidArgument("tensor dimensions must be positive");
  std::shared_ptr<base::Buffer> buf;
  KP_RETURN_IF_ERROR(base::Buffer::create(alloc, (size_t)shape.numel() * base::dtype_size(dtype), &buf));
  *out = from_buffer(std::move(buf), 0, dtype, shape);
  return base::Status::Ok();
}

Tensor Tensor::from_buffer(std::shared_ptr<base::Buffer> buffer, size_t byte_offset, DType dtype,
                           const Shape& shape) {
  Tensor t;
  t.buffer_ = std::move(buffer);
  t.offset_ = byte_offset;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  CHECK_LE(t.offset_ + t.nbytes(), t.buffer_->size()) << "tensor view exceeds its buffer";
  return t;
}

int64_t Tensor::dim(int i) const {
  const int axis = i < 0 ? shape_.size() + i : i;
  CHECK(axis >= 0 && axis < shape_.size()) << "axis " << i << " of " << shape_string();
  return shape_[axis];
}

bool Tensor::is_contiguous() const {
  int64_t acc = 1;
  for (int i = shape_.size() - 1; i >= 0; --i) {
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
  Shape shape = shape_;
  shape[0] = end - begin;
  const size_t row_bytes = (size_t)strides_[0] * base::dtype_size(dtype_);
  return from_buffer(buffer_, offset_ + begin * row_bytes, dtype_, shape);
}

Tensor Tensor::view(const Shape& shape) const {
  CHECK(is_contiguous() && shape.numel() == numel()) << "bad view of " << shape_string();
  return from_buffer(buffer_, offset_, dtype_, shape);
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
  os << base::dtype_name(dtype_) << shape_ << " " << base::device_name(device_type());
  if (device_type() == DeviceType::kCUDA) os << ":" << device_id();
  return os.str();
}

}  // namespace tensor
