#include "model/chat.h"

#include "model/bpe_tokenizer.h"

namespace model {

namespace {

// Surrounding whitespace of a message is dropped, as both families' reference templates do.
std::string trim(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  return b == std::string::npos ? "" : s.substr(b, s.find_last_not_of(ws) - b + 1);
}

class Llama3Chat final : public ChatTemplate {
 public:
  explicit Llama3Chat(const BpeTokenizer& tok) : tok_(tok) {}

  base::Status user_turn(const std::string& system, const std::string& user, bool first,
                         std::vector<int32_t>* ids) const override {
    ids->clear();
    if (first) {
      ids->push_back(tok_.bos_id());
      if (!system.empty()) KP_RETURN_IF_ERROR(message("system", system, ids));
    }
    KP_RETURN_IF_ERROR(message("user", user, ids));
    return header("assistant", ids);
  }
  int32_t end_of_turn() const override { return tok_.eot_id(); }

 private:
  // <|start_header_id|>{role}<|end_header_id|>{text}: the text after a header is one segment in
  // Hugging Face's rendering (it starts with the header's "\n\n"), so it is encoded in one piece.
  base::Status segment(const std::string& role, const std::string& text, std::vector<int32_t>* ids) const {
    std::vector<int32_t> part;
    ids->push_back(special(6));
    KP_RETURN_IF_ERROR(tok_.encode(role, false, &part));
    ids->insert(ids->end(), part.begin(), part.end());
    ids->push_back(special(7));
    KP_RETURN_IF_ERROR(tok_.encode(text, false, &part));
    ids->insert(ids->end(), part.begin(), part.end());
    return base::Status::Ok();
  }
  base::Status header(const std::string& role, std::vector<int32_t>* ids) const { return segment(role, "\n\n", ids); }
  base::Status message(const std::string& role, const std::string& text, std::vector<int32_t>* ids) const {
    KP_RETURN_IF_ERROR(segment(role, "\n\n" + trim(text), ids));
    ids->push_back(tok_.eot_id());
    return base::Status::Ok();
  }
  int32_t special(int index) const { return tok_.num_ordinary() + index; }  // 6, 7: start/end header

  const BpeTokenizer& tok_;
};

class Llama2Chat final : public ChatTemplate {
 public:
  explicit Llama2Chat(const Tokenizer& tok) : tok_(tok) {}

  base::Status user_turn(const std::string& system, const std::string& user, bool first,
                         std::vector<int32_t>* ids) const override {
    std::string text = "[INST] ";
    if (first && !system.empty()) text += "<<SYS>>\n" + trim(system) + "\n<</SYS>>\n\n";
    text += trim(user) + " [/INST]";
    return tok_.encode(text, /*add_bos=*/true, ids);
  }
  int32_t end_of_turn() const override { return tok_.eos_id(); }

 private:
  const Tokenizer& tok_;
};

}  // namespace

base::Status ChatTemplate::create(Family family, const Tokenizer& tok, std::unique_ptr<ChatTemplate>* out) {
  if (family == Family::kLlama3) {
    const auto* bpe = dynamic_cast<const BpeTokenizer*>(&tok);
    if (bpe == nullptr) return base::Unsupported("the Llama 3 chat template needs the Llama 3 tokenizer");
    *out = std::make_unique<Llama3Chat>(*bpe);
  } else {
    *out = std::make_unique<Llama2Chat>(tok);
  }
  return base::Status::Ok();
}

base::Status ChatTemplate::create_for(const std::string& t, Family family, const Tokenizer& tok,
                                      std::unique_ptr<ChatTemplate>* out) {
  if (t.empty()) return create(family, tok, out);
  auto has = [&](const char* s) { return t.find(s) != std::string::npos; };
  if (has("<|start_header_id|>") && has("<|eot_id|>")) return create(Family::kLlama3, tok, out);
  if (has("[INST]") && has("<<SYS>>")) return create(Family::kLlama2, tok, out);
  return base::Unsupported("the model's chat template is neither Llama 2's ([INST], <<SYS>>) nor Llama 3's "
                           "(<|start_header_id|>, <|eot_id|>), the two --chat knows; generate without --chat");
}

}  // namespace model
