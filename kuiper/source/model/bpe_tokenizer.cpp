#include "model/bpe_tokenizer.h"

#include <pcre2.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "model/gguf_file.h"
#include "model/utf8.h"

namespace model {

namespace {

// The Llama 3 pre-tokenizer (meta-llama/llama-models, models/llama3/tokenizer.py; tokenizer.json's
// Split pattern is the same string). In order: English contractions, a word with at most one leading
// non-letter (" hello", "$x"), numbers in groups of at most three digits, punctuation runs with an
// optional leading space, newline runs with the spaces before them, spaces not followed by a
// non-space (so "a   b" keeps the last space for " b"), and any other whitespace.
constexpr char kLlama3Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The special tokens as Llama 3's tokenizer.json names them (its added_tokens, the authority); the
// tiktoken file does not hold them. Id = N + index. Everything else is reserved_special_token_N,
// N counting up from 0 over the unnamed ids.
std::vector<std::string> llama3_special_names() {
  const std::map<int32_t, std::string> named = {
      {0, "<|begin_of_text|>"}, {1, "<|end_of_text|>"}, {6, "<|start_header_id|>"},
      {7, "<|end_header_id|>"}, {9, "<|eot_id|>"},
  };
  std::vector<std::string> names(BpeTokenizer::kNumSpecial);
  int reserved = 0;
  for (int32_t i = 0; i < BpeTokenizer::kNumSpecial; ++i) {
    const auto it = named.find(i);
    names[i] = it != named.end() ? it->second : "<|reserved_special_token_" + std::to_string(reserved++) + "|>";
  }
  return names;
}

// Standard base64 (RFC 4648, with '=' padding) into `out`; false on anything malformed.
bool base64_decode(std::string_view in, std::string* out) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  out->clear();
  if (in.empty() || in.size() % 4 != 0) return false;
  for (size_t i = 0; i < in.size(); i += 4) {
    const bool last = i + 4 == in.size();
    const int pad = last ? (in[i + 3] == '=') + (in[i + 2] == '=') : 0;
    if (pad == 1 && in[i + 2] == '=') return false;  // "x=y=" is not padding
    uint32_t v = 0;
    for (int k = 0; k < 4 - pad; ++k) {
      const int d = value(in[i + k]);
      if (d < 0) return false;
      v |= static_cast<uint32_t>(d) << (18 - 6 * k);
    }
    out->push_back(static_cast<char>(v >> 16));
    if (pad < 2) out->push_back(static_cast<char>(v >> 8));
    if (pad < 1) out->push_back(static_cast<char>(v));
  }
  return true;
}

// GPT-2's byte-to-unicode table inverted: tokenizer.json spells byte b as one code point, b itself
// for the printable bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) and 256, 257, ... in byte order
// for the rest (so a space, 0x20, is U+0120 'Ġ'). Entry c is the byte code point c stands for, or -1.
std::vector<int> gpt2_unicode_to_byte() {
  std::vector<int> table(512, -1);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[printable ? b : next++] = b;
  }
  return table;
}

// A vocab key in GPT-2 spelling to the token's bytes; false if a character is outside the table.
bool gpt2_decode(const std::string& key, const std::vector<int>& table, std::string* out) {
  out->clear();
  for (size_t i = 0; i < key.size();) {
    const unsigned char b = key[i];
    int cp;
    if (b < 0x80) {
      cp = b;
      i += 1;
    } else if ((b & 0xe0) == 0xc0 && i + 1 < key.size()) {
      cp = ((b & 0x1f) << 6) | (static_cast<unsigned char>(key[i + 1]) & 0x3f);
      i += 2;
    } else {
      return false;  // every code point in the table is below U+0800
    }
    if (cp >= static_cast<int>(table.size()) || table[cp] < 0) return false;
    out->push_back(static_cast<char>(table[cp]));
  }
  return true;
}

}  // namespace

// ---- the regex ----

struct BpeTokenizer::PreTokenizer {
  pcre2_code* code = nullptr;
  ~PreTokenizer() { pcre2_code_free(code); }
};

// Merge buffers for one encode call, reused across its pre-tokens so a call allocates O(1) times.
struct BpeTokenizer::Scratch {
  // A min-heap entry: the pair (part `start`, the part after it) merges into the token `rank`. It is
  // stale once part `start` has changed since (its `version` moved on).
  struct Pair {
    int32_t rank;
    uint32_t start;
    uint32_t version;
    bool operator>(const Pair& o) const { return rank != o.rank ? rank > o.rank : start > o.start; }
  };
  pcre2_match_data* match = nullptr;
  // The parts of the pre-token being merged form a linked list; part i starts at byte i.
  std::vector<uint32_t> next;     // byte where the part after part i starts (piece size at the end)
  std::vector<uint32_t> prev;     // start of the part before part i (meaningless for part 0)
  std::vector<uint32_t> version;  // bumped whenever part i or its right neighbour changes
  std::vector<Pair> heap;

  ~Scratch() { pcre2_match_data_free(match); }
};

BpeTokenizer::BpeTokenizer() = default;
BpeTokenizer::~BpeTokenizer() = default;

// ---- loading ----

base::Status BpeTokenizer::from_tiktoken(const std::string& blob, const std::string& origin,
                                         std::unique_ptr<BpeTokenizer>* out) {
  std::vector<std::pair<int32_t, std::string>> lines;  // (rank, bytes) in file order
  std::string bytes;
  size_t line_no = 0, pos = 0;
  while (pos < blob.size()) {
    size_t eol = blob.find('\n', pos);
    if (eol == std::string::npos) eol = blob.size();
    std::string_view line(blob.data() + pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    auto fail = [&](const std::string& what) {
      return base::BadModelFile(origin + ": line " + std::to_string(line_no) + ": " + what);
    };
    const size_t space = line.find(' ');
    if (space == std::string_view::npos) return fail("expected 'base64 rank'");
    if (!base64_decode(line.substr(0, space), &bytes)) return fail("bad base64");
    const std::string_view digits = line.substr(space + 1);
    if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string_view::npos)
      return fail("bad rank");
    lines.emplace_back(std::stoi(std::string(digits)), bytes);
  }
  // N lines must hold ranks 0..N-1, each once.
  const auto n = static_cast<int32_t>(lines.size());
  std::vector<std::string> tokens(n);
  std::vector<bool> seen(n, false);
  for (auto& [rank, token] : lines) {
    if (rank >= n || seen[rank])
      return base::BadModelFile(origin + ": rank " + std::to_string(rank) + (rank >= n ? " out of range" : " repeated") +
                                " (" + std::to_string(n) + " lines should hold ranks 0.." + std::to_string(n - 1) + ")");
    seen[rank] = true;
    tokens[rank] = std::move(token);
  }
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  KP_RETURN_IF_ERROR(t->init(std::move(tokens), llama3_special_names(), origin));
  *out = std::move(t);
  return base::Status::Ok();
}

base::Status BpeTokenizer::from_hf_json(const std::string& blob, const std::string& origin,
                                        std::unique_ptr<BpeTokenizer>* out) {
  const nlohmann::json j = nlohmann::json::parse(blob, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return base::BadModelFile(origin + ": not valid JSON");
  auto bad = [&](const std::string& what) { return base::BadModelFile(origin + ": " + what); };
  try {
    const auto& m = j.at("model");
    if (m.value("type", "") != "BPE") return base::Unsupported(origin + ": not a BPE tokenizer");
    // The pre-tokenizer must be Llama 3's Split regex (alone or in a Sequence with ByteLevel).
    bool llama3_regex = false;
    const auto& pre = j.at("pre_tokenizer");
    const auto check = [&](const nlohmann::json& p) {
      if (p.value("type", "") == "Split" && p.contains("pattern") && p["pattern"].value("Regex", "") == kLlama3Pattern)
        llama3_regex = true;
    };
    if (pre.is_object() && pre.value("type", "") == "Sequence") {
      for (const auto& p : pre.at("pretokenizers")) check(p);
    } else if (pre.is_object()) {
      check(pre);
    }
    if (!llama3_regex) return base::Unsupported(origin + ": pre-tokenizer is not Llama 3's regex (only Llama 3 BPE is supported)");

    // Ids must be JSON integers: get<int64_t> of a float such as 1e52 is an out-of-range conversion (UB).
    std::map<int64_t, std::string> added;  // id -> name
    for (const auto& a : j.at("added_tokens")) {
      if (!a.at("id").is_number_integer()) return bad("added_tokens: an id is not an integer");
      const int64_t id = a.at("id").get<int64_t>();
      const std::string name = a.at("content").get<std::string>();
      if (name.empty() || !added.emplace(id, name).second) return bad("added_tokens: bad entry for id " + std::to_string(id));
    }
    const auto& vocab = m.at("vocab");
    if (!vocab.is_object()) return bad("model.vocab is not an object");
    const auto n = static_cast<int32_t>(std::count_if(vocab.begin(), vocab.end(), [&](const nlohmann::json& id) {
      return !id.is_number_integer() || added.count(id.get<int64_t>()) == 0;
    }));
    const std::vector<int> table = gpt2_unicode_to_byte();
    std::vector<std::string> tokens(n);
    std::vector<bool> seen(n, false);
    std::string bytes;
    for (const auto& [key, id_json] : vocab.items()) {
      if (!id_json.is_number_integer()) return bad("model.vocab: the id of '" + key + "' is not an integer");
      const int64_t id = id_json.get<int64_t>();
      if (added.count(id)) continue;
      if (id < 0 || id >= n || seen[id])
        return bad("model.vocab: id " + std::to_string(id) + " out of range or repeated (ids should be 0.." +
                   std::to_string(n - 1) + ")");
      if (!gpt2_decode(key, table, &bytes)) return bad("model.vocab: '" + key + "' is not in byte-level spelling");
      seen[id] = true;
      tokens[id] = bytes;
    }
    std::vector<std::string> names(kNumSpecial);
    if (added.size() != static_cast<size_t>(kNumSpecial) || added.begin()->first != n || added.rbegin()->first != n + kNumSpecial - 1)
      return bad("added_tokens should be the 256 ids after the vocabulary, " + std::to_string(n) + ".." +
                 std::to_string(n + kNumSpecial - 1));
    for (const auto& [id, name] : added) names[id - n] = name;
    const std::vector<std::string> expected = llama3_special_names();
    for (int32_t i : {kBosIndex, kEosIndex, kEotIndex})
      if (names[i] != expected[i])
        return bad("token " + std::to_string(n + i) + " is '" + names[i] + "', expected '" + expected[i] + "'");

    std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
    KP_RETURN_IF_ERROR(t->init(std::move(tokens), std::move(names), origin));
    *out = std::move(t);
    return base::Status::Ok();
  } catch (const nlohmann::json::exception& e) {
    return bad(std::string("unexpected layout: ") + e.what());
  }
}

base::Status BpeTokenizer::from_vocabulary(const Vocabulary& v, const std::string& origin,
                                           std::unique_ptr<BpeTokenizer>* out) {
  auto bad = [&](const std::string& what) { return base::BadModelFile(origin + ": " + what); };
  // llama.cpp's names for the Llama 3 pre-tokenizer.
  if (v.pre != "llama-bpe" && v.pre != "llama3" && v.pre != "llama-v3")
    return base::Unsupported(origin + ": byte-level BPE with pre-tokenizer '" + GgufFile::printable(v.pre) +
                             "' is not supported (only Llama 3's, 'llama-bpe')");
  const int64_t total = (int64_t)v.tokens.size();
  const int64_t n = total - kNumSpecial;
  if (n <= 0) return bad("a byte-level BPE vocabulary needs its " + std::to_string(kNumSpecial) + " special tokens last");
  const std::vector<int> table = gpt2_unicode_to_byte();
  std::vector<std::string> tokens(n);
  for (int64_t i = 0; i < n; ++i) {
    if (!v.types.empty() && v.types[i] != 1)
      return bad("token " + std::to_string(i) + " has piece type " + std::to_string(v.types[i]) +
                 " but only the last " + std::to_string(kNumSpecial) + " tokens may be special");
    if (!gpt2_decode(v.tokens[i], table, &tokens[i]))
      return bad("token " + std::to_string(i) + " is not in byte-level spelling");
  }
  std::vector<std::string> names(v.tokens.begin() + n, v.tokens.end());
  for (int64_t i = n; i < total; ++i)
    if (!v.types.empty() && v.types[i] != 3 && v.types[i] != 4)
      return bad("token " + std::to_string(i) + " should be a special token (control or user defined)");
  if (v.bos_id != n + kBosIndex) return bad("BOS must be token " + std::to_string(n + kBosIndex) + ", the first special token");
  const std::vector<std::string> expected = llama3_special_names();
  for (int32_t i : {kBosIndex, kEosIndex, kEotIndex})
    if (names[i] != expected[i])
      return bad("token " + std::to_string(n + i) + " is '" + GgufFile::printable(names[i]) + "', expected '" +
                 expected[i] + "'");
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  KP_RETURN_IF_ERROR(t->init(std::move(tokens), std::move(names), origin));
  *out = std::move(t);
  return base::Status::Ok();
}

base::Status BpeTokenizer::init(std::vector<std::string> tokens, std::vector<std::string> special_names,
                                const std::string& origin) {
  if (tokens.empty()) return base::BadModelFile(origin + ": no tokens");
  n_ordinary_ = static_cast<int32_t>(tokens.size());
  size_t total = 0;
  for (const auto& t : tokens) total += t.size();
  if (total > UINT32_MAX) return base::BadModelFile(origin + ": tokens too long");
  bytes_.reserve(total);
  offsets_.resize(tokens.size() + 1);
  for (size_t r = 0; r < tokens.size(); ++r) {
    if (tokens[r].empty()) return base::BadModelFile(origin + ": token " + std::to_string(r) + " is empty");
    offsets_[r] = static_cast<uint32_t>(bytes_.size());
    bytes_ += tokens[r];
  }
  offsets_[tokens.size()] = static_cast<uint32_t>(bytes_.size());
  // bytes_ is complete: from here on its views stay valid.
  rank_.reserve(tokens.size());
  for (int32_t r = 0; r < static_cast<int32_t>(tokens.size()); ++r)
    if (!rank_.emplace(token_bytes(r), r).second)
      return base::BadModelFile(origin + ": token " + std::to_string(r) + " repeats an earlier token's bytes");
  // Every byte must be a token, or some text would have no encoding.
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    if (rank_of(std::string_view(&c, 1)) < 0)
      return base::BadModelFile(origin + ": byte " + std::to_string(b) + " is not a token");
  }

  special_names_ = std::move(special_names);
  for (int32_t i = 0; i < kNumSpecial; ++i) {
    if (!special_ids_.emplace(special_names_[i], n_ordinary_ + i).second)
      return base::BadModelFile(origin + ": special token '" + special_names_[i] + "' appears twice");
    max_special_len_ = std::max(max_special_len_, special_names_[i].size());
  }

  pre_ = std::make_unique<PreTokenizer>();
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  // PCRE2_ANCHORED: each match starts where the last one ended. Every character starts a match of
  // some branch (a letter, a digit, whitespace, or anything else for " ?[^\s\p{L}\p{N}]+"), so the
  // matches tile the text, as tiktoken's find-all does. It also keeps the match JIT-able, which a
  // match-time PCRE2_ANCHORED would not.
  pre_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kLlama3Pattern), PCRE2_ZERO_TERMINATED,
                             PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &err, &err_offset, nullptr);
  if (pre_->code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    return base::Internal(std::string("cannot compile the pre-tokenizer regex: ") + reinterpret_cast<char*>(msg));
  }
  // JIT: 3 MB of mixed prose, code and CJK split in 22 ms, against 117 ms interpreted. Where the JIT
  // is unavailable, pcre2_match interprets.
  pcre2_jit_compile(pre_->code, PCRE2_JIT_COMPLETE);
  return base::Status::Ok();
}

// ---- encoding ----

base::Status BpeTokenizer::encode(const std::string& text, bool add_bos, std::vector<int32_t>* ids) const {
  KP_RETURN_IF_ERROR(check_utf8(text));
  ids->clear();
  if (add_bos) ids->push_back(bos_id());
  Scratch scratch;
  return encode_ordinary(text, &scratch, ids);
}

base::Status BpeTokenizer::encode_with_special(const std::string& text, bool add_bos, std::vector<int32_t>* ids) const {
  KP_RETURN_IF_ERROR(check_utf8(text));
  ids->clear();
  if (add_bos) ids->push_back(bos_id());
  Scratch scratch;
  const std::string_view all(text);
  // Every special name is "<|...|>" with no "|>" inside: at each "<|", try the text up to the first
  // "|>" within the longest name's reach. Text between specials is encoded on its own, so the regex
  // restarts after each special token, as in tiktoken.
  size_t done = 0;  // text[0, done) is encoded
  for (size_t at = all.find("<|"); at != std::string_view::npos; at = all.find("<|", at + 1)) {
    const size_t close = all.substr(at, max_special_len_).find("|>", 2);
    if (close == std::string_view::npos) continue;
    const auto it = special_ids_.find(all.substr(at, close + 2));
    if (it == special_ids_.end()) continue;
    KP_RETURN_IF_ERROR(encode_ordinary(all.substr(done, at - done), &scratch, ids));
    ids->push_back(it->second);
    done = at + close + 2;
    at = done - 1;  // the next search starts at `done`
  }
  return encode_ordinary(all.substr(done), &scratch, ids);
}

base::Status BpeTokenizer::encode_ordinary(std::string_view text, Scratch* scratch, std::vector<int32_t>* ids) const {
  if (text.empty()) return base::Status::Ok();
  if (scratch->match == nullptr) scratch->match = pcre2_match_data_create_from_pattern(pre_->code, nullptr);
  if (scratch->match == nullptr) return base::OutOfMemory("tokenizer: cannot allocate PCRE2 match data");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  for (size_t pos = 0; pos < text.size();) {
    // The text was checked as UTF-8 once, up front; each match ends on a character boundary.
    const int rc = pcre2_match(pre_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, scratch->match, nullptr);
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(scratch->match);
    if (rc < 0 || ov[1] <= pos) {
      // Cannot happen for valid UTF-8 (see init), short of PCRE2 hitting a resource limit.
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof(msg));
      return base::Internal("tokenizer: pre-tokenizer regex failed at byte " + std::to_string(pos) + ": " +
                            reinterpret_cast<char*>(msg));
    }
    encode_piece(text.substr(pos, ov[1] - pos), scratch, ids);
    pos = ov[1];
  }
  return base::Status::Ok();
}

// tiktoken's merge: start from single bytes, repeatedly merge the adjacent pair whose concatenation
// is the lowest-ranked token (the leftmost such pair on a tie) until no adjacent pair is a token.
// Parts are a linked list and candidate pairs a min-heap with stale entries skipped, O(n log n) in
// the piece's length: pre-tokens are usually a few bytes, but one can be a whole run of letters.
void BpeTokenizer::encode_piece(std::string_view piece, Scratch* s, std::vector<int32_t>* ids) const {
  const int32_t whole = rank_of(piece);
  if (whole >= 0) {  // the common case: most words are one token
    ids->push_back(whole);
    return;
  }
  const auto n = static_cast<uint32_t>(piece.size());
  s->next.resize(n);
  s->prev.resize(n);
  s->version.assign(n, 0);
  s->heap.clear();
  const auto greater = [](const Scratch::Pair& a, const Scratch::Pair& b) { return a > b; };
  // The token made of part i and the part after it, if any.
  const auto push_pair = [&](uint32_t i) {
    const uint32_t j = s->next[i];
    if (j >= n) return;
    const int32_t r = rank_of(piece.substr(i, s->next[j] - i));
    if (r < 0) return;
    s->heap.push_back({r, i, s->version[i]});
    std::push_heap(s->heap.begin(), s->heap.end(), greater);
  };
  for (uint32_t i = 0; i < n; ++i) {
    s->next[i] = i + 1;
    s->prev[i] = i - 1;  // wraps for part 0, never read
  }
  for (uint32_t i = 0; i + 1 < n; ++i) push_pair(i);
  while (!s->heap.empty()) {
    std::pop_heap(s->heap.begin(), s->heap.end(), greater);
    const Scratch::Pair p = s->heap.back();
    s->heap.pop_back();
    const uint32_t i = p.start;
    if (p.version != s->version[i]) continue;  // part i changed since: this pair is gone
    // Merge part i with the part j after it; j's heap entries go stale with it.
    const uint32_t j = s->next[i];
    ++s->version[j];
    s->next[i] = s->next[j];
    if (s->next[i] < n) s->prev[s->next[i]] = i;
    ++s->version[i];
    push_pair(i);
    if (i > 0) {  // the pair ending in part i is now a different (longer) string
      const uint32_t h = s->prev[i];
      ++s->version[h];
      push_pair(h);
    }
  }
  for (uint32_t i = 0; i < n; i = s->next[i]) ids->push_back(rank_of(piece.substr(i, s->next[i] - i)));
}

// ---- decoding ----

std::string BpeTokenizer::decode_token(int32_t /*prev*/, int32_t id) const {
  if (id < 0 || id >= n_ordinary_) return "";
  return std::string(token_bytes(id));
}

std::string BpeTokenizer::token_text(int32_t id) const {
  if (id >= n_ordinary_ && id < n_ordinary_ + kNumSpecial) return special_names_[id - n_ordinary_];
  return decode_token(-1, id);
}

}  // namespace model
