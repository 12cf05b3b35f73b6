// Tensor: a typed, shaped, strided view of a Buffer on one device; ConstTensor: the same, read-only.
//
// Tensors are cheap handles: copying one shares the buffer. Shape and strides are stored inline
// (Shape, below), so neither a copy nor a view (`slice_rows`, `view`) allocates: the decode loop makes
// hundreds of views a token, and the KV cache manager hands out per-layer K/V views of its one block.
// `ptr<T>()` checks that T matches the dtype, so a kernel cannot read fp16 data as float by mistake.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "base/buffer.h"
#include "base/dtype.h"
#include "base/status.h"

namespace tensor {

using base::DeviceType;
using base::DType;

// Maps a C++ element type to its DType for ptr<T>() checks. uint16_t stands for both fp16 and bf16
// on the host; device code uses its own half types through data().
template <typename T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::kFp32; };
template <> struct DTypeOf<int8_t> { static constexpr DType value = DType::kInt8; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::kInt32; };

// The sizes (or strides) of a tensor's axes, held inline: at most kMaxDims axes, no heap. The engine's
// tensors have 1 to 3 axes; more is a programming error and aborts.
class Shape {
 public:
  static constexpr int kMaxDims = 4;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) { assign(dims.begin(), dims.size()); }
  Shape(const std::vector<int64_t>& dims) { assign(dims.data(), dims.size()); }  // NOLINT: implicit on purpose

  int size() const { return n_; }
  bool empty() const { return n_ == 0; }
  int64_t operator[](int i) const { return d_[i]; }
  int64_t& operator[](int i) { return d_[i]; }
  const int64_t* begin() const { return d_.data(); }
  const int64_t* end() const { return d_.data() + n_; }
  int64_t numel() const;  // product of the sizes (1 for no axes)
  std::vector<int64_t> to_vector() const { return {begin(), end()}; }

  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }

 private:
  void assign(const int64_t* dims, size_t n);
  std::array<int64_t, kMaxDims> d_{};
  int n_ = 0;
};

// "[4, 4096]", for messages and for GoogleTest.
std::ostream& operator<<(std::ostream& os, const Shape& s);

// BasicTensor<B>: the tensor handle over a buffer of type B, in two flavours:
//   Tensor      = BasicTensor<base::Buffer>        reads and writes (activations, caches, outputs);
//   ConstTensor = BasicTensor<const base::Buffer>  reads only: data() and ptr<T>() give const
//                 pointers. Weights are ConstTensors, and the read-only mapping of the model file
//                 exists only as a `const Buffer`, so a write to it does not compile.
// A Tensor converts implicitly to a ConstTensor (a kernel's weight argument); nothing converts back.
template <typename B> class BasicTensor {
 public:
  static constexpr bool kReadOnly = std::is_const_v<B>;
  // T* for a Tensor, const T* for a ConstTensor.
  template <typename T> using Ptr = std::conditional_t<kReadOnly, const T*, T*>;

  BasicTensor() = default;
  // Tensor -> ConstTensor: the same view, read-only.
  template <typename Other, typename = std::enable_if_t<kReadOnly && std::is_same_v<Other, base::Buffer>>>
  BasicTensor(const BasicTensor<Other>& t)  // NOLINT: implicit on purpose
      : buffer_(t.buffer()), offset_(t.byte_offset()), dtype_(t.dtype()), shape_(t.shape()), strides_(t.strides()) {}

  // Allocates a contiguous tensor from `alloc`.
  static base::Status create(DType dtype, const Shape& shape, base::DeviceAllocator* alloc, BasicTensor* out);
  // Wraps `buffer` starting at `byte_offset` with a contiguous shape.
  static BasicTensor from_buffer(std::shared_ptr<B> buffer, size_t byte_offset, DType dtype, const Shape& shape);

  bool empty() const { return buffer_ == nullptr; }
  DType dtype() const { return dtype_; }
  DeviceType device_type() const { return buffer_ ? buffer_->device_type() : DeviceType::kCPU; }
  int device_id() const { return buffer_ ? buffer_->device_id() : 0; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }  // in elements
  int64_t dim(int i) const;  // size of axis i; negative i counts from the end
  int ndim() const { return shape_.size(); }
  int64_t numel() const { return shape_.numel(); }
  // Bytes of the data; for a block type the last axis is whole blocks (checked where tensors are made).
  size_t nbytes() const { return (size_t)base::dtype_bytes(dtype_, numel()); }
  bool is_contiguous() const;
  const std::shared_ptr<B>& buffer() const { return buffer_; }
  size_t byte_offset() const { return offset_; }

  // Untyped pointer to the first element.
  Ptr<void> data() const { return buffer_ ? static_cast<Ptr<char>>(buffer_->data()) + offset_ : nullptr; }
  // Typed pointer; aborts (programming error, not user input) if T does not match the dtype.
  template <typename T> Ptr<T> ptr() const {
    check_dtype(DTypeOf<T>::value);
    return static_cast<Ptr<T>>(data());
  }
  // fp16 / bf16 data as raw 16-bit words.
  Ptr<uint16_t> ptr_u16() const;

  // Rows [begin, end) of the first axis; contiguous tensors only. No allocation.
  BasicTensor slice_rows(int64_t begin, int64_t end) const;
  // The same memory with another contiguous shape of equal element count.
  BasicTensor view(const Shape& shape) const;

  // Copies all elements into `dst` (same dtype and shape, any devices). Synchronous.
  base::Status copy_to(BasicTensor<base::Buffer>& dst) const;

  std::string shape_string() const;  // e.g. "fp16[4, 4096] cuda:0"

 private:
  void check_dtype(DType want) const;
  std::shared_ptr<B> buffer_;
  size_t offset_ = 0;  // bytes from the buffer start
  DType dtype_ = DType::kFp32;
  Shape shape_;
  Shape strides_;
};

using Tensor = BasicTensor<base::Buffer>;
using ConstTensor = BasicTensor<const base::Buffer>;
extern template class BasicTensor<base::Buffer>;
extern template class BasicTensor<const base::Buffer>;

}  // namespace tensor
