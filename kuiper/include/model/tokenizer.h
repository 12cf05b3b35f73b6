// Tokenizers: text <-> token ids. SentencePiece for the Llama 2 family (through the sentencepiece
// library); the Llama 3 byte-level BPE joins behind the same interface.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "model/model_file.h"

namespace model {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Token ids of `text`, with BOS first when `add_bos`.
  virtual base::Status encode(const std::string& text, bool add_bos, std::vector<int32_t>* ids) const = 0;
  // The raw bytes token `id` stands for when it follows token `prev` (SentencePiece drops the leading
  // space of the first piece after BOS). Special tokens (BOS, EOS) give "". May be part of a UTF-8
  // character: feed the bytes to a Utf8Stream before printing.
  virtual std::string decode_token(int32_t prev, int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;

  // Whole sequence to text (for tests and --detokenize).
  std::string decode(const std::vector<int32_t>& ids) const;
};

// From a file: a SentencePiece .model (protobuf), a tiktoken-format Llama 3 tokenizer.model, or a
// Hugging Face tokenizer.json (detected from the content). Errors name the file.
base::Status load_tokenizer_file(const std::string& path, std::unique_ptr<Tokenizer>* out);
// From the blob embedded in a model file.
base::Status load_tokenizer_blob(TokenizerType type, const std::string& blob, const std::string& origin,
                                 std::unique_ptr<Tokenizer>* out);
// The model file's own tokenizer: its blob (the project's format) or its vocabulary (GGUF).
base::Status load_model_tokenizer(const ModelFile& file, std::unique_ptr<Tokenizer>* out);

// Streams bytes out as valid UTF-8: a multi-byte character split across tokens is held back until it
// is whole; bytes that can never form a valid character come out as U+FFFD.
class Utf8Stream {
 public:
  // Appends bytes; returns the text that is complete so far.
  std::string push(const std::string& bytes);
  // Whatever is held back, as U+FFFD for each incomplete sequence (end of generation).
  std::string flush();

 private:
  std::string pending_;
};

}  // namespace model
