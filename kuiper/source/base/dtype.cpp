#include "base/dtype.h"

namespace base {

bool parse_dtype(const std::string& s, DType* out) {
  static const struct { const char* name; DType type; } kNames[] = {
      {"fp32", DType::kFp32}, {"fp16", DType::kFp16}, {"bf16", DType::kBf16},
      {"int8", DType::kInt8}, {"int32", DType::kInt32},
      {"q8_0", DType::kQ8_0}, {"q4_0", DType::kQ4_0}, {"q4_k", DType::kQ4_K}, {"q6_k", DType::kQ6_K}};
  for (const auto& n : kNames) {
    if (s == n.name) {
      *out = n.type;
      return true;
    }
  }
  return false;
}

}  // namespace base
