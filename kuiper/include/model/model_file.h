// ModelFile: a model on disk, mmapped read-only and validated before any weight is touched.
//
// Two formats: the project's own (docs/model_format.md: magic "LLMI", JSON header, aligned tensor
// data, embedded tokenizer) and llama2.c "version 0" checkpoints (7 int32 header + fp32 weights, no
// tokenizer). Both are presented the same way: a ModelConfig and a table of named tensors whose byte
// ranges were checked against the file size. Weights are read straight from the mapping, so a
// tensor-parallel rank touches only the pages of its own shard.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/dtype.h"
#include "base/status.h"
#include "model/config.h"

namespace model {

struct TensorEntry {
  std::string name;
  base::DType dtype;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // absolute byte offset in the file
  uint64_t nbytes = 0;
};

enum class TokenizerType { kNone, kSentencePiece, kTiktoken };

class ModelFile {
 public:
  // Opens and validates `path`; every failure names the file and the problem.
  static base::Status open(const std::string& path, std::unique_ptr<ModelFile>* out);
  // A model of the given shape with no data behind it: the tensor table the exporter would write for
  // `cfg`. Its weights are made on the device with random values (llama_bench's synthetic models).
  static base::Status synthetic(const ModelConfig& cfg, std::unique_ptr<ModelFile>* out);
  ~ModelFile();
  ModelFile(const ModelFile&) = delete;
  ModelFile& operator=(const ModelFile&) = delete;

  const std::string& path() const { return path_; }
  const ModelConfig& config() const { return config_; }
  bool is_llama2c() const { return llama2c_; }
  bool is_synthetic() const { return base_ == nullptr; }
  uint64_t file_size() const { return size_; }

  // The entry named `name`, or nullptr.
  const TensorEntry* find(const std::string& name) const;
  // Entry `name` checked to have `dtype` (any if nullptr) and `shape`; error names the file and tensor.
  base::Status get(const std::string& name, const std::vector<int64_t>& shape, const TensorEntry** out) const;
  const std::vector<TensorEntry>& tensors() const { return tensors_; }
  const void* data(const TensorEntry& e) const { return base_ + e.offset; }
  // Drops the whole pages inside `e`'s bytes from this process's memory (madvise DONTNEED): for
  // tensors that were copied and are not read from the mapping again. A later read maps them back
  // from the file, so this is only ever a matter of memory, never of correctness.
  void release_pages(const TensorEntry& e) const;
  // Keeps the mapping alive for tensors that wrap it.
  std::shared_ptr<void> keepalive() const { return keepalive_; }

  TokenizerType tokenizer_type() const { return tok_type_; }
  std::string tokenizer_blob() const;  // raw bytes of the embedded tokenizer ("" when none)

 private:
  ModelFile() = default;
  base::Status parse_llmi();
  base::Status parse_llama2c();
  base::Status add_entry(TensorEntry e);
  base::Status fail(const std::string& what) const;

  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  std::shared_ptr<void> keepalive_;  // unmaps on last release
  bool llama2c_ = false;
  ModelConfig config_;
  std::vector<TensorEntry> tensors_;
  std::unordered_map<std::string, size_t> index_;
  TokenizerType tok_type_ = TokenizerType::kNone;
  uint64_t tok_offset_ = 0, tok_nbytes_ = 0;
};

}  // namespace model
