#include "model/gguf_file.h"

#include <cstdio>
#include <cstring>
#include <limits>

namespace model {

namespace {

using base::DType;
using base::Status;

constexpr uint32_t kMaxDims = 4;              // ggml's GGML_MAX_DIMS
constexpr uint64_t kMaxKeyBytes = 1 << 16;    // metadata keys and tensor names are short identifiers
constexpr uint64_t kMaxNameBytes = 1 << 10;
constexpr uint64_t kMaxAlignment = 1 << 16;   // a power of two; every writer uses 32

Status bad(const std::string& what) { return base::BadModelFile(what); }

// Reads little-endian values from [p, end), each read checked against the bytes that remain.
class Cursor {
 public:
  Cursor(const uint8_t* base, uint64_t size, uint64_t pos) : base_(base), size_(size), pos_(pos) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  template <typename T> Status read(T* out, const char* what) {
    if (left() < sizeof(T)) return bad(std::string("truncated: the file ends inside ") + what);
    std::memcpy(out, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::Ok();
  }
  // Skips n bytes, which must exist.
  Status skip(uint64_t n, const char* what) {
    if (n > left()) return bad(std::string("truncated: ") + what + " runs past the end of the file");
    pos_ += n;
    return Status::Ok();
  }
  // A string of at most `max` bytes (the length is checked before anything is copied).
  Status string(std::string* out, uint64_t max, const char* what) {
    uint64_t len = 0;
    KP_RETURN_IF_ERROR(read(&len, what));
    if (len > left()) return bad(std::string(what) + " of " + std::to_string(len) + " bytes runs past the end of the file");
    if (len > max) return bad(std::string(what) + " is " + std::to_string(len) + " bytes long (at most " + std::to_string(max) + ")");
    out->assign(reinterpret_cast<const char*>(base_ + pos_), len);
    pos_ += len;
    return Status::Ok();
  }
  // Skips a string, returning where its bytes start and how many there are.
  Status skip_string(const char* what) {
    uint64_t len = 0;
    KP_RETURN_IF_ERROR(read(&len, what));
    return skip(len, what);
  }

 private:
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_;
};

// Bytes of one scalar of a GGUF value type; 0 for strings and arrays.
uint64_t scalar_bytes(uint32_t type) {
  switch (type) {
    case GgufFile::kU8: case GgufFile::kI8: case GgufFile::kBool: return 1;
    case GgufFile::kU16: case GgufFile::kI16: return 2;
    case GgufFile::kU32: case GgufFile::kI32: case GgufFile::kF32: return 4;
    case GgufFile::kU64: case GgufFile::kI64: case GgufFile::kF64: return 8;
    default: return 0;
  }
}

bool known_type(uint32_t type) { return type <= GgufFile::kF64; }

// The project's DType for a ggml type id, false when this build does not read that type.
bool dtype_of(uint32_t ggml_type, DType* out) {
  switch (ggml_type) {
    case 0: *out = DType::kFp32; return true;
    case 1: *out = DType::kFp16; return true;
    case 2: *out = DType::kQ4_0; return true;
    case 8: *out = DType::kQ8_0; return true;
    case 12: *out = DType::kQ4_K; return true;
    case 14: *out = DType::kQ6_K; return true;
    case 30: *out = DType::kBf16; return true;
    default: return false;
  }
}

// Skips one value of `type` (an array's elements included), checking every length on the way.
Status skip_value(Cursor& c, uint32_t type, const std::string& key, uint32_t* elem_type, uint64_t* count) {
  if (type == GgufFile::kString) return c.skip_string(("the value of " + key).c_str());
  if (type != GgufFile::kArray) {
    if (!known_type(type)) return bad("metadata key " + key + " has unknown value type " + std::to_string(type));
    return c.skip(scalar_bytes(type), ("the value of " + key).c_str());
  }
  KP_RETURN_IF_ERROR(c.read(elem_type, "an array header"));
  KP_RETURN_IF_ERROR(c.read(count, "an array header"));
  if (*elem_type == GgufFile::kArray) return bad("metadata key " + key + " is an array of arrays, which is not supported");
  if (!known_type(*elem_type)) return bad("metadata key " + key + " has unknown element type " + std::to_string(*elem_type));
  if (*elem_type == GgufFile::kString) {
    // Every string takes at least its 8-byte length: a count beyond that cannot be honest.
    if (*count > c.left() / 8) return bad("metadata key " + key + ": " + std::to_string(*count) + " strings cannot fit in the file");
    for (uint64_t i = 0; i < *count; ++i) KP_RETURN_IF_ERROR(c.skip_string(("a string of " + key).c_str()));
    return Status::Ok();
  }
  const uint64_t es = scalar_bytes(*elem_type);
  if (*count > c.left() / es) return bad("metadata key " + key + ": an array of " + std::to_string(*count) + " elements runs past the end of the file");
  return c.skip(*count * es, key.c_str());
}

uint64_t align_up(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }  // n < 2^63, a <= 2^16

}  // namespace

std::string GgufFile::printable(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < 64; ++i) {
    const unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7f) {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += (char)c;
    }
  }
  return s.size() > 64 ? out + "..." : out;
}

std::string GgufFile::ggml_type_name(uint32_t t) {
  static const char* const kNames[] = {
      "F32",  "F16",  "Q4_0",   "Q4_1",   "Q4_2",    "Q4_3",  "Q5_0",  "Q5_1",  "Q8_0",    "Q8_1",  "Q2_K",
      "Q3_K", "Q4_K", "Q5_K",   "Q6_K",   "Q8_K",    "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
      "IQ2_S", "IQ4_XS", "I8",  "I16",    "I32",     "I64",   "F64",   "IQ1_M", "BF16",    "Q4_0_4_4", "Q4_0_4_8",
      "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4"};
  if (t < sizeof(kNames) / sizeof(kNames[0])) return kNames[t];
  return "type " + std::to_string(t);
}

Status GgufFile::parse(const uint8_t* data, uint64_t size, GgufFile* out) {
  GgufFile& g = *out;
  g = GgufFile();
  g.base_ = data;
  g.size_ = size;
  Cursor c(data, size, 0);
  char magic[4];
  KP_RETURN_IF_ERROR(c.read(&magic, "the header"));
  if (std::memcmp(magic, "GGUF", 4) != 0) return bad("not a GGUF file (no GGUF magic)");
  KP_RETURN_IF_ERROR(c.read(&g.version_, "the header"));
  if (g.version_ != 2 && g.version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(g.version_);
    if (swapped == 2 || swapped == 3) return bad("a big-endian GGUF file, which is not supported");
    return bad("GGUF version " + std::to_string(g.version_) + " is not supported (versions 2 and 3 are)");
  }
  uint64_t n_tensors = 0, n_kv = 0;
  KP_RETURN_IF_ERROR(c.read(&n_tensors, "the header"));
  KP_RETURN_IF_ERROR(c.read(&n_kv, "the header"));
  // A key-value pair takes at least 12 bytes (key length, type) and a tensor entry at least 24: counts
  // that cannot fit are refused before anything is reserved for them.
  if (n_kv > c.left() / 12) return bad(std::to_string(n_kv) + " metadata entries cannot fit in the file");
  if (n_tensors > c.left() / 24) return bad(std::to_string(n_tensors) + " tensor entries cannot fit in the file");

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    KP_RETURN_IF_ERROR(c.string(&key, kMaxKeyBytes, "a metadata key"));
    Kv kv;
    KP_RETURN_IF_ERROR(c.read(&kv.type, "a metadata entry"));
    kv.pos = c.pos();
    KP_RETURN_IF_ERROR(skip_value(c, kv.type, printable(key), &kv.elem_type, &kv.count));
    if (kv.type == kArray) kv.pos += 12;  // past the element type and count
    if (!g.kv_.emplace(key, kv).second) return bad("metadata key " + printable(key) + " appears twice");
  }

  auto al = g.kv_.find("general.alignment");
  if (al != g.kv_.end()) {
    uint64_t a = 0;
    KP_RETURN_IF_ERROR(g.get_uint("general.alignment", &a));
    if (a == 0 || (a & (a - 1)) != 0 || a > kMaxAlignment)
      return bad("general.alignment " + std::to_string(a) + " is not a power of two up to " + std::to_string(kMaxAlignment));
    g.alignment_ = a;
  }

  g.tensors_.reserve(n_tensors);
  std::unordered_map<std::string, size_t> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    KP_RETURN_IF_ERROR(c.string(&t.name, kMaxNameBytes, "a tensor name"));
    const std::string name = printable(t.name);  // for messages
    uint32_t n_dims = 0;
    KP_RETURN_IF_ERROR(c.read(&n_dims, "a tensor entry"));
    if (n_dims == 0 || n_dims > kMaxDims)
      return bad("tensor " + name + " has " + std::to_string(n_dims) + " dimensions (1 to " + std::to_string(kMaxDims) + " allowed)");
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = 0;
      KP_RETURN_IF_ERROR(c.read(&ne, "a tensor entry"));
      if (ne == 0 || ne > (uint64_t)std::numeric_limits<int64_t>::max() / (uint64_t)numel)
        return bad("tensor " + name + " has a zero or overflowing shape");
      numel *= (int64_t)ne;
      t.ne.push_back((int64_t)ne);
    }
    KP_RETURN_IF_ERROR(c.read(&t.ggml_type, "a tensor entry"));
    uint64_t rel = 0;
    KP_RETURN_IF_ERROR(c.read(&rel, "a tensor entry"));
    if (!dtype_of(t.ggml_type, &t.dtype))
      return base::Unsupported("tensor " + name + " has type " + ggml_type_name(t.ggml_type) +
                               ", which llama_infer does not read (it reads F32, F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K)");
    const int64_t block = base::dtype_block_elems(t.dtype);
    if (t.ne[0] % block != 0)
      return bad("tensor " + name + ": its rows of " + std::to_string(t.ne[0]) + " values are not whole " +
                 ggml_type_name(t.ggml_type) + " blocks of " + std::to_string(block));
    // Every type takes at least half a byte per value: a tensor of more than twice the file's bytes in
    // values cannot be in it. Below that, numel * 4 (F32) cannot overflow.
    if ((uint64_t)numel / 2 > size) return bad("tensor " + name + " is larger than the file");
    t.nbytes = base::dtype_bytes(t.dtype, numel);
    if (rel % g.alignment_ != 0) return bad("tensor " + name + " is not aligned to " + std::to_string(g.alignment_) + " bytes");
    t.offset = rel;  // made absolute below, once the data start is known
    if (!names.emplace(t.name, g.tensors_.size()).second) return bad("tensor " + name + " appears twice");
    g.tensors_.push_back(std::move(t));
  }

  const uint64_t data_start = align_up(c.pos(), g.alignment_);
  if (data_start > size) return bad("truncated: the tensor data starts past the end of the file");
  for (TensorInfo& t : g.tensors_) {
    if (t.offset > size - data_start || t.nbytes > size - data_start - t.offset)
      return bad("tensor " + printable(t.name) + " lies outside the file (truncated download?)");
    t.offset += data_start;
  }
  return Status::Ok();
}

Status GgufFile::find(const std::string& key, const Kv** kv) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) return base::NotFound("metadata key " + key + " is missing");
  *kv = &it->second;
  return Status::Ok();
}

Status GgufFile::get_uint(const std::string& key, uint64_t* out) const {
  const Kv* kv;
  KP_RETURN_IF_ERROR(find(key, &kv));
  const uint8_t* p = base_ + kv->pos;
  int64_t s = 0;
  uint64_t u = 0;
  bool is_signed = false;
  switch (kv->type) {
    case kU8: u = p[0]; break;
    case kU16: { uint16_t v; std::memcpy(&v, p, 2); u = v; break; }
    case kU32: { uint32_t v; std::memcpy(&v, p, 4); u = v; break; }
    case kU64: std::memcpy(&u, p, 8); break;
    case kI8: { int8_t v; std::memcpy(&v, p, 1); s = v; is_signed = true; break; }
    case kI16: { int16_t v; std::memcpy(&v, p, 2); s = v; is_signed = true; break; }
    case kI32: { int32_t v; std::memcpy(&v, p, 4); s = v; is_signed = true; break; }
    case kI64: std::memcpy(&s, p, 8); is_signed = true; break;
    default: return bad("metadata key " + key + " is not an integer");
  }
  if (is_signed) {
    if (s < 0) return bad("metadata key " + key + " is negative (" + std::to_string(s) + ")");
    u = (uint64_t)s;
  }
  *out = u;
  return Status::Ok();
}

Status GgufFile::get_float(const std::string& key, float* out) const {
  const Kv* kv;
  KP_RETURN_IF_ERROR(find(key, &kv));
  if (kv->type == kF32) {
    std::memcpy(out, base_ + kv->pos, 4);
  } else if (kv->type == kF64) {
    double d;
    std::memcpy(&d, base_ + kv->pos, 8);
    *out = (float)d;
  } else {
    return bad("metadata key " + key + " is not a float");
  }
  return Status::Ok();
}

Status GgufFile::get_bool(const std::string& key, bool* out) const {
  const Kv* kv;
  KP_RETURN_IF_ERROR(find(key, &kv));
  if (kv->type != kBool) return bad("metadata key " + key + " is not a bool");
  *out = base_[kv->pos] != 0;
  return Status::Ok();
}

Status GgufFile::get_string(const std::string& key, std::string* out) const {
  const Kv* kv;
  KP_RETURN_IF_ERROR(find(key, &kv));
  if (kv->type != kString) return bad("metadata key " + key + " is not a string");
  uint64_t len;
  std::memcpy(&len, base_ + kv->pos, 8);  // checked against the file by parse()
  out->assign(reinterpret_cast<const char*>(base_ + kv->pos + 8), len);
  return Status::Ok();
}

Status GgufFile::get_array_size(const std::string& key, uint64_t* count) const {
  const Kv* kv;
  KP_RETURN_IF_ERROR(find(key, &kv));
  if (kv->type != kArray) return bad("metadata key " + key + " is not an array");
  *count = kv->count;
  return Status::Ok();
}

Status GgufFile::get_string_array(const std::string& key, std::vector<std::string>* out) const {
  const Kv* kv;
  KP_RETURN_IF_ERROR(find(key, &kv));
  if (kv->type != kArray || kv->elem_type != kString) return bad("metadata key " + key + " is not an array of strings");
  out->clear();
  out->reserve(kv->count);  // parse() walked every string: the count is backed by bytes
  uint64_t pos = kv->pos;
  for (uint64_t i = 0; i < kv->count; ++i) {
    uint64_t len;
    std::memcpy(&len, base_ + pos, 8);
    out->emplace_back(reinterpret_cast<const char*>(base_ + pos + 8), len);
    pos += 8 + len;
  }
  return Status::Ok();
}

Status GgufFile::get_float_array(const std::string& key, std::vector<float>* out) const {
  const Kv* kv;
  KP_RETURN_IF_ERROR(find(key, &kv));
  if (kv->type != kArray || kv->elem_type != kF32) return bad("metadata key " + key + " is not an array of F32");
  out->resize(kv->count);
  if (kv->count) std::memcpy(out->data(), base_ + kv->pos, kv->count * 4);
  return Status::Ok();
}

Status GgufFile::get_int_array(const std::string& key, std::vector<int32_t>* out) const {
  const Kv* kv;
  KP_RETURN_IF_ERROR(find(key, &kv));
  if (kv->type != kArray || (kv->elem_type != kI32 && kv->elem_type != kU32))
    return bad("metadata key " + key + " is not an array of 32-bit integers");
  out->resize(kv->count);
  if (kv->count) std::memcpy(out->data(), base_ + kv->pos, kv->count * 4);
  return Status::Ok();
}

}  // namespace model
