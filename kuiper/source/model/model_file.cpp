#include "model/model_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

namespace model {

namespace {

using base::DType;
using base::Status;
using json = nlohmann::json;

constexpr char kMagic[4] = {'L', 'L', 'M', 'I'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kTensorAlign = 256;

// a * b, or false on int64 overflow / non-positive factors.
bool checked_mul(int64_t a, int64_t b, int64_t* out) {
  if (a <= 0 || b <= 0 || a > std::numeric_limits<int64_t>::max() / b) return false;
  *out = a * b;
  return true;
}

// Typed getters: a missing or mistyped key is an error naming it.
Status get_int(const json& j, const char* key, int32_t* out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) return base::BadModelFile(std::string("config.") + key + " missing or not an integer");
  const int64_t v = it->get<int64_t>();
  if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
    return base::BadModelFile(std::string("config.") + key + " out of range");
  *out = (int32_t)v;
  return Status::Ok();
}

Status get_float(const json& j, const char* key, float* out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return base::BadModelFile(std::string("config.") + key + " missing or not a number");
  *out = it->get<float>();
  return Status::Ok();
}

Status parse_config(const json& c, ModelConfig* cfg) {
  if (!c.is_object()) return base::BadModelFile("header has no config object");
  auto fam = c.find("family");
  if (fam == c.end() || !fam->is_string()) return base::BadModelFile("config.family missing");
  if (*fam == "llama2") cfg->family = Family::kLlama2;
  else if (*fam == "llama3") cfg->family = Family::kLlama3;
  else return base::BadModelFile("unknown family '" + fam->get<std::string>() + "'");
  KP_RETURN_IF_ERROR(get_int(c, "dim", &cfg->dim));
  KP_RETURN_IF_ERROR(get_int(c, "hidden_dim", &cfg->hidden_dim));
  KP_RETURN_IF_ERROR(get_int(c, "n_layers", &cfg->n_layers));
  KP_RETURN_IF_ERROR(get_int(c, "n_heads", &cfg->n_heads));
  KP_RETURN_IF_ERROR(get_int(c, "n_kv_heads", &cfg->n_kv_heads));
  KP_RETURN_IF_ERROR(get_int(c, "head_dim", &cfg->head_dim));
  KP_RETURN_IF_ERROR(get_int(c, "vocab_size", &cfg->vocab_size));
  KP_RETURN_IF_ERROR(get_int(c, "max_seq_len", &cfg->max_seq_len));
  KP_RETURN_IF_ERROR(get_float(c, "norm_eps", &cfg->norm_eps));
  KP_RETURN_IF_ERROR(get_float(c, "rope_theta", &cfg->rope_theta));
  auto rs = c.find("rope_scaling");
  if (rs != c.end() && !rs->is_null()) {
    const auto type = rs->find("type");  // not value("type", ""): that throws when "type" is not a string
    if (!rs->is_object() || type == rs->end() || *type != "llama3")
      return base::BadModelFile("unsupported rope_scaling (only type llama3)");
    cfg->rope_scaling.enabled = true;
    KP_RETURN_IF_ERROR(get_float(*rs, "factor", &cfg->rope_scaling.factor));
    KP_RETURN_IF_ERROR(get_float(*rs, "low_freq_factor", &cfg->rope_scaling.low_freq_factor));
    KP_RETURN_IF_ERROR(get_float(*rs, "high_freq_factor", &cfg->rope_scaling.high_freq_factor));
    KP_RETURN_IF_ERROR(get_int(*rs, "original_max_position_embeddings", &cfg->rope_scaling.original_max_position));
  }
  auto tied = c.find("tied_embeddings");
  if (tied == c.end() || !tied->is_boolean()) return base::BadModelFile("config.tied_embeddings missing");
  cfg->tied_embeddings = tied->get<bool>();
  KP_RETURN_IF_ERROR(get_int(c, "bos_id", &cfg->bos_id));
  auto eos = c.find("eos_ids");
  if (eos == c.end() || !eos->is_array() || eos->empty()) return base::BadModelFile("config.eos_ids missing");
  cfg->eos_ids.clear();
  for (const auto& e : *eos) {
    // Range-checked as int64 first: get<int32_t> would wrap 2^32 + 2 to 2.
    if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= cfg->vocab_size)
      return base::BadModelFile("config.eos_ids must hold token ids below vocab_size");
    cfg->eos_ids.push_back(e.get<int32_t>());
  }
  auto wd = c.find("weight_dtype");
  if (wd == c.end() || !wd->is_string() || !base::parse_dtype(wd->get<std::string>(), &cfg->weight_dtype) ||
      base::is_block_type(cfg->weight_dtype))  // block types come in GGUF files only
    return base::BadModelFile("config.weight_dtype missing or unknown");
  KP_RETURN_IF_ERROR(get_int(c, "group_size", &cfg->group_size));
  return cfg->validate();
}

}  // namespace

Status ModelFile::fail(const std::string& what) const { return base::BadModelFile(path_ + ": " + what); }

Status ModelFile::open(const std::string& path, std::unique_ptr<ModelFile>* out) {
  std::unique_ptr<ModelFile> mf(new ModelFile());
  mf->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return base::NotFound(path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return mf->fail("not a regular file");
  }
  mf->size_ = (uint64_t)st.st_size;
  if (mf->size_ < 28) {
    ::close(fd);
    return mf->fail("file is too small (" + std::to_string(mf->size_) + " bytes) to be a model");
  }
  void* p = mmap(nullptr, mf->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return mf->fail(std::string("mmap failed: ") + std::strerror(errno));
  const uint64_t size = mf->size_;
  mf->keepalive_ = std::shared_ptr<void>(p, [size](void* q) { munmap(q, size); });
  mf->base_ = static_cast<const uint8_t*>(p);

  if (std::memcmp(mf->base_, "GGUF", 4) == 0) {
    KP_RETURN_IF_ERROR(mf->parse_gguf());
  } else if (std::memcmp(mf->base_, kMagic, 4) == 0) {
    // The header is checked key by key; a json exception that still escapes (a value of an unexpected
    // type read somewhere) is a malformed header, not a crash.
    try {
      KP_RETURN_IF_ERROR(mf->parse_llmi());
    } catch (const json::exception& e) {
      return mf->fail(std::string("malformed header: ") + e.what());
    }
  } else {
    KP_RETURN_IF_ERROR(mf->parse_llama2c());
  }
  *out = std::move(mf);
  return Status::Ok();
}

ModelFile::~ModelFile() = default;

Status ModelFile::synthetic(const ModelConfig& cfg, std::unique_ptr<ModelFile>* out) {
  KP_RETURN_IF_ERROR(cfg.validate());
  std::unique_ptr<ModelFile> mf(new ModelFile());
  mf->path_ = "(synthetic " + cfg.summary() + ")";
  mf->config_ = cfg;
  mf->size_ = std::numeric_limits<uint64_t>::max();
  const int64_t D = cfg.dim, F = cfg.hidden_dim, Q = cfg.q_dim(), KV = cfg.kv_dim(), V = cfg.vocab_size;
  const DType wd = cfg.weight_dtype;
  auto add = [&](const std::string& name, DType dt, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return mf->add_entry(TensorEntry{name, dt, shape, 0, base::dtype_bytes(dt, n)});
  };
  auto linear = [&](const std::string& name, int64_t o, int64_t i) -> Status {
    KP_RETURN_IF_ERROR(add(name, wd, {o, i}));
    if (wd == DType::kInt8) KP_RETURN_IF_ERROR(add(name + ".scales", DType::kFp32, {o, i / cfg.group_size}));
    return Status::Ok();
  };
  KP_RETURN_IF_ERROR(add("tok_embeddings", wd == DType::kInt8 ? DType::kFp16 : wd, {V, D}));
  for (int l = 0; l < cfg.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    KP_RETURN_IF_ERROR(add(p + "attention_norm", DType::kFp32, {D}));
    KP_RETURN_IF_ERROR(linear(p + "wq", Q, D));
    KP_RETURN_IF_ERROR(linear(p + "wk", KV, D));
    KP_RETURN_IF_ERROR(linear(p + "wv", KV, D));
    KP_RETURN_IF_ERROR(linear(p + "wo", D, Q));
    KP_RETURN_IF_ERROR(add(p + "ffn_norm", DType::kFp32, {D}));
    KP_RETURN_IF_ERROR(linear(p + "w1", F, D));
    KP_RETURN_IF_ERROR(linear(p + "w2", D, F));
    KP_RETURN_IF_ERROR(linear(p + "w3", F, D));
  }
  KP_RETURN_IF_ERROR(add("norm", DType::kFp32, {D}));
  if (!cfg.tied_embeddings) KP_RETURN_IF_ERROR(linear("output", V, D));
  *out = std::move(mf);
  return Status::Ok();
}

Status ModelFile::add_entry(TensorEntry e) {
  int64_t n = 1;
  for (int64_t d : e.shape)
    if (!checked_mul(n, d, &n)) return fail("tensor " + e.name + " has a non-positive or overflowing shape");
  if (e.shape.empty() || e.shape.back() % base::dtype_block_elems(e.dtype) != 0)
    return fail("tensor " + e.name + ": its rows are not whole " + base::dtype_name(e.dtype) + " blocks");
  // Element types: n times the element size, checked. Block types take at most 34 bytes per 32 values,
  // so n < 2^63 values need fewer than 2^64 bytes.
  int64_t bytes = 0;
  if (!base::is_block_type(e.dtype) && !checked_mul(n, (int64_t)base::dtype_size(e.dtype), &bytes))
    return fail("tensor " + e.name + " has an overflowing shape");
  if (base::dtype_bytes(e.dtype, n) != e.nbytes)
    return fail("tensor " + e.name + ": nbytes " + std::to_string(e.nbytes) + " does not match its shape");
  if (e.offset > size_ || e.nbytes > size_ - e.offset)
    return fail("tensor " + e.name + " lies outside the file (truncated download?)");
  if (index_.count(e.name)) return fail("tensor " + e.name + " appears twice");
  index_[e.name] = tensors_.size();
  tensors_.push_back(std::move(e));
  return Status::Ok();
}

void ModelFile::release_pages(const TensorEntry& e) const {
  if (base_ == nullptr) return;
  const uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  const uint64_t begin = (e.offset + page - 1) / page * page, end = (e.offset + e.nbytes) / page * page;
  if (end > begin) madvise(const_cast<uint8_t*>(base_) + begin, end - begin, MADV_DONTNEED);
}

const TensorEntry* ModelFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Status ModelFile::get(const std::string& name, const std::vector<int64_t>& shape, const TensorEntry** out) const {
  const TensorEntry* e = find(name);
  if (e == nullptr) return fail("tensor " + name + " is missing");
  if (e->shape != shape) {
    std::string want, got;
    for (int64_t d : shape) want += std::to_string(d) + " ";
    for (int64_t d : e->shape) got += std::to_string(d) + " ";
    return fail("tensor " + name + " has shape [" + got + "], expected [" + want + "]");
  }
  *out = e;
  return Status::Ok();
}

std::string ModelFile::tokenizer_blob() const {
  if (tok_type_ == TokenizerType::kNone || tok_type_ == TokenizerType::kVocabulary) return "";
  return std::string(reinterpret_cast<const char*>(base_ + tok_offset_), tok_nbytes_);
}

Status ModelFile::parse_llmi() {
  uint32_t version;
  uint64_t header_len;
  std::memcpy(&version, base_ + 4, 4);
  if (version != kVersion)
    return fail("format version " + std::to_string(version) + " is not supported (this build reads version " +
                std::to_string(kVersion) + ")");
  if (size_ < 16) return fail("truncated header");
  std::memcpy(&header_len, base_ + 8, 8);
  if (header_len == 0 || header_len > size_ - 16) return fail("header length exceeds the file (truncated?)");
  const json h = json::parse(base_ + 16, base_ + 16 + header_len, nullptr, /*allow_exceptions=*/false);
  if (h.is_discarded() || !h.is_object()) return fail("header is not valid JSON");
  const uint64_t data_start = (16 + header_len + 4095) / 4096 * 4096;
  if (data_start > size_) return fail("data section starts beyond the end of the file (truncated)");

  if (!h.contains("config")) return fail("header has no config");
  Status s = parse_config(h["config"], &config_);
  if (!s.ok()) return fail(s.message());

  auto ts = h.find("tensors");
  if (ts == h.end() || !ts->is_array()) return fail("header has no tensor table");
  for (const auto& t : *ts) {
    TensorEntry e;
    if (!t.is_object() || !t.contains("name") || !t["name"].is_string() || !t.contains("dtype") ||
        !t["dtype"].is_string() || !t.contains("shape") || !t["shape"].is_array() || !t.contains("offset") ||
        !t["offset"].is_number_unsigned() || !t.contains("nbytes") || !t["nbytes"].is_number_unsigned())
      return fail("malformed tensor table entry");
    e.name = t["name"].get<std::string>();
    if (!base::parse_dtype(t["dtype"].get<std::string>(), &e.dtype) || e.dtype == DType::kInt32 ||
        base::is_block_type(e.dtype))
      return fail("tensor " + e.name + " has unknown dtype '" + t["dtype"].get<std::string>() + "'");
    // int8 weights are read with config.group_size, which only an int8 file defines (0 elsewhere).
    if (e.dtype == DType::kInt8 && config_.weight_dtype != DType::kInt8)
      return fail("tensor " + e.name + " is int8 but config.weight_dtype is " + base::dtype_name(config_.weight_dtype));
    for (const auto& d : t["shape"]) {
      if (!d.is_number_integer()) return fail("tensor " + e.name + " has a non-integer dimension");
      e.shape.push_back(d.get<int64_t>());
    }
    const uint64_t rel = t["offset"].get<uint64_t>();
    if (rel % kTensorAlign != 0) return fail("tensor " + e.name + " is not 256-byte aligned");
    if (rel > size_ - data_start) return fail("tensor " + e.name + " lies outside the file (truncated?)");
    e.offset = data_start + rel;
    e.nbytes = t["nbytes"].get<uint64_t>();
    KP_RETURN_IF_ERROR(add_entry(std::move(e)));
  }

  auto tok = h.find("tokenizer");
  if (tok != h.end() && !tok->is_null()) {
    if (!tok->is_object() || !tok->contains("type") || !(*tok)["type"].is_string() || !tok->contains("offset") ||
        !(*tok)["offset"].is_number_unsigned() || !tok->contains("nbytes") || !(*tok)["nbytes"].is_number_unsigned())
      return fail("malformed tokenizer entry");
    const std::string type = (*tok)["type"].get<std::string>();
    if (type == "sentencepiece") tok_type_ = TokenizerType::kSentencePiece;
    else if (type == "tiktoken") tok_type_ = TokenizerType::kTiktoken;
    else return fail("unknown tokenizer type '" + type + "'");
    const uint64_t rel = (*tok)["offset"].get<uint64_t>();
    tok_nbytes_ = (*tok)["nbytes"].get<uint64_t>();
    if (rel > size_ - data_start || tok_nbytes_ > size_ - data_start - rel)
      return fail("tokenizer lies outside the file (truncated?)");
    tok_offset_ = data_start + rel;
  }
  return Status::Ok();
}

// llama2.c "version 0": int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (negative:
// untied classifier), seq_len; then fp32 weights, each kind for all layers in one slab.
Status ModelFile::parse_llama2c() {
  int32_t h[7];
  std::memcpy(h, base_, sizeof(h));
  llama2c_ = true;
  ModelConfig& c = config_;
  c.family = Family::kLlama2;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.tied_embeddings = h[5] > 0;
  c.vocab_size = h[5] > 0 ? h[5] : (h[5] == std::numeric_limits<int32_t>::min() ? 0 : -h[5]);
  c.max_seq_len = h[6];
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.f;
  c.bos_id = 1;
  // llama2.c models are trained with BOS between documents, so they end a story by emitting BOS.
  c.eos_ids = {2, 1};
  c.weight_dtype = DType::kFp32;
  if (c.dim <= 0 || c.n_heads <= 0 || c.dim % c.n_heads != 0)
    return fail("not a model file: no LLMI magic, and not a llama2.c checkpoint (bad header sizes)");
  Status s = c.validate();
  if (!s.ok()) return fail("not a valid llama2.c checkpoint: " + s.message());

  const int64_t L = c.n_layers, D = c.dim, F = c.hidden_dim, V = c.vocab_size, Q = c.q_dim(), KV = c.kv_dim();
  const int64_t half_rot = (int64_t)c.max_seq_len * c.head_dim / 2;
  uint64_t off = 28;
  // Checks that `floats` more floats fit in the file before laying out an entry.
  auto take = [&](int64_t floats, uint64_t* at) -> Status {
    const uint64_t bytes = (uint64_t)floats * 4;
    if (off > size_ || bytes > size_ - off)
      return fail("truncated: the llama2.c header promises more weights than the file holds");
    *at = off;
    off += bytes;
    return Status::Ok();
  };
  auto slab = [&](const char* name, std::vector<int64_t> per_layer) -> Status {
    int64_t n = 1;
    for (int64_t d : per_layer) n *= d;
    uint64_t at = 0;
    KP_RETURN_IF_ERROR(take(n * L, &at));
    for (int64_t l = 0; l < L; ++l) {
      TensorEntry e{"layers." + std::to_string(l) + "." + name, DType::kFp32, per_layer, at + (uint64_t)(l * n * 4),
                    (uint64_t)n * 4};
      KP_RETURN_IF_ERROR(add_entry(std::move(e)));
    }
    return Status::Ok();
  };
  auto single = [&](const char* name, std::vector<int64_t> shape) -> Status {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    uint64_t at = 0;
    KP_RETURN_IF_ERROR(take(n, &at));
    return add_entry(TensorEntry{name, DType::kFp32, shape, at, (uint64_t)n * 4});
  };
  KP_RETURN_IF_ERROR(single("tok_embeddings", {V, D}));
  KP_RETURN_IF_ERROR(slab("attention_norm", {D}));
  KP_RETURN_IF_ERROR(slab("wq", {Q, D}));
  KP_RETURN_IF_ERROR(slab("wk", {KV, D}));
  KP_RETURN_IF_ERROR(slab("wv", {KV, D}));
  KP_RETURN_IF_ERROR(slab("wo", {D, Q}));
  KP_RETURN_IF_ERROR(slab("ffn_norm", {D}));
  KP_RETURN_IF_ERROR(slab("w1", {F, D}));
  KP_RETURN_IF_ERROR(slab("w2", {D, F}));
  KP_RETURN_IF_ERROR(slab("w3", {F, D}));
  KP_RETURN_IF_ERROR(single("norm", {D}));
  uint64_t unused;
  KP_RETURN_IF_ERROR(take(2 * half_rot, &unused));  // freq_cis_real, freq_cis_imag: RoPE is computed instead
  if (!c.tied_embeddings) KP_RETURN_IF_ERROR(single("output", {V, D}));
  if (off != size_)
    return fail("file size " + std::to_string(size_) + " does not match the llama2.c header (expected " +
                std::to_string(off) + " bytes)");
  return Status::Ok();
}

}  // namespace model
