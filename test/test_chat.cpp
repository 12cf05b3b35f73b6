// Chat templates give exactly the token ids of the reference renderings (test/fixtures/chat_ids.json,
// made by tools/make_chat_fixtures.py with Hugging Face's template + tokenizers for Llama 3 and
// sentencepiece with Meta's format for Llama 2).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "model/chat.h"
#include "model/tokenizer.h"
#include "test_util.h"

namespace {

void check_family(const std::string& key, model::Family family, const std::string& tokenizer) {
  std::unique_ptr<model::Tokenizer> tok;
  ASSERT_TRUE(model::load_tokenizer_file(testutil::models_dir() + tokenizer, &tok).ok());
  std::unique_ptr<model::ChatTemplate> tmpl;
  ASSERT_TRUE(model::ChatTemplate::create(family, *tok, &tmpl).ok());
  std::ifstream f(testutil::source_dir() + "/test/fixtures/chat_ids.json");
  const auto fx = nlohmann::json::parse(f)[key];
  for (const auto& c : fx["cases"]) {
    for (size_t i = 0; i < c["turns"].size(); ++i) {
      std::vector<int32_t> ids;
      ASSERT_TRUE(tmpl->user_turn(c["system"], c["turns"][i], i == 0, &ids).ok());
      EXPECT_EQ(ids, c["turn_ids"][i].get<std::vector<int32_t>>()) << key << ": " << c["turns"][i];
    }
  }
}

TEST(ChatTemplate, Llama3MatchesHuggingFaceTemplate) {
  KP_SKIP_WITHOUT_MODELS();
  check_family("llama3", model::Family::kLlama3, "/llama3/tokenizer.model");
}

TEST(ChatTemplate, Llama2MatchesMetaFormat) {
  KP_SKIP_WITHOUT_MODELS();
  check_family("llama2", model::Family::kLlama2, "/llama2/tokenizer.model");
}

TEST(ChatTemplate, EndOfTurnTokens) {
  KP_SKIP_WITHOUT_MODELS();
  std::unique_ptr<model::Tokenizer> t3, t2;
  ASSERT_TRUE(model::load_tokenizer_file(testutil::models_dir() + "/llama3/tokenizer.json", &t3).ok());
  ASSERT_TRUE(model::load_tokenizer_file(testutil::models_dir() + "/llama2/tokenizer.model", &t2).ok());
  std::unique_ptr<model::ChatTemplate> c3, c2;
  ASSERT_TRUE(model::ChatTemplate::create(model::Family::kLlama3, *t3, &c3).ok());
  ASSERT_TRUE(model::ChatTemplate::create(model::Family::kLlama2, *t2, &c2).ok());
  EXPECT_EQ(c3->end_of_turn(), 128009);  // <|eot_id|>
  EXPECT_EQ(c2->end_of_turn(), 2);       // </s>
  // A Llama 3 template over a SentencePiece tokenizer is refused, not guessed.
  std::unique_ptr<model::ChatTemplate> bad;
  EXPECT_FALSE(model::ChatTemplate::create(model::Family::kLlama3, *t2, &bad).ok());
}

}  // namespace
