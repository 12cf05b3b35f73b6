// Llama 3's tokenizer: byte-level BPE as tiktoken does it.
//
//   text -> pre-tokens (the Llama 3 regex, PCRE2) -> each pre-token's UTF-8 bytes merged pairwise,
//   lowest rank first, until no adjacent pair is a token -> ids (a token's id is its rank).
//
// 128000 ordinary tokens (byte strings) plus 256 special tokens at 128000..128255. Two sources give
// the same tokenizer (test/test_bpe_tokenizer.cpp checks both against tiktoken and Hugging Face):
//   - Meta's tiktoken file `tokenizer.model`: one `base64(token bytes) rank` line per token; the
//     special tokens are not in it, so their names come from a table here (the one in Llama 3's
//     tokenizer.json, below).
//   - Hugging Face `tokenizer.json`: model.vocab maps GPT-2's byte-to-unicode spelling of each token
//     to its id; the special tokens are its added_tokens. Its merges list is not read: merging by the
//     rank of the merged token is what tiktoken does, and on Llama 3's file (ignore_merges=true; every
//     merge's result ranks in merge order) the two agree.
//
// Invalid UTF-8 in the text is refused (InvalidArgument "prompt is not valid UTF-8 ..."): the regex
// classes are defined on characters, and neither reference accepts anything but Unicode text.
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
  static constexpr int32_t kNumOrdinary = 128000;  // ranks 0..127999
  static constexpr int32_t kNumSpecial = 256;      // ids 128000..128255
  static constexpr int32_t kBosId = 128000;        // <|begin_of_text|>
  static constexpr int32_t kEosId = 128001;        // <|end_of_text|>
  static constexpr int32_t kEotId = 128009;        // <|eot_id|>: ends an assistant turn in chat

  // From the bytes of a tiktoken file. Errors (BadModelFile) name `origin` and the line.
  static base::Status from_tiktoken(const std::string& blob, const std::string& origin,
                                    std::unique_ptr<BpeTokenizer>* out);
  // From the text of a Hugging Face tokenizer.json. Refuses (Unsupported) one whose pre-tokenizer
  // regex is not Llama 3's.
  static base::Status from_hf_json(const std::string& blob, const std::string& origin,
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

  int32_t vocab_size() const override { return kNumOrdinary + kNumSpecial; }
  int32_t bos_id() const override { return kBosId; }
  int32_t eos_id() const override { return kEosId; }
  int32_t eot_id() const { return kEotId; }

 private:
  struct PreTokenizer;  // the compiled regex (PCRE2 stays out of this header)
  struct Scratch;       // per-call merge buffers

  BpeTokenizer();
  // Takes the ordinary tokens' bytes (index = rank) and the special names (index = id - 128000);
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

  std::string bytes_;              // every ordinary token's bytes, back to back, in rank order
  std::vector<uint32_t> offsets_;  // [kNumOrdinary + 1]: token r is bytes_[offsets_[r], offsets_[r+1])
  std::unordered_map<std::string_view, int32_t> rank_;  // bytes (views into bytes_) -> rank
  std::vector<std::string> special_names_;              // [kNumSpecial]
  std::map<std::string, int32_t, std::less<>> special_ids_;  // name -> id
  size_t max_special_len_ = 0;
  std::unique_ptr<PreTokenizer> pre_;
};

}  // namespace model
