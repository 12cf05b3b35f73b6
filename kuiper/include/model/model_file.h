// ModelFile: a model on disk, mmapped read-only and validated before any weight is touched.
//
// Three formats, told apart by their first bytes: the project's own (docs/model_format.md: magic
// "LLMI", JSON header, aligned tensor data, embedded tokenizer), GGUF (llama.cpp's; magic "GGUF",
// architecture llama, read by gguf_file.h and mapped onto the project's names in gguf_model.cpp) and
// llama2.c "version 0" checkpoints (7 int32 header + fp32 weights, no tokenizer). All are presented
// the same way: a ModelConfig and a table of named tensors whose byte ranges were checked against the
// file size. Weights are read straight from the mapping, so a tensor-parallel rank touches only the
// pages of its own shard.
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

// kSentencePiece, kTiktoken: a blob in the file (tokenizer_blob()); kVocabulary: a token list in the
// file's metadata (GGUF's tokenizer.ggml.*, vocabulary()).
enum class TokenizerType { kNone, kSentencePiece, kTiktoken, kVocabulary };

// A tokenizer given as a vocabulary (GGUF): what model/gguf_vocab.h builds the project's tokenizers from.
struct Vocabulary {
  std::string model;                // "llama" (SentencePiece, with scores) or "gpt2" (byte-level BPE)
  std::string pre;                  // gpt2: the pre-tokenizer's name ("llama-bpe" for Llama 3)
  std::vector<std::string> tokens;  // [vocab]: SentencePiece pieces, or GPT-2's byte-to-unicode spelling
  std::vector<float> scores;        // [vocab] or empty
  std::vector<int32_t> types;       // [vocab] or empty: 1 normal, 2 unknown, 3 control, 4 user defined,
                                    // 5 unused, 6 byte (SentencePiece's piece types)
  int32_t bos_id = -1, eos_id = -1, unk_id = -1;
  bool add_space_prefix = true;     // SentencePiece's add_dummy_prefix
  bool remove_extra_whitespaces = false;
};

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
  bool is_gguf() const { return gguf_; }
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
  const Vocabulary& vocabulary() const { return vocab_; }  // kVocabulary only
  // The chat template the file names (GGUF's tokenizer.chat_template, a Jinja text); "" when none.
  const std::string& chat_template() const { return chat_template_; }

 private:
  ModelFile() = default;
  base::Status parse_llmi();
  base::Status parse_llama2c();
  base::Status parse_gguf();  // gguf_model.cpp
  base::Status add_entry(TensorEntry e);
  base::Status fail(const std::string& what) const;

  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  std::shared_ptr<void> keepalive_;  // unmaps on last release
  bool llama2c_ = false;
  bool gguf_ = false;
  ModelConfig config_;
  std::vector<TensorEntry> tensors_;
  std::unordered_map<std::string, size_t> index_;
  TokenizerType tok_type_ = TokenizerType::kNone;
  uint64_t tok_offset_ = 0, tok_nbytes_ = 0;
  Vocabulary vocab_;
  std::string chat_template_;
};

}  // namespace model
