#include "model/config.h"

#include <cmath>
#include <sstream>

namespace model {

base::Status ModelConfig::validate() const {
  auto bad = [](const std::string& m) { return base::BadModelFile(m); };
  const struct { const char* name; int32_t v; int32_t max; } sizes[] = {
      {"dim", dim, 1 << 16},          {"hidden_dim", hidden_dim, 1 << 18}, {"n_layers", n_layers, 1024},
      {"n_heads", n_heads, 1024},     {"n_kv_heads", n_kv_heads, 1024},    {"head_dim", head_dim, 1024},
      {"vocab_size", vocab_size, 1 << 22}, {"max_seq_len", max_seq_len, 1 << 22}};
  for (const auto& s : sizes)
    if (s.v <= 0 || s.v > s.max)
      return bad(std::string(s.name) + " = " + std::to_string(s.v) + " is outside (0, " + std::to_string(s.max) + "]");
  if (n_heads % n_kv_heads != 0) return bad("n_kv_heads must divide n_heads");
  if (head_dim % 2 != 0) return bad("head_dim must be even for RoPE");
  if (!(norm_eps > 0 && norm_eps < 1)) return bad("norm_eps must be in (0, 1)");
  if (!(rope_theta > 1 && std::isfinite(rope_theta))) return bad("rope_theta must be > 1");
  if (rope_scaling.enabled &&
      !(rope_scaling.factor >= 1 && rope_scaling.low_freq_factor > 0 &&
        rope_scaling.high_freq_factor > rope_scaling.low_freq_factor && rope_scaling.original_max_position > 0))
    return bad("invalid rope_scaling parameters");
  if (!rope_freq_factors.empty()) {
    if (rope_freq_factors.size() != (size_t)head_dim / 2) return bad("rope frequency factors must number head_dim / 2");
    if (rope_scaling.enabled) return bad("rope frequency factors and llama3 rope_scaling exclude each other");
    for (float f : rope_freq_factors)
      if (!(f > 0 && std::isfinite(f))) return bad("rope frequency factors must be positive and finite");
  }
  if (bos_id < 0 || bos_id >= vocab_size) return bad("bos_id outside the vocabulary");
  for (int32_t e : eos_ids)
    if (e < 0 || e >= vocab_size) return bad("eos id outside the vocabulary");
  if (weight_dtype == base::DType::kInt32) return bad("int32 weights are not supported");
  if (weight_dtype == base::DType::kInt8) {
    if (group_size <= 0 || dim % group_size || hidden_dim % group_size || q_dim() % group_size)
      return bad("int8 group_size " + std::to_string(group_size) + " must divide dim, hidden_dim and q_dim");
  }
  return base::Status::Ok();
}

std::string ModelConfig::summary() const {
  std::ostringstream os;
  os << (family == Family::kLlama3 ? "llama3" : "llama2") << " dim " << dim << " hidden " << hidden_dim
     << " layers " << n_layers << " heads " << n_heads << "/" << n_kv_heads << " head_dim " << head_dim
     << " vocab " << vocab_size << " ctx " << max_seq_len << " weights " << base::dtype_name(weight_dtype);
  if (weight_dtype == base::DType::kInt8) os << " (group " << group_size << ")";
  return os.str();
}

std::vector<float> rope_cos_sin_table(const ModelConfig& cfg, int32_t max_seq_len) {
  const int half = cfg.head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int j = 0; j < half; ++j) {
    double f = std::pow((double)cfg.rope_theta, -2.0 * j / cfg.head_dim);
    if (!cfg.rope_freq_factors.empty()) f /= cfg.rope_freq_factors[j];
    if (cfg.rope_scaling.enabled) {
      const auto& s = cfg.rope_scaling;
      const double wavelen = 2 * M_PI / f;
      const double low_wavelen = s.original_max_position / s.low_freq_factor;
      const double high_wavelen = s.original_max_position / s.high_freq_factor;
      if (wavelen > low_wavelen) {
        f = f / s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (s.original_max_position / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        f = (1 - smooth) * f / s.factor + smooth * f;
      }
    }
    inv_freq[j] = f;
  }
  std::vector<float> table((size_t)max_seq_len * half * 2);
  for (int32_t p = 0; p < max_seq_len; ++p) {
    for (int j = 0; j < half; ++j) {
      const double angle = p * inv_freq[j];
      table[((size_t)p * half + j) * 2] = (float)std::cos(angle);
      table[((size_t)p * half + j) * 2 + 1] = (float)std::sin(angle);
    }
  }
  return table;
}

}  // namespace model
