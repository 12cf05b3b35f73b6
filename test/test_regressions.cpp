// Regressions: bad inputs that once crashed or misbehaved, each kept as a test so it stays fixed.
//
// The inputs are made from the fuzzers' committed seeds (test/fuzz/corpus, written by
// tools/make_fuzz_corpus.py), so these tests need no data from ../shared.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "model/bpe_tokenizer.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "model/tokenizer.h"
#include "test_util.h"

namespace {

using nlohmann::json;

std::string seed(const std::string& rel) {
  std::ifstream f(testutil::source_dir() + "/test/fuzz/corpus/" + rel, std::ios::binary);
  EXPECT_TRUE(f.good()) << "missing seed " << rel;
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A copy of an LLMI file with its JSON header edited (the header must stay within its 4096-byte page).
std::string edit_header(const std::string& file, const std::function<void(json&)>& edit) {
  uint64_t len;
  std::memcpy(&len, file.data() + 8, 8);
  json h = json::parse(file.substr(16, len));
  edit(h);
  const std::string text = h.dump();
  const uint64_t data_start = (16 + len + 4095) / 4096 * 4096;
  EXPECT_LE(16 + text.size(), data_start) << "edited header outgrew its page";
  std::string out = file.substr(0, 8);
  const uint64_t new_len = text.size();
  out.append(reinterpret_cast<const char*>(&new_len), 8);
  out += text;
  out.resize(data_start, '\0');
  return out + file.substr(data_start);
}

base::Status open_bytes(const std::string& bytes, std::unique_ptr<model::ModelFile>* f) {
  const std::string path = testing::TempDir() + "/kp_regression_" + std::to_string(getpid()) + ".bin";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), (std::streamsize)bytes.size());
  }
  const base::Status s = model::ModelFile::open(path, f);
  std::remove(path.c_str());
  return s;
}

// A linear weight stored as int8 in a file whose weight_dtype is fp32 (group_size 0) used to divide by
// the group size while loading: SIGFPE. The reader now refuses int8 tensors outside int8 files.
TEST(Regressions, Int8TensorInFloatFileIsAnErrorNotSigfpe) {
  const std::string bad = edit_header(seed("model_file/llmi_sp_fp32"), [](json& h) {
    for (auto& t : h["tensors"])
      if (t["name"] == "layers.0.wq") {
        t["dtype"] = "int8";
        t["nbytes"] = t["nbytes"].get<uint64_t>() / 4;
      }
  });
  std::unique_ptr<model::ModelFile> f;
  const base::Status s = open_bytes(bad, &f);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("layers.0.wq is int8 but config.weight_dtype is fp32"), std::string::npos) << s.message();
}

// The unmodified seed still loads and runs (so the edit above is what the reader refuses).
TEST(Regressions, SeedModelLoadsAndRuns) {
  std::unique_ptr<model::ModelFile> f;
  ASSERT_TRUE(open_bytes(seed("model_file/llmi_sp_fp32"), &f).ok());
  std::unique_ptr<model::LlamaModel> m;
  ASSERT_TRUE(model::LlamaModel::create(*f, {}, &m).ok());
  std::vector<float> logits(f->config().vocab_size);
  const int32_t tok = f->config().bos_id;
  EXPECT_TRUE(m->forward(&tok, 1, 0, logits.data()).ok());
}

// Found by fuzz_model_file: rope_scaling.type read with value("type", ""), which throws a json
// type_error when the value is not a string; nothing caught it (std::terminate).
TEST(Regressions, RopeScalingTypeNotAStringIsAnErrorNotAbort) {
  for (const json& type : {json(1.0), json::array(), json(nullptr)}) {
    const std::string bad = edit_header(seed("model_file/llmi_sp_fp32"), [&](json& h) {
      h["config"]["rope_scaling"] = {{"type", type}, {"factor", 8.0}};
    });
    std::unique_ptr<model::ModelFile> f;
    const base::Status s = open_bytes(bad, &f);
    ASSERT_FALSE(s.ok()) << type.dump();
    EXPECT_NE(s.message().find("rope_scaling"), std::string::npos) << s.message();
  }
}

// eos_ids were read with get<int32_t>, which wraps 2^32 + 2 to 2: a bad id became a valid one.
TEST(Regressions, EosIdBeyondInt32IsRefused) {
  const std::string bad =
      edit_header(seed("model_file/llmi_sp_fp32"), [](json& h) { h["config"]["eos_ids"] = {(1LL << 32) + 2}; });
  std::unique_ptr<model::ModelFile> f;
  const base::Status s = open_bytes(bad, &f);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("eos_ids"), std::string::npos) << s.message();
}

// SentencePiece encoded invalid UTF-8 as U+FFFD pieces (the BPE tokenizer refused it): now both refuse.
TEST(Regressions, SentencePieceRefusesInvalidUtf8) {
  const std::string blob = seed("tokenizer/sp_bpe").substr(1);  // the first byte is the fuzzer's selector
  std::unique_ptr<model::Tokenizer> tok;
  ASSERT_TRUE(model::load_tokenizer_blob(model::TokenizerType::kSentencePiece, blob, "sp_bpe", &tok).ok());
  std::vector<int32_t> ids;
  EXPECT_TRUE(tok->encode("Once upon a time \xe6\x97\xa5", true, &ids).ok());
  for (const std::string bad : {"ab\xff", "\xc3", "\xed\xa0\x80", "ok \xc0\xaf"}) {
    const base::Status s = tok->encode(bad, true, &ids);
    EXPECT_FALSE(s.ok()) << "accepted invalid UTF-8";
    EXPECT_NE(s.message().find("not valid UTF-8"), std::string::npos) << s.message();
  }
}

// Found by fuzz_tokenizer: tokenizer.json ids were read with get<int64_t> without checking that they
// are integers; a float id such as 1.6e52 was an out-of-range float-to-integer conversion (UBSan).
TEST(Regressions, TokenizerJsonFloatIdIsAnError) {
  const json good = json::parse(seed("tokenizer/tokenizer_json").substr(1));
  std::unique_ptr<model::BpeTokenizer> tok;
  ASSERT_TRUE(model::BpeTokenizer::from_hf_json(good.dump(), "tokenizer.json", &tok).ok());
  for (const char* where : {"vocab", "added_tokens"}) {
    json bad = good;
    if (std::string(where) == "vocab")
      bad["model"]["vocab"].begin().value() = 1.62889e52;
    else
      bad["added_tokens"][0]["id"] = 1.62889e52;
    const base::Status s = model::BpeTokenizer::from_hf_json(bad.dump(), "tokenizer.json", &tok);
    ASSERT_FALSE(s.ok()) << where;
    EXPECT_NE(s.message().find("not an integer"), std::string::npos) << s.message();
  }
}

// A SentencePiece model without a <s> piece has bos_id() -1, which encode(add_bos) put first in the
// ids; it is refused when loaded.
TEST(Regressions, SentencePieceWithoutBosIsRefused) {
  std::string blob = seed("tokenizer/sp_bpe").substr(1);
  const size_t at = blob.find("<s>");  // the piece itself: pieces come first in the protobuf
  ASSERT_NE(at, std::string::npos);
  blob[at + 1] = 't';
  std::unique_ptr<model::Tokenizer> tok;
  const base::Status s = model::load_tokenizer_blob(model::TokenizerType::kSentencePiece, blob, "no_bos", &tok);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no BOS"), std::string::npos) << s.message();
}

}  // namespace
