// Tokenizers against reference libraries: the Llama 3 byte-level BPE (from Meta's tiktoken file and
// from Hugging Face's tokenizer.json) and the SentencePiece ones (Llama 2, tok512) must give exactly
// the ids in test/fixtures/tokenizer_ids.json, which tools/make_tokenizer_fixtures.py computed with
// tiktoken + tokenizers (agreeing) and sentencepiece. Also: round trips, streaming decode of
// characters split across tokens, special tokens, invalid UTF-8, malformed files and load time.
// Needs ../shared/models (skips without it).
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/bpe_tokenizer.h"
#include "model/tokenizer.h"
#include "test_util.h"

namespace {

using nlohmann::json;
using Ids = std::vector<int32_t>;

const json& fixtures() {
  static const json j = [] {
    std::ifstream f(testutil::source_dir() + "/test/fixtures/tokenizer_ids.json");
    return json::parse(f);
  }();
  return j;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Each tokenizer file (relative to models_dir()) is loaded once per run through load_tokenizer_file.
const model::Tokenizer* tokenizer(const std::string& rel) {
  static std::map<std::string, std::unique_ptr<model::Tokenizer>> cache;
  auto& t = cache[rel];
  if (!t) {
    const auto s = model::load_tokenizer_file(testutil::models_dir() + "/" + rel, &t);
    if (!s.ok()) ADD_FAILURE() << rel << ": " << s.message();
  }
  return t.get();
}

const model::BpeTokenizer* bpe(const std::string& rel) {
  return dynamic_cast<const model::BpeTokenizer*>(tokenizer(rel));
}

// "first difference at i: got [..] expected [..]" for a readable failure.
::testing::AssertionResult same_ids(const std::string& what, const Ids& got, const Ids& expected) {
  if (got == expected) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < got.size() && i < expected.size() && got[i] == expected[i]) ++i;
  auto show = [&](const Ids& v) {
    std::string s;
    for (size_t k = i; k < v.size() && k < i + 8; ++k) s += std::to_string(v[k]) + " ";
    return s + (v.size() > i + 8 ? "..." : "");
  };
  return ::testing::AssertionFailure() << what << ": " << got.size() << " ids, expected " << expected.size()
                                       << "; first difference at " << i << ": got [" << show(got)
                                       << "] expected [" << show(expected) << "]";
}

// Every fixture string through `tok`: ids without and with BOS, and the round trip.
void check_against_fixture(const model::Tokenizer& tok, const std::string& fixture_name) {
  const json& strings = fixtures()["strings"];
  const json& fx = fixtures()["tokenizers"][fixture_name];
  ASSERT_EQ(fx["ids"].size(), strings.size());
  EXPECT_EQ(tok.bos_id(), fx["bos_id"].get<int32_t>());
  EXPECT_EQ(tok.eos_id(), fx["eos_id"].get<int32_t>());
  for (size_t i = 0; i < strings.size(); ++i) {
    const std::string name = strings[i]["name"], text = strings[i]["text"];
    const Ids expected = fx["ids"][i];
    Ids got;
    ASSERT_TRUE(tok.encode(text, false, &got).ok()) << name;
    EXPECT_TRUE(same_ids(fixture_name + " '" + name + "'", got, expected));
    ASSERT_TRUE(tok.encode(text, true, &got).ok()) << name;
    ASSERT_FALSE(got.empty());
    EXPECT_EQ(got[0], tok.bos_id()) << name;
    EXPECT_TRUE(same_ids(fixture_name + " '" + name + "' after BOS", Ids(got.begin() + 1, got.end()), expected));
    // Decoding gives the text back, or what the reference decodes to where that differs (tok512
    // collapses runs of spaces).
    const std::string back = fx.contains("decoded") ? fx["decoded"].value(name, text) : text;
    EXPECT_EQ(tok.decode(got), back) << fixture_name << " '" << name << "'";
  }
}

TEST(BpeTokenizer, TiktokenFileGivesTheReferenceIds) {
  KP_SKIP_WITHOUT_MODELS();
  const auto* t = bpe("llama3/tokenizer.model");
  ASSERT_NE(t, nullptr) << "llama3/tokenizer.model should load as the BPE tokenizer";
  EXPECT_EQ(t->vocab_size(), 128256);
  EXPECT_EQ(t->eot_id(), 128009);
  check_against_fixture(*t, "llama3");
}

TEST(BpeTokenizer, TokenizerJsonGivesTheReferenceIds) {
  KP_SKIP_WITHOUT_MODELS();
  const auto* t = bpe("llama3/tokenizer.json");
  ASSERT_NE(t, nullptr) << "llama3/tokenizer.json should load as the BPE tokenizer";
  check_against_fixture(*t, "llama3");
}

TEST(SentencePieceTokenizer, Llama2GivesTheReferenceIds) {
  KP_SKIP_WITHOUT_MODELS();
  const auto* t = tokenizer("llama2/tokenizer.model");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 32000);
  check_against_fixture(*t, "llama2");
}

TEST(SentencePieceTokenizer, Tok512GivesTheReferenceIds) {
  KP_SKIP_WITHOUT_MODELS();
  const auto* t = tokenizer("stories260K/tok512.model");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 512);
  check_against_fixture(*t, "tok512");
}

// The two Llama 3 sources describe the same tokenizer: every id has the same bytes and name.
TEST(BpeTokenizer, BothSourcesHoldTheSameTokens) {
  KP_SKIP_WITHOUT_MODELS();
  const auto* a = bpe("llama3/tokenizer.model");
  const auto* b = bpe("llama3/tokenizer.json");
  ASSERT_TRUE(a && b);
  for (int32_t id = 0; id < a->vocab_size(); ++id) {
    ASSERT_EQ(a->decode_token(-1, id), b->decode_token(-1, id)) << "id " << id;
    ASSERT_EQ(a->token_text(id), b->token_text(id)) << "id " << id;
  }
}

// Token by token through a Utf8Stream, as llama_infer prints: the text comes out whole even where a
// token holds only part of a character (Chinese, emoji).
TEST(BpeTokenizer, StreamingDecodeRebuildsSplitCharacters) {
  KP_SKIP_WITHOUT_MODELS();
  for (const char* rel : {"llama3/tokenizer.model", "llama2/tokenizer.model", "stories260K/tok512.model"}) {
    const auto* t = tokenizer(rel);
    ASSERT_NE(t, nullptr);
    int partial_tokens = 0;  // tokens that are not whole characters on their own
    for (const auto& s : fixtures()["strings"]) {
      const std::string text = s["text"];
      Ids ids;
      ASSERT_TRUE(t->encode(text, true, &ids).ok());
      model::Utf8Stream stream;
      std::string out;
      for (size_t i = 1; i < ids.size(); ++i) {
        const std::string bytes = t->decode_token(ids[i - 1], ids[i]);
        model::Utf8Stream alone;
        if (alone.push(bytes) + alone.flush() != bytes) ++partial_tokens;
        out += stream.push(bytes);
      }
      out += stream.flush();
      EXPECT_EQ(out, t->decode(ids)) << rel << " '" << s["name"].get<std::string>() << "'";
    }
    // Otherwise this test would not test the hold-back at all.
    EXPECT_GT(partial_tokens, 0) << rel;
  }
}

TEST(BpeTokenizer, SpecialTokensOnlyThroughEncodeWithSpecial) {
  KP_SKIP_WITHOUT_MODELS();
  const json& fx = fixtures()["tokenizers"]["llama3"];
  for (const char* rel : {"llama3/tokenizer.model", "llama3/tokenizer.json"}) {
    const auto* t = bpe(rel);
    ASSERT_NE(t, nullptr);
    const json& strings = fixtures()["special_strings"];
    for (size_t i = 0; i < strings.size(); ++i) {
      const std::string name = strings[i]["name"], text = strings[i]["text"];
      Ids ids;
      ASSERT_TRUE(t->encode_with_special(text, false, &ids).ok());
      EXPECT_TRUE(same_ids(std::string(rel) + " special '" + name + "'", ids, fx["special_ids"][i].get<Ids>()));
      // Plain encode treats the same text as text: no special id, and it decodes back unchanged.
      ASSERT_TRUE(t->encode(text, false, &ids).ok());
      for (int32_t id : ids) EXPECT_LT(id, t->num_ordinary()) << rel << " '" << name << "'";
      EXPECT_EQ(t->decode(ids), text);
    }
    Ids ids;
    ASSERT_TRUE(t->encode_with_special("<|eot_id|>", true, &ids).ok());
    EXPECT_EQ(ids, (Ids{t->bos_id(), t->eot_id()}));
    // Names (tokenizer.json's added_tokens) and empty bytes for all 256.
    for (const auto& [id, name] : fx["special_tokens"].items()) {
      EXPECT_EQ(t->token_text(std::stoi(id)), name.get<std::string>()) << rel;
      EXPECT_EQ(t->decode_token(0, std::stoi(id)), "") << rel;
    }
    EXPECT_EQ(t->decode_token(0, -1), "");
    EXPECT_EQ(t->decode_token(0, t->vocab_size()), "");
  }
}

TEST(BpeTokenizer, RefusesInvalidUtf8) {
  KP_SKIP_WITHOUT_MODELS();
  const auto* t = bpe("llama3/tokenizer.model");
  ASSERT_NE(t, nullptr);
  for (const std::string bad : {"\xff", "ok \xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "a\x80z"}) {
    Ids ids;
    auto s = t->encode(bad, false, &ids);
    EXPECT_EQ(s.code(), base::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("not valid UTF-8"), std::string::npos) << s.message();
    s = t->encode_with_special("<|eot_id|>" + bad, false, &ids);
    EXPECT_EQ(s.code(), base::StatusCode::kInvalidArgument);
  }
}

// Long pre-tokens (one run of letters, of spaces, of newlines) stay fast: the merge is O(n log n)
// and the regex neither recurses deeply nor hits PCRE2's limits.
TEST(BpeTokenizer, LongInputs) {
  KP_SKIP_WITHOUT_MODELS();
  const auto* t = bpe("llama3/tokenizer.model");
  ASSERT_NE(t, nullptr);
  std::string letters;
  for (int i = 0; i < 50000; ++i) letters += "qwertzuiop"[i * 7 % 10];
  for (const std::string& text : {letters, std::string(500000, 'a'), std::string(500000, ' ') + "x",
                                  std::string(500000, '\n'), std::string(200000, '7')}) {
    const auto t0 = std::chrono::steady_clock::now();
    Ids ids;
    const auto s = t->encode(text, false, &ids);
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_EQ(t->decode(ids), text);
    EXPECT_LT(seconds_since(t0), 5.0) << "encoding " << text.size() << " bytes";
  }
}

TEST(BpeTokenizer, MalformedFilesAreClearErrors) {
  std::unique_ptr<model::BpeTokenizer> t;
  auto s = model::BpeTokenizer::from_tiktoken("IQ== 0\nnot base64! 1\n", "tok", &t);
  EXPECT_EQ(s.code(), base::StatusCode::kBadModelFile);
  EXPECT_NE(s.message().find("tok: line 2"), std::string::npos) << s.message();
  s = model::BpeTokenizer::from_tiktoken("IQ== 0\nIg== 0\n", "tok", &t);
  EXPECT_NE(s.message().find("rank 0 repeated"), std::string::npos) << s.message();
  s = model::BpeTokenizer::from_tiktoken("IQ== 0\nIg== 2\n", "tok", &t);
  EXPECT_NE(s.message().find("rank 2 out of range"), std::string::npos) << s.message();
  // Every byte must be a token, or some text could not be encoded.
  s = model::BpeTokenizer::from_tiktoken("IQ== 0\n", "tok", &t);
  EXPECT_NE(s.message().find("byte 0 is not a token"), std::string::npos) << s.message();
  s = model::BpeTokenizer::from_hf_json("{\"model\": 3", "tok.json", &t);
  EXPECT_EQ(s.code(), base::StatusCode::kBadModelFile);
  s = model::BpeTokenizer::from_hf_json(R"({"model": {"type": "BPE", "vocab": {}}, "pre_tokenizer": null})", "tok.json", &t);
  EXPECT_EQ(s.code(), base::StatusCode::kUnsupported) << s.message();
}

// A tiktoken file of any size N works, the special tokens following at N..N+255 (docs/model_format.md;
// tools/export.py builds synthetic models with the 256 single bytes as ranks). Needs no model files.
TEST(BpeTokenizer, SmallVocabularyPutsSpecialTokensAfterTheRanks) {
  std::string file;
  const char* b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (int b = 0; b < 256; ++b)  // base64 of the single byte b: two digits and "=="
    file += std::string{b64[b >> 2], b64[(b & 3) << 4]} + "== " + std::to_string(b) + "\n";
  file += "aGk= 256\n";  // "hi"
  std::unique_ptr<model::BpeTokenizer> t;
  const auto s = model::BpeTokenizer::from_tiktoken(file, "tiny", &t);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(t->vocab_size(), 257 + 256);
  EXPECT_EQ(t->bos_id(), 257);
  EXPECT_EQ(t->eos_id(), 258);
  EXPECT_EQ(t->eot_id(), 266);
  EXPECT_EQ(t->token_text(266), "<|eot_id|>");
  Ids ids;
  ASSERT_TRUE(t->encode_with_special("hi<|eot_id|>h\xc3\xa9", true, &ids).ok());
  EXPECT_EQ(ids, (Ids{257, 256, 266, 'h', 0xc3, 0xa9}));
  EXPECT_EQ(t->decode(ids), "hih\xc3\xa9");
}

// The whole 128k vocabulary must load fast: it is read at every start of llama_infer.
TEST(BpeTokenizer, LoadTime) {
  KP_SKIP_WITHOUT_MODELS();
  const std::string dir = testutil::models_dir() + "/llama3/";
  const std::string tiktoken = read_file(dir + "tokenizer.model"), hf = read_file(dir + "tokenizer.json");
  std::unique_ptr<model::Tokenizer> t;
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(model::load_tokenizer_blob(model::TokenizerType::kTiktoken, tiktoken, "tokenizer.model", &t).ok());
  const double tiktoken_s = seconds_since(t0);
  std::unique_ptr<model::BpeTokenizer> b;
  t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(model::BpeTokenizer::from_hf_json(hf, "tokenizer.json", &b).ok());
  const double json_s = seconds_since(t0);
  std::printf("load time: tiktoken file %.1f ms, tokenizer.json %.1f ms\n", 1e3 * tiktoken_s, 1e3 * json_s);
#ifdef NDEBUG
  // Measured 19 ms idle, ~50 ms on a busy 2-core machine (Release); 160 ms under ASan.
  EXPECT_LT(tiktoken_s, 1.0);
#endif
}

}  // namespace
