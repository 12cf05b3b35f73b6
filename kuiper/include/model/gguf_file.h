// GgufFile: the GGUF container (llama.cpp's model format, versions 2 and 3), parsed and checked.
//
//   "GGUF", uint32 version, uint64 n_tensors, uint64 n_kv
//   n_kv      x (string key, uint32 value type, value)
//   n_tensors x (string name, uint32 n_dims, uint64 ne[n_dims], uint32 ggml type, uint64 offset)
//   zero padding up to general.alignment (default 32), then the tensor data, each tensor at its offset
// All little-endian. A string is a uint64 length and that many bytes (no terminator); an array is a
// uint32 element type, a uint64 count and the elements. ne[0] is the innermost (contiguous) axis.
//
// GGUF readers have a history of memory-safety bugs from malformed files (heap overflows from
// unchecked string lengths and array counts, integer overflow in size arithmetic, tensor offsets past
// the end, unbounded alignment). Here every length, count, dimension, offset and the alignment is
// checked against the bytes that remain and against overflow before it is used, and nothing is
// allocated from a count before the bytes behind it are known to exist. Metadata values are not
// copied: each key remembers where its value lies in the mapping, and the typed getters read it from
// there (their bounds were checked by parse()).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/dtype.h"
#include "base/status.h"

namespace model {

class GgufFile {
 public:
  // GGUF value types.
  enum Type : uint32_t {
    kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9,
    kU64 = 10, kI64 = 11, kF64 = 12,
  };
  struct TensorInfo {
    std::string name;
    uint32_t ggml_type = 0;
    base::DType dtype = base::DType::kFp32;  // the project's type for ggml_type
    std::vector<int64_t> ne;                 // GGUF order: ne[0] innermost
    uint64_t offset = 0;                     // absolute byte offset in the file
    uint64_t nbytes = 0;
  };

  // Parses `size` bytes at `data` (the whole file; the bytes must outlive this object). Errors are one
  // line, without the file name (the caller adds it).
  static base::Status parse(const uint8_t* data, uint64_t size, GgufFile* out);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  // Typed getters: a missing key is NotFound (so callers can apply a default), a value of another type
  // is BadModelFile naming the key. get_uint accepts any integer type holding a non-negative value,
  // get_float F32 and F64.
  base::Status get_uint(const std::string& key, uint64_t* out) const;
  base::Status get_float(const std::string& key, float* out) const;
  base::Status get_bool(const std::string& key, bool* out) const;
  base::Status get_string(const std::string& key, std::string* out) const;
  // Arrays: element count, and the elements of string, float (F32) and integer (I32 / U32) arrays.
  base::Status get_array_size(const std::string& key, uint64_t* count) const;
  base::Status get_string_array(const std::string& key, std::vector<std::string>* out) const;
  base::Status get_float_array(const std::string& key, std::vector<float>* out) const;
  base::Status get_int_array(const std::string& key, std::vector<int32_t>* out) const;

  // "Q5_K", "IQ2_XS", or "type 99" for ggml type ids this build does not know.
  static std::string ggml_type_name(uint32_t ggml_type);
  // A string from the file as it may appear in a one-line message: control bytes as \xNN, at most
  // 64 bytes of it (then "...").
  static std::string printable(const std::string& s);

 private:
  struct Kv {
    uint32_t type = 0;
    uint64_t pos = 0;        // file offset of the value (for an array: of its first element)
    uint32_t elem_type = 0;  // arrays only
    uint64_t count = 0;      // arrays only
  };
  base::Status find(const std::string& key, const Kv** kv) const;

  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::unordered_map<std::string, Kv> kv_;
  std::vector<TensorInfo> tensors_;
};

}  // namespace model
