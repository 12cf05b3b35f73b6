// GGUF files of architecture `llama` as a ModelFile: hyperparameters from the `llama.*` keys, tensors
// renamed to the project's names, the tokenizer from `tokenizer.ggml.*`, the chat template from
// `tokenizer.chat_template` (the container itself is parsed and checked by gguf_file.h).
//
// Names: token_embd -> tok_embeddings, output_norm -> norm, output -> output (absent: tied
// embeddings), blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_down,
// ffn_up} -> layers.N.{attention_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3}. GGUF lists dimensions
// innermost first, so a [out, in] weight is ne = {in, out}: shapes are reversed.
//
// Rotary layout: llama.cpp's converter (convert_hf_to_gguf.py) undoes Hugging Face's permutation of
// the q/k rows, so GGUF Llama weights are in Meta's interleaved-pair layout, the one this project's
// rope kernel uses: wq and wk are taken as they are. (Checked end to end: test_gguf compares a model
// read from GGUF with the same Hugging Face fixture's logits computed by transformers.)
//
// RoPE scaling: Llama 3.1's comes as the rope_freqs tensor (one divisor per frequency, computed by
// the converter from config.json's rope_scaling), linear scaling as llama.rope.scaling.factor; both
// become ModelConfig::rope_freq_factors. YaRN and other kinds are refused.
#include <cstring>
#include <set>

#include "model/gguf_file.h"
#include "model/model_file.h"

namespace model {

namespace {

using base::DType;
using base::Status;

// "blk.12.attn_q.weight" -> "layers.12.wq"; "" for a name that is not a Llama tensor. Sets *rope for
// rope_freqs.weight, which is configuration rather than a weight.
std::string project_name(const std::string& name, int32_t n_layers, bool* rope) {
  *rope = name == "rope_freqs.weight";
  if (name == "token_embd.weight") return "tok_embeddings";
  if (name == "output_norm.weight") return "norm";
  if (name == "output.weight") return "output";
  if (name.compare(0, 4, "blk.") != 0) return "";
  size_t i = 4;
  int64_t layer = 0;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9' && i < 4 + 6) layer = layer * 10 + (name[i++] - '0');
  if (i == 4 || i >= name.size() || name[i] != '.' || layer >= n_layers || (name[4] == '0' && i > 5)) return "";
  static const struct { const char* gguf; const char* ours; } kNames[] = {
      {"attn_norm", "attention_norm"}, {"attn_q", "wq"},  {"attn_k", "wk"},     {"attn_v", "wv"},
      {"attn_output", "wo"},           {"ffn_norm", "ffn_norm"}, {"ffn_gate", "w1"}, {"ffn_down", "w2"},
      {"ffn_up", "w3"}};
  const std::string rest = name.substr(i + 1);
  for (const auto& n : kNames)
    if (rest == std::string(n.gguf) + ".weight") return "layers." + std::to_string(layer) + "." + n.ours;
  return "";
}

}  // namespace

Status ModelFile::parse_gguf() {
  gguf_ = true;
  GgufFile g;
  Status parsed = GgufFile::parse(base_, size_, &g);
  if (!parsed.ok()) return Status(parsed.code(), path_ + ": " + parsed.message());
  auto error = [&](const Status& s) { return Status(s.code(), path_ + ": " + s.message()); };

  std::string arch;
  Status s = g.get_string("general.architecture", &arch);
  if (!s.ok()) return error(s);
  if (arch != "llama")
    return base::Unsupported(path_ + ": GGUF architecture '" + GgufFile::printable(arch) +
                             "' is not supported (llama_infer runs architecture llama: Llama 2, 3, 3.1, 3.2, "
                             "TinyLlama, Code Llama, Mistral 7B)");

  // Integer keys into int32 fields; `def` < 0 means required.
  auto int_key = [&](const std::string& key, int64_t def, int32_t* out) -> Status {
    uint64_t v = 0;
    Status st = g.get_uint(key, &v);
    if (st.code() == base::StatusCode::kNotFound && def >= 0) {
      *out = (int32_t)def;
      return Status::Ok();
    }
    if (!st.ok()) return error(st);
    if (v > (uint64_t)INT32_MAX) return fail(key + " = " + std::to_string(v) + " is out of range");
    *out = (int32_t)v;
    return Status::Ok();
  };
  auto float_key = [&](const std::string& key, float def, float* out) -> Status {
    Status st = g.get_float(key, out);
    if (st.code() == base::StatusCode::kNotFound) {
      *out = def;
      return Status::Ok();
    }
    return st.ok() ? st : error(st);
  };

  ModelConfig& c = config_;
  KP_RETURN_IF_ERROR(int_key("llama.embedding_length", -1, &c.dim));
  KP_RETURN_IF_ERROR(int_key("llama.block_count", -1, &c.n_layers));
  KP_RETURN_IF_ERROR(int_key("llama.feed_forward_length", -1, &c.hidden_dim));
  KP_RETURN_IF_ERROR(int_key("llama.attention.head_count", -1, &c.n_heads));
  KP_RETURN_IF_ERROR(int_key("llama.attention.head_count_kv", c.n_heads, &c.n_kv_heads));
  KP_RETURN_IF_ERROR(int_key("llama.context_length", -1, &c.max_seq_len));
  if (c.n_heads <= 0) return fail("llama.attention.head_count must be positive");
  KP_RETURN_IF_ERROR(int_key("llama.attention.key_length", c.dim / c.n_heads, &c.head_dim));
  int32_t value_len = 0, rope_dims = 0;
  KP_RETURN_IF_ERROR(int_key("llama.attention.value_length", c.head_dim, &value_len));
  KP_RETURN_IF_ERROR(int_key("llama.rope.dimension_count", c.head_dim, &rope_dims));
  if (value_len != c.head_dim) return fail("llama.attention.value_length differs from key_length, which is not supported");
  if (rope_dims != c.head_dim)
    return fail("llama.rope.dimension_count " + std::to_string(rope_dims) + " is not the head size " +
                std::to_string(c.head_dim) + " (partial rotary embeddings are not supported)");
  s = g.get_float("llama.attention.layer_norm_rms_epsilon", &c.norm_eps);
  if (!s.ok()) return error(s);
  KP_RETURN_IF_ERROR(float_key("llama.rope.freq_base", 10000.f, &c.rope_theta));

  // RoPE scaling: none, linear (a factor for every frequency), or Llama 3.1's rope_freqs tensor.
  std::string scaling = "none";
  s = g.get_string("llama.rope.scaling.type", &scaling);
  if (!s.ok() && s.code() != base::StatusCode::kNotFound) return error(s);
  float linear = 1.f;
  if (scaling == "linear") {
    KP_RETURN_IF_ERROR(float_key("llama.rope.scaling.factor", 1.f, &linear));
  } else if (scaling != "none") {
    return base::Unsupported(path_ + ": llama.rope.scaling.type '" + GgufFile::printable(scaling) +
                             "' is not supported (none and linear are)");
  }
  if (g.has("llama.rope.scale_linear")) KP_RETURN_IF_ERROR(float_key("llama.rope.scale_linear", 1.f, &linear));
  if (!(linear >= 1.f && linear < 1e6f)) return fail("rope scaling factor " + std::to_string(linear) + " is out of range");

  // Tokenizer.
  Vocabulary& v = vocab_;
  s = g.get_string("tokenizer.ggml.model", &v.model);
  if (!s.ok()) return error(s);
  if (v.model == "llama") {
    c.family = Family::kLlama2;
  } else if (v.model == "gpt2") {
    c.family = Family::kLlama3;
  } else {
    return base::Unsupported(path_ + ": tokenizer.ggml.model '" + GgufFile::printable(v.model) +
                             "' is not supported (llama: SentencePiece, gpt2: byte-level BPE)");
  }
  s = g.get_string_array("tokenizer.ggml.tokens", &v.tokens);
  if (!s.ok()) return error(s);
  if (v.tokens.empty() || v.tokens.size() > (size_t)INT32_MAX) return fail("tokenizer.ggml.tokens is empty");
  c.vocab_size = (int32_t)v.tokens.size();
  if (g.has("tokenizer.ggml.scores")) {
    s = g.get_float_array("tokenizer.ggml.scores", &v.scores);
    if (!s.ok()) return error(s);
    if (v.scores.size() != v.tokens.size()) return fail("tokenizer.ggml.scores and tokenizer.ggml.tokens differ in length");
  }
  if (g.has("tokenizer.ggml.token_type")) {
    s = g.get_int_array("tokenizer.ggml.token_type", &v.types);
    if (!s.ok()) return error(s);
    if (v.types.size() != v.tokens.size()) return fail("tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length");
  }
  if (g.has("tokenizer.ggml.pre")) {
    s = g.get_string("tokenizer.ggml.pre", &v.pre);
    if (!s.ok()) return error(s);
  }
  const bool spm = c.family == Family::kLlama2;
  KP_RETURN_IF_ERROR(int_key("tokenizer.ggml.bos_token_id", spm ? 1 : -1, &v.bos_id));
  KP_RETURN_IF_ERROR(int_key("tokenizer.ggml.eos_token_id", spm ? 2 : -1, &v.eos_id));
  KP_RETURN_IF_ERROR(int_key("tokenizer.ggml.unknown_token_id", spm ? 0 : INT32_MAX, &v.unk_id));
  const std::pair<const char*, bool*> flags[] = {{"tokenizer.ggml.add_space_prefix", &v.add_space_prefix},
                                                 {"tokenizer.ggml.remove_extra_whitespaces", &v.remove_extra_whitespaces}};
  for (const auto& [key, dst] : flags) {
    s = g.get_bool(key, dst);
    if (!s.ok() && s.code() != base::StatusCode::kNotFound) return error(s);
  }
  if (v.bos_id >= c.vocab_size || v.eos_id >= c.vocab_size)
    return fail("tokenizer.ggml.bos_token_id / eos_token_id outside the vocabulary");
  if (!spm) v.unk_id = -1;
  tok_type_ = TokenizerType::kVocabulary;
  c.bos_id = v.bos_id;
  // Generation stops at the end-of-sequence token and at the other end-of-turn tokens the file names.
  c.eos_ids = {v.eos_id};
  int32_t eot = -1;
  KP_RETURN_IF_ERROR(int_key("tokenizer.ggml.eot_token_id", INT32_MAX, &eot));
  if (eot != INT32_MAX) {
    if (eot >= c.vocab_size) return fail("tokenizer.ggml.eot_token_id outside the vocabulary");
    if (eot != v.eos_id) c.eos_ids.push_back(eot);
  }
  if (!spm) {  // Llama 3's end-of-text, end-of-turn and end-of-message tokens, wherever they are
    const std::set<std::string> ends = {"<|end_of_text|>", "<|eot_id|>", "<|eom_id|>"};
    for (int32_t id = 0; id < c.vocab_size; ++id)
      if (ends.count(v.tokens[id]) && id != v.eos_id && id != eot) c.eos_ids.push_back(id);
  }
  if (g.has("tokenizer.chat_template")) {
    s = g.get_string("tokenizer.chat_template", &chat_template_);
    if (!s.ok()) return error(s);
  }

  // Tensors.
  if (c.n_layers <= 0 || c.n_layers > 1024) return fail("llama.block_count " + std::to_string(c.n_layers) + " is outside (0, 1024]");
  bool has_output = false;
  for (const GgufFile::TensorInfo& t : g.tensors()) {
    bool rope = false;
    const std::string name = project_name(t.name, c.n_layers, &rope);
    if (rope) {
      if (t.dtype != DType::kFp32 || t.ne.size() != 1 || t.ne[0] != c.head_dim / 2)
        return fail("rope_freqs.weight must be F32 [head_dim / 2]");
      c.rope_freq_factors.resize(t.ne[0]);
      std::memcpy(c.rope_freq_factors.data(), base_ + t.offset, t.nbytes);
      continue;
    }
    if (name.empty())
      return base::Unsupported(path_ + ": tensor " + GgufFile::printable(t.name) +
                               " is not part of the Llama architecture llama_infer runs");
    has_output |= name == "output";
    std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());
    KP_RETURN_IF_ERROR(add_entry(TensorEntry{name, t.dtype, shape, t.offset, t.nbytes}));
  }
  c.tied_embeddings = !has_output;
  if (linear != 1.f) {
    if (!c.rope_freq_factors.empty()) return fail("both rope_freqs and a linear rope scaling factor, which is not supported");
    c.rope_freq_factors.assign(c.head_dim / 2, linear);
  }
  const TensorEntry* q = find("layers.0.wq");
  const TensorEntry* emb = find("tok_embeddings");
  if (q == nullptr && emb == nullptr) return fail("tensor blk.0.attn_q.weight is missing");
  c.weight_dtype = q != nullptr ? q->dtype : emb->dtype;
  c.group_size = 0;
  s = c.validate();
  if (!s.ok()) return fail(s.message());
  return Status::Ok();
}

}  // namespace model
