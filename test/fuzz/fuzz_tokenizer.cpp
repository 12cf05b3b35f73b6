// libFuzzer target: the tokenizer parsers and encoders.
//
// The first byte of an input picks what the rest is (its value modulo 4):
//   0  a SentencePiece model (protobuf), as embedded in a model file
//   1  a tiktoken file (`base64 rank` lines), as embedded in a Llama 3 model file
//   2  a Hugging Face tokenizer.json (llama_infer --tokenizer tokenizer.json)
//   3  text, encoded with the real tokenizers of ../shared/models (loaded once, at start-up)
// A tokenizer that loads is then used: fixed strings are encoded and decoded, and every id must lie in
// the vocabulary. Byte-level BPE must also give the text back exactly (decode(encode(t)) == t for valid
// UTF-8): the input is split into UTF-8 and merged bytewise, so anything else is a bug.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "model/bpe_tokenizer.h"
#include "model/tokenizer.h"

namespace {

[[noreturn]] void bug(const std::string& what) {
  std::fprintf(stderr, "fuzz_tokenizer: %s\n", what.c_str());
  std::abort();
}

bool is_bpe(const model::Tokenizer& t) { return dynamic_cast<const model::BpeTokenizer*>(&t) != nullptr; }

// Encodes `text`; checks the ids, and the round trip for byte-level BPE.
void check_encode(const model::Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids;
  const base::Status s = tok.encode(text, /*add_bos=*/false, &ids);
  if (!s.ok()) {
    if (s.message().find('\n') != std::string::npos) bug("error is not one line: " + s.message());
    return;
  }
  for (int32_t id : ids)
    if (id < 0 || id >= tok.vocab_size()) bug("encode gave id " + std::to_string(id) + " outside the vocabulary");
  const std::string back = tok.decode(ids);
  if (is_bpe(tok) && back != text) bug("byte-level BPE round trip changed the text");
  if (const auto* bpe = dynamic_cast<const model::BpeTokenizer*>(&tok)) {
    if (bpe->encode_with_special(text, /*add_bos=*/true, &ids).ok())
      for (int32_t id : ids)
        if (id < 0 || id >= tok.vocab_size()) bug("encode_with_special gave id " + std::to_string(id));
  }
}

void use_tokenizer(const model::Tokenizer& tok) {
  if (tok.vocab_size() <= 0) bug("loaded a tokenizer with no tokens");
  for (const char* text :
       {"", "Once upon a time", "  two  spaces\n\nnew lines\t", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82",
        "\xff\xfe not UTF-8", "<|eot_id|><|begin_of_text|> <s>", "1234567 it's"})
    check_encode(tok, text);
  const int32_t n = tok.vocab_size();
  for (int32_t id = 0; id < std::min(n, 1024); ++id) (void)tok.decode_token(id - 1, id);
  for (int32_t id : {-1, n - 1, n, INT32_MAX, INT32_MIN}) (void)tok.decode_token(tok.bos_id(), id);
}

// The real tokenizers, when ../shared/models is there (KUIPER_SHARED_DIR, or $KUIPER_SHARED_DIR).
std::vector<std::unique_ptr<model::Tokenizer>>& real_tokenizers() {
  static std::vector<std::unique_ptr<model::Tokenizer>> tokenizers;
  return tokenizers;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* env = std::getenv("KUIPER_SHARED_DIR");
  const std::string models = std::string(env != nullptr ? env : KUIPER_SHARED_DIR) + "/models";
  for (const char* rel : {"/llama2/tokenizer.model", "/llama3/tokenizer.model", "/stories260K/tok512.model"}) {
    std::unique_ptr<model::Tokenizer> t;
    const base::Status s = model::load_tokenizer_file(models + rel, &t);
    if (s.ok())
      real_tokenizers().push_back(std::move(t));
    else
      std::fprintf(stderr, "fuzz_tokenizer: %s not loaded (%s); text inputs skip it\n", rel, s.message().c_str());
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::unique_ptr<model::Tokenizer> tok;
  switch (data[0] % 4) {
    case 0:
      if (model::load_tokenizer_blob(model::TokenizerType::kSentencePiece, rest, "fuzz", &tok).ok())
        use_tokenizer(*tok);
      break;
    case 1:
      if (model::load_tokenizer_blob(model::TokenizerType::kTiktoken, rest, "fuzz", &tok).ok()) use_tokenizer(*tok);
      break;
    case 2: {
      std::unique_ptr<model::BpeTokenizer> bpe;
      if (model::BpeTokenizer::from_hf_json(rest, "fuzz", &bpe).ok()) use_tokenizer(*bpe);
      break;
    }
    default:
      for (const auto& t : real_tokenizers()) check_encode(*t, rest);
  }
  return 0;
}
