// Llama 3's tokenizer: byte-level BPE as tiktoken does it.
//
//   text -> pre-tokens (the Llama 3 regex, PCRE2) -> each pre-token's UTF-8 bytes merged pairwise,
//   lowest rank first, until no adjacent pair is a token -> ids (a token's id is its rank).
//
// N ordinary tokens (byte strings; N = 128000 for Llama 3) plus 256 special tokens at ids N..N+255,
// as docs/model_format.md defines the `tiktoken` blob (tools/export.py writes small N for synthetic
// models). Two sources give the same tokenizer (test/test_bpe_tokenizer.cpp checks both against
// tiktoken and Hugging Face):
//   - Meta's tiktoken file `tokenizer.model`: one `base64(token bytes) rank` line per token; the
//     special tokens are not in it, so their names come from a table here (the one in Llama 3's
//     tokenizer.json, below).
//   - Hugging Face `tokenizer.json`: model.vocab maps GPT-2's byte-to-unicode spelling of each token
//     to its id; the special tokens are its added_tokens. Its merges list is not read: merging by the
//     rank of the merged token is what tiktoken does, and on Llama 3's file (ignore_merges=true; every
//     merge's result ranks in merge order) the two agree.
//   - a GGUF vocabulary (tokenizer.ggml.model "gpt2", pre-tokenizer "llama-bpe"): the same spelling
//     as tokenizer.json, the ordinary tokens first and the 256 special ones (piece type control or
//     user defined) last; its merges are not read, for the same reason.
//
// Invalid UTF-8 in the text is refused (InvalidArgument "prompt is not valid UTF-8 ..."): the regex
// classes are defined on characters, and neither reference accepts anything but Unicode text.
//
// One known difference: \p{L}, \p{N} and \s come from PCRE2's Unicode tables (14.0 in Debian 12's
// PCRE2 10.42), the references' are newer. A character assigned since (CJK extensions H and I,
// Egyptian hieroglyphs extended-A, ...) counts as punctuation here and a letter there, which moves
// pre-token boundaries next to it. On 50,000 random strings of assigned Unicode 14 characters the ids
// were identical to tiktoken's.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/tokenizer.h"

namespace model {

class BpeTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kNumSpecial = 256;  // ids N..N+255, after the N ranks
  // Positions among the special tokens (Llama 3: ids 128000, 128001, 128009).
  static constexpr int32_t kBosIndex = 0;  // <|begin_of_text|>
  static constexpr int32_t kEosIndex = 1;  // <|end_of_text|>
  static constexpr int32_t kEotIndex = 9;  // <|eot_id|>: ends a chat turn

  // From the bytes of a tiktoken file (ranks 0..N-1, each once, any order). Errors (BadModelFile)
  // name `origin` and the line.
  static base::Status from_tiktoken(const std::string& blob, const std::string& origin,
                                    std::unique_ptr<BpeTokenizer>* out);
  // From the text of a Hugging Face tokenizer.json: model.vocab ids 0..N-1, added_tokens N..N+255
  // (vocab entries that are added tokens are skipped). Refuses (Unsupported) one whose
  // pre-tokenizer regex is not Llama 3's.
  static base::Status from_hf_json(const std::string& blob, const std::string& origin,
                                   std::unique_ptr<BpeTokenizer>* out);
  // From a GGUF vocabulary: tokens 0..N-1 ordinary (GPT-2 spelling), N..N+255 special, BOS and EOS
  // among the specials. Refuses (Unsupported) another pre-tokenizer than Llama 3's.
  static base::Status from_vocabulary(const Vocabulary& v, const std::string& origin,
                                      std::unique_ptr<BpeTokenizer>* out);

  ~BpeTokenizer() override;
  // The rank table holds views into this object's own byte storage: neither copied nor moved.
  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;

  // Special-token strings in `text` are ordinary text here ("<|eot_id|>" is 6 tokens, not 128009),
  // so user input cannot forge a turn boundary.
  base::Status encode(const std::string& text, bool add_bos, std::vector<int32_t>* ids) const override;
  // As encode, but the 256 special-token strings in `text` become their ids (for chat templates).
  base::Status encode_with_special(const std::string& text, bool add_bos, std::vector<int32_t>* ids) const;

  // The token's raw bytes (possibly part of a UTF-8 character); "" for special tokens and bad ids.
  // `prev` is unused: byte-level BPE has no dummy prefix to drop.
  std::string decode_token(int32_t prev, int32_t id) const override;
  // For debugging: a special token's name ("<|eot_id|>"), else the token's bytes.
  std::string token_text(int32_t id) const;

  int32_t vocab_size() const override { return n_ordinary_ + kNumSpecial; }
  int32_t bos_id() const override { return n_ordinary_ + kBosIndex; }
  int32_t eos_id() const override { return n_ordinary_ + kEosIndex; }
  int32_t eot_id() const { return n_ordinary_ + kEotIndex; }
  // Ids below this are ordinary tokens (byte strings); from here on, special ones.
  int32_t num_ordinary() const { return n_ordinary_; }

 private:
  struct PreTokenizer;  // the compiled regex (PCRE2 stays out of this header)
  struct Scratch;       // per-call merge buffers

  BpeTokenizer();
  // Takes the ordinary tokens' bytes (index = rank) and the special names (index = id - N);
  // checks them and builds the rank table and the regex.
  base::Status init(std::vector<std::string> tokens, std::vector<std::string> special_names, const std::string& origin);
  // Appends the ids of `text`; special-token strings in it are plain text.
  base::Status encode_ordinary(std::string_view text, Scratch* scratch, std::vector<int32_t>* ids) const;
  // Appends the ids of one pre-token.
  void encode_piece(std::string_view piece, Scratch* scratch, std::vector<int32_t>* ids) const;
  // Rank of the byte string, -1 when it is not a token.
  int32_t rank_of(std::string_view bytes) const {
    const auto it = rank_.find(bytes);
    return it == rank_.end() ? -1 : it->second;
  }
  std::string_view token_bytes(int32_t rank) const {
    return std::string_view(bytes_).substr(offsets_[rank], offsets_[rank + 1] - offsets_[rank]);
  }

  int32_t n_ordinary_ = 0;         // N
  std::string bytes_;              // every ordinary token's bytes, back to back, in rank order
  std::vector<uint32_t> offsets_;  // [N + 1]: token r is bytes_[offsets_[r], offsets_[r+1])
  std::unordered_map<std::string_view, int32_t> rank_;  // bytes (views into bytes_) -> rank
  std::vector<std::string> special_names_;              // [kNumSpecial]
  std::map<std::string, int32_t, std::less<>> special_ids_;  // name -> id
  size_t max_special_len_ = 0;
  std::unique_ptr<PreTokenizer> pre_;
};

}  // namespace model
