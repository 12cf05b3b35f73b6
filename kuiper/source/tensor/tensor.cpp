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

template <typename B>
base::Status BasicTensor<B>::create(DType dtype, const Shape& shape, base::DeviceAllocator* alloc, BasicTensor* out) {
  for (int64_t d : shape)
    if (d <= 0) return base::InvalidArgument("tensor dimensions must be positive");
  if (base::is_block_type(dtype) && (shape.empty() || shape[shape.size() - 1] % base::dtype_block_elems(dtype) != 0))
    return base::InvalidArgument(std::string("a row of ") + base::dtype_name(dtype) + " must be whole blocks of " +
                                 std::to_string(base::dtype_block_elems(dtype)));
  std::shared_ptr<base::Buffer> buf;
  KP_RETURN_IF_ERROR(base::Buffer::create(alloc, (size_t)base::dtype_bytes(dtype, shape.numel()), &buf));
  *out = from_buffer(std::move(buf), 0, dtype, shape);
  return base::Status::Ok();
}

template <typename B>
BasicTensor<B> BasicTensor<B>::from_buffer(std::shared_ptr<B> buffer, size_t byte_offset, DType dtype,
                                           const Shape& shape) {
  BasicTensor t;
  t.buffer_ = std::move(buffer);
  t.offset_ = byte_offset;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  CHECK(!shape.empty() || !base::is_block_type(dtype)) << "a block-type tensor needs a row axis";
  CHECK(shape.empty() || shape[shape.size() - 1] % base::dtype_block_elems(dtype) == 0)
      << "a row of " << base::dtype_name(dtype) << " must be whole blocks: " << shape;
  CHECK_LE(t.offset_ + t.nbytes(), t.buffer_->size()) << "tensor view exceeds its buffer";
  return t;
}

template <typename B>
int64_t BasicTensor<B>::dim(int i) const {
  const int axis = i < 0 ? shape_.size() + i : i;
  CHECK(axis >= 0 && axis < shape_.size()) << "axis " << i << " of " << shape_string();
  return shape_[axis];
}

template <typename B>
bool BasicTensor<B>::is_contiguous() const {
  int64_t acc = 1;
  for (int i = shape_.size() - 1; i >= 0; --i) {
    if (strides_[i] != acc) return false;
    acc *= shape_[i];
  }
  return true;
}

template <typename B>
typename BasicTensor<B>::template Ptr<uint16_t> BasicTensor<B>::ptr_u16() const {
  CHECK(dtype_ == DType::kFp16 || dtype_ == DType::kBf16) << "ptr_u16 on " << shape_string();
  return static_cast<Ptr<uint16_t>>(data());
}

template <typename B>
void BasicTensor<B>::check_dtype(DType want) const {
  CHECK(dtype_ == want) << "tensor " << shape_string() << " accessed as " << base::dtype_name(want);
}

template <typename B>
BasicTensor<B> BasicTensor<B>::slice_rows(int64_t begin, int64_t end) const {
  CHECK(is_contiguous() && ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0])
      << "bad slice [" << begin << ", " << end << ") of " << shape_string();
  Shape shape = shape_;
  shape[0] = end - begin;
  const size_t row_bytes = (size_t)base::dtype_bytes(dtype_, strides_[0]);
  return from_buffer(buffer_, offset_ + begin * row_bytes, dtype_, shape);
}

template <typename B>
BasicTensor<B> BasicTensor<B>::view(const Shape& shape) const {
  CHECK(is_contiguous() && shape.numel() == numel()) << "bad view of " << shape_string();
  return from_buffer(buffer_, offset_, dtype_, shape);
}

template <typename B>
base::Status BasicTensor<B>::copy_to(Tensor& dst) const {
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

template <typename B>
std::string BasicTensor<B>::shape_string() const {
  std::ostringstream os;
  os << base::dtype_name(dtype_) << shape_ << " " << base::device_name(device_type());
  if (device_type() == DeviceType::kCUDA) os << ":" << device_id();
  return os.str();
}

template class BasicTensor<base::Buffer>;
template class BasicTensor<const base::Buffer>;

}  // namespace tensor
