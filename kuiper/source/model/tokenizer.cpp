#include "model/tokenizer.h"

#include <sentencepiece_processor.h>

#include <fstream>
#include <sstream>

#include "gguf_vocab.h"
#include "model/bpe_tokenizer.h"
#include "model/utf8.h"

namespace model {

namespace {

// SentencePiece (Llama 2, TinyLlama, Code Llama, llama2.c's tok512).
class SentencePieceTokenizer final : public Tokenizer {
 public:
  base::Status load(const std::string& blob, const std::string& origin) {
    const auto st = sp_.LoadFromSerializedProto(blob);
    if (!st.ok()) return base::BadModelFile(origin + ": not a SentencePiece tokenizer model");
    if (sp_.GetPieceSize() <= 0) return base::BadModelFile(origin + ": empty SentencePiece vocabulary");
    // encode(add_bos) puts bos_id() first: without a BOS piece that would be -1.
    if (sp_.bos_id() < 0) return base::BadModelFile(origin + ": SentencePiece model has no BOS piece (<s>)");
    pieces_.resize(sp_.GetPieceSize());
    for (int i = 0; i < sp_.GetPieceSize(); ++i) pieces_[i] = piece_bytes(i);
    return base::Status::Ok();
  }

  // Text that is not valid UTF-8 is refused, as the BPE tokenizer does: SentencePiece would map each
  // bad byte to U+FFFD and encode that, which is not what the user typed.
  base::Status encode(const std::string& text, bool add_bos, std::vector<int32_t>* ids) const override {
    KP_RETURN_IF_ERROR(check_utf8(text));
    std::vector<int> out;
    const auto st = sp_.Encode(text, &out);
    if (!st.ok()) return base::InvalidArgument("cannot tokenize the prompt: " + st.ToString());
    ids->clear();
    if (add_bos) ids->push_back(bos_id());
    ids->insert(ids->end(), out.begin(), out.end());
    return base::Status::Ok();
  }

  std::string decode_token(int32_t prev, int32_t id) const override {
    if (id < 0 || id >= (int32_t)pieces_.size()) return "";
    const std::string& p = pieces_[id];
    // After BOS the piece's leading space is the dummy prefix SentencePiece added: drop it.
    if (prev == bos_id() && !p.empty() && p[0] == ' ') return p.substr(1);
    return p;
  }

  int32_t vocab_size() const override { return (int32_t)pieces_.size(); }
  int32_t bos_id() const override { return sp_.bos_id(); }
  int32_t eos_id() const override { return sp_.eos_id(); }

 private:
  // The bytes of piece i: "<0xAB>" byte-fallback pieces are that byte, U+2581 is a space, control
  // pieces (<s>, </s>, <unk>) are empty.
  std::string piece_bytes(int i) const {
    if (sp_.IsControl(i) || sp_.IsUnknown(i)) return "";
    const std::string piece = sp_.IdToPiece(i);
    if (sp_.IsByte(i) && piece.size() == 6) return std::string(1, (char)std::stoi(piece.substr(3, 2), nullptr, 16));
    std::string out;
    for (size_t k = 0; k < piece.size();) {
      if (piece.compare(k, 3, "\xe2\x96\x81") == 0) {
        out += ' ';
        k += 3;
      } else {
        out += piece[k++];
      }
    }
    return out;
  }

  sentencepiece::SentencePieceProcessor sp_;
  std::vector<std::string> pieces_;
};

}  // namespace

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  int32_t prev = -1;
  for (int32_t id : ids) {
    out += decode_token(prev, id);
    prev = id;
  }
  return out;
}

base::Status load_tokenizer_blob(TokenizerType type, const std::string& blob, const std::string& origin,
                                 std::unique_ptr<Tokenizer>* out) {
  if (type == TokenizerType::kSentencePiece) {
    auto t = std::make_unique<SentencePieceTokenizer>();
    KP_RETURN_IF_ERROR(t->load(blob, origin));
    *out = std::move(t);
    return base::Status::Ok();
  }
  if (type == TokenizerType::kTiktoken) {
    std::unique_ptr<BpeTokenizer> t;
    KP_RETURN_IF_ERROR(BpeTokenizer::from_tiktoken(blob, origin, &t));
    *out = std::move(t);
    return base::Status::Ok();
  }
  return base::BadModelFile(origin + ": no tokenizer");
}

base::Status load_model_tokenizer(const ModelFile& file, std::unique_ptr<Tokenizer>* out) {
  if (file.tokenizer_type() != TokenizerType::kVocabulary)
    return load_tokenizer_blob(file.tokenizer_type(), file.tokenizer_blob(), file.path(), out);
  const Vocabulary& v = file.vocabulary();
  if (v.model == "gpt2") {
    std::unique_ptr<BpeTokenizer> t;
    KP_RETURN_IF_ERROR(BpeTokenizer::from_vocabulary(v, file.path(), &t));
    *out = std::move(t);
    return base::Status::Ok();
  }
  std::string proto;
  KP_RETURN_IF_ERROR(sentencepiece_proto_from_vocabulary(v, file.path(), &proto));
  return load_tokenizer_blob(TokenizerType::kSentencePiece, proto, file.path(), out);
}

namespace {
// Whether the first line is `^[A-Za-z0-9+/=]+ [0-9]+$`, as in a tiktoken file.
bool looks_like_tiktoken(const std::string& blob) {
  std::string line = blob.substr(0, blob.find('\n'));
  if (!line.empty() && line.back() == '\r') line.pop_back();
  const size_t space = line.find(' ');
  auto all_of = [&](size_t from, size_t to, const char* chars) {
    return from < to && line.find_first_not_of(chars, from) >= to;
  };
  return space != std::string::npos &&
         all_of(0, space, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") &&
         all_of(space + 1, line.size(), "0123456789");
}
}  // namespace

base::Status load_tokenizer_file(const std::string& path, std::unique_ptr<Tokenizer>* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return base::NotFound(path + ": cannot open tokenizer file");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string blob = ss.str();
  // Hugging Face tokenizer.json (Llama 3) is a JSON object; a tiktoken file (Llama 3) is lines of
  // `base64 rank`; anything else is taken for a SentencePiece model (a protobuf).
  const size_t first = blob.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && blob[first] == '{') {
    std::unique_ptr<BpeTokenizer> t;
    KP_RETURN_IF_ERROR(BpeTokenizer::from_hf_json(blob, path, &t));
    *out = std::move(t);
    return base::Status::Ok();
  }
  if (looks_like_tiktoken(blob))
    return load_tokenizer_blob(TokenizerType::kTiktoken, blob, path, out);
  return load_tokenizer_blob(TokenizerType::kSentencePiece, blob, path, out);
}

namespace {
// Length of the UTF-8 sequence starting with byte b, 0 if b cannot start one.
int utf8_len(unsigned char b) {
  if (b < 0x80) return 1;
  if (b >= 0xc2 && b <= 0xdf) return 2;
  if (b >= 0xe0 && b <= 0xef) return 3;
  if (b >= 0xf0 && b <= 0xf4) return 4;
  return 0;
}
bool is_cont(unsigned char b) { return (b & 0xc0) == 0x80; }
const char kReplacement[] = "\xef\xbf\xbd";
}  // namespace

std::string Utf8Stream::push(const std::string& bytes) {
  pending_ += bytes;
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const unsigned char b = pending_[i];
    const int len = utf8_len(b);
    if (len == 0) {  // stray continuation or invalid lead byte
      out += kReplacement;
      ++i;
      continue;
    }
    if (i + len > pending_.size()) {
      // Incomplete: keep it if what we have so far is a valid prefix.
      bool ok = true;
      for (size_t k = i + 1; k < pending_.size(); ++k) ok &= is_cont(pending_[k]);
      if (ok) break;
    }
    bool valid = true;
    for (int k = 1; k < len && valid; ++k) valid = i + k < pending_.size() && is_cont(pending_[i + k]);
    // Reject overlong / surrogate / out-of-range forms of 3- and 4-byte sequences.
    if (valid && len >= 3) {
      const unsigned char b1 = pending_[i + 1];
      if ((b == 0xe0 && b1 < 0xa0) || (b == 0xed && b1 > 0x9f) || (b == 0xf0 && b1 < 0x90) || (b == 0xf4 && b1 > 0x8f))
        valid = false;
    }
    if (!valid) {
      out += kReplacement;
      ++i;
      continue;
    }
    out.append(pending_, i, len);
    i += len;
  }
  pending_.erase(0, i);
  return out;
}

std::string Utf8Stream::flush() {
  std::string out = pending_.empty() ? "" : kReplacement;
  pending_.clear();
  return out;
}

}  // namespace model
