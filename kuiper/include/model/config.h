// ModelConfig: every hyperparameter of a Llama-family model, read from the model file at run time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "base/status.h"

namespace model {

enum class Family { kLlama2, kLlama3 };  // tokenizer conventions and chat template

// Llama 3.1 frequency scaling of RoPE ("rope_type": "llama3").
struct RopeScaling {
  bool enabled = false;
  float factor = 1.f;
  float low_freq_factor = 1.f;
  float high_freq_factor = 4.f;
  int32_t original_max_position = 8192;
};

struct ModelConfig {
  Family family = Family::kLlama2;
  int32_t dim = 0;          // model width
  int32_t hidden_dim = 0;   // FFN width
  int32_t n_layers = 0;
  int32_t n_heads = 0;      // query heads
  int32_t n_kv_heads = 0;   // key/value heads (grouped-query attention when < n_heads)
  int32_t head_dim = 0;
  int32_t vocab_size = 0;
  int32_t max_seq_len = 0;  // context the model was trained for
  float norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  RopeScaling rope_scaling;
  // GGUF's rope_freqs tensor (how llama.cpp's converter stores Llama 3.1 scaling) or its linear
  // rope.scaling.factor: inv_freq[j] is divided by rope_freq_factors[j]. Empty: no factors.
  std::vector<float> rope_freq_factors;  // [head_dim / 2] or empty
  bool tied_embeddings = false;
  int32_t bos_id = 1;
  std::vector<int32_t> eos_ids{2};
  base::DType weight_dtype = base::DType::kFp32;
  int32_t group_size = 0;   // int8 only

  // Sizes positive, products without overflow, heads dividing evenly, group size dividing the widths.
  base::Status validate() const;
  int32_t q_dim() const { return n_heads * head_dim; }
  int32_t kv_dim() const { return n_kv_heads * head_dim; }
  std::string summary() const;  // one line for logs
};

// cos/sin table for RoPE, fp32 [max_seq_len, head_dim / 2, 2], with the family's frequency scaling:
//   inv_freq[j] = theta^(-2j / head_dim), then for Llama 3.1 wavelengths above
//   original_max_position / low_freq_factor are divided by `factor`, those below
//   original_max_position / high_freq_factor kept, and those between interpolated smoothly;
//   with rope_freq_factors (GGUF), inv_freq[j] / rope_freq_factors[j] instead.
// Angles are computed in double precision, then rounded once.
std::vector<float> rope_cos_sin_table(const ModelConfig& cfg, int32_t max_seq_len);

}  // namespace model
