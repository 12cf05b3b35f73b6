#include "gguf_vocab.h"

#include <cstring>

namespace model {

namespace {

// Protobuf wire format: a key is (field << 3 | wire type); varints carry 7 bits a byte, low first.
enum Wire { kVarint = 0, kLen = 2, kFixed32 = 5 };

void put_varint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back((char)(v | 0x80));
    v >>= 7;
  }
  out->push_back((char)v);
}
void put_key(std::string* out, int field, Wire w) { put_varint(out, (uint64_t)field << 3 | w); }
void put_int(std::string* out, int field, int64_t v) {  // int32 fields: negatives as 10-byte varints
  put_key(out, field, kVarint);
  put_varint(out, (uint64_t)v);
}
void put_bytes(std::string* out, int field, const std::string& b) {
  put_key(out, field, kLen);
  put_varint(out, b.size());
  out->append(b);
}
void put_float(std::string* out, int field, float f) {
  put_key(out, field, kFixed32);
  char b[4];
  std::memcpy(b, &f, 4);  // little-endian, as the wire format
  out->append(b, 4);
}

constexpr int kNormal = 1, kUnknown = 2, kByte = 6;

}  // namespace

base::Status sentencepiece_proto_from_vocabulary(const Vocabulary& v, const std::string& origin, std::string* proto) {
  auto bad = [&](const std::string& what) { return base::BadModelFile(origin + ": " + what); };
  const int64_t n = (int64_t)v.tokens.size();
  if (n == 0) return bad("the vocabulary is empty");
  int64_t n_unknown = 0;
  bool bytes = false;
  for (int64_t i = 0; i < n; ++i) {
    const int type = v.types.empty() ? kNormal : v.types[i];
    if (type < 1 || type > 6) return bad("token " + std::to_string(i) + " has piece type " + std::to_string(type) + " (1 to 6 allowed)");
    if (v.tokens[i].empty()) return bad("token " + std::to_string(i) + " is empty");
    n_unknown += type == kUnknown;
    bytes |= type == kByte;
  }
  // The sentencepiece library needs exactly one unknown piece, and BOS for encode(add_bos).
  if (n_unknown != 1) return bad("a SentencePiece vocabulary needs exactly one unknown token (it has " + std::to_string(n_unknown) + ")");
  if (v.bos_id < 0 || v.bos_id >= n || v.eos_id < 0 || v.eos_id >= n) return bad("BOS / EOS token ids outside the vocabulary");
  int64_t unk = v.unk_id;
  if (unk < 0 || unk >= n || (!v.types.empty() && v.types[unk] != kUnknown)) {
    unk = -1;
    for (int64_t i = 0; i < n && unk < 0; ++i)
      if (v.types[i] == kUnknown) unk = i;
  }

  std::string& out = *proto;
  out.clear();
  std::string piece;
  for (int64_t i = 0; i < n; ++i) {
    piece.clear();
    put_bytes(&piece, 1, v.tokens[i]);
    put_float(&piece, 2, v.scores.empty() ? 0.f : v.scores[i]);
    const int type = v.types.empty() ? kNormal : v.types[i];
    if (type != kNormal) put_int(&piece, 3, type);
    put_bytes(&out, 1, piece);
  }
  std::string trainer;
  put_int(&trainer, 3, 2);  // BPE
  put_int(&trainer, 4, n);
  put_int(&trainer, 35, bytes ? 1 : 0);
  put_int(&trainer, 40, unk);
  put_int(&trainer, 41, v.bos_id);
  put_int(&trainer, 42, v.eos_id);
  put_int(&trainer, 43, -1);
  put_bytes(&trainer, 45, v.tokens[unk]);
  put_bytes(&trainer, 46, v.tokens[v.bos_id]);
  put_bytes(&trainer, 47, v.tokens[v.eos_id]);
  put_bytes(&out, 2, trainer);
  std::string normalizer;
  put_bytes(&normalizer, 1, "identity");
  put_int(&normalizer, 3, v.add_space_prefix ? 1 : 0);
  put_int(&normalizer, 4, v.remove_extra_whitespaces ? 1 : 0);
  put_bytes(&out, 3, normalizer);
  return base::Status::Ok();
}

}  // namespace model
