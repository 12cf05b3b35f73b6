// Chat templates: the token sequences that mark system, user and assistant turns, by model family.
//
// Llama 3 (header tokens; every turn ends with <|eot_id|>):
//   <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>
//   <|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>
//   <|start_header_id|>assistant<|end_header_id|>\n\n   ... reply ... <|eot_id|>
// Llama 2 ([INST]; the system prompt sits inside the first user turn; a reply ends with </s>):
//   <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] ... reply ... </s><s>[INST] {user} [/INST] ...
// Text between special tokens is encoded on its own, as Hugging Face's template + tokenizer do; user
// text cannot forge special tokens (they are encoded as plain text).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "model/config.h"
#include "model/tokenizer.h"

namespace model {

class ChatTemplate {
 public:
  // The family's template over `tok` (Llama 3 needs the byte-level BPE tokenizer with its specials).
  static base::Status create(Family family, const Tokenizer& tok, std::unique_ptr<ChatTemplate>* out);
  // The template a model file names (GGUF's tokenizer.chat_template, a Jinja text), recognised as
  // Llama 3's (header tokens and <|eot_id|>) or Llama 2's ([INST] and <<SYS>>); any other is refused
  // (Unsupported, one line). A file that names none gets its family's, as with create().
  static base::Status create_for(const std::string& file_template, Family family, const Tokenizer& tok,
                                 std::unique_ptr<ChatTemplate>* out);
  virtual ~ChatTemplate() = default;

  // Tokens of one user turn followed by the start of the assistant's reply. The first turn of a
  // conversation also opens it (BOS) and carries the system prompt (may be empty).
  virtual base::Status user_turn(const std::string& system, const std::string& user, bool first,
                                 std::vector<int32_t>* ids) const = 0;
  // The token that ends an assistant reply (and the generation of one).
  virtual int32_t end_of_turn() const = 0;
};

}  // namespace model
