// Sampler (greedy, temperature, top-k, top-p, seeds), the UTF-8 stream, and the SentencePiece tokenizer.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "model/tokenizer.h"
#include "sampler/sampler.h"
#include "test_util.h"

namespace {

TEST(Sampler, RejectsNonsensicalValues) {
  sampler::Sampler s;
  EXPECT_FALSE(sampler::Sampler::create({-0.5f, 0, 1.f, 0}, 10, &s).ok());
  EXPECT_FALSE(sampler::Sampler::create({NAN, 0, 1.f, 0}, 10, &s).ok());
  EXPECT_FALSE(sampler::Sampler::create({1.f, 0, 0.f, 0}, 10, &s).ok());
  EXPECT_FALSE(sampler::Sampler::create({1.f, 0, 1.5f, 0}, 10, &s).ok());
  EXPECT_FALSE(sampler::Sampler::create({1.f, -1, 1.f, 0}, 10, &s).ok());
  EXPECT_TRUE(sampler::Sampler::create({1.f, 0, 1.f, 0}, 10, &s).ok());
}

TEST(Sampler, GreedyTakesTheLowestIndexOfTheMaximum) {
  sampler::Sampler s;
  ASSERT_TRUE(sampler::Sampler::create({}, 5, &s).ok());
  float l[5] = {0.1f, 3.f, -2.f, 3.f, 1.f};
  EXPECT_EQ(s.sample(l), 1);
}

// top_k = 1 and a tiny top_p both reduce sampling to the argmax.
TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
  for (const sampler::SamplerConfig& cfg : {sampler::SamplerConfig{1.f, 1, 1.f, 3}, sampler::SamplerConfig{1.f, 0, 1e-6f, 3}}) {
    sampler::Sampler s;
    ASSERT_TRUE(sampler::Sampler::create(cfg, 4, &s).ok());
    for (int i = 0; i < 50; ++i) {
      float l[4] = {0.5f, 0.1f, 0.7f, 0.69f};
      EXPECT_EQ(s.sample(l), 2);
    }
  }
}

TEST(Sampler, RejectsBadMinPAndPenalties) {
  sampler::Sampler s;
  sampler::SamplerConfig c{1.f, 0, 1.f, 0};
  c.min_p = 1.5f;
  EXPECT_FALSE(sampler::Sampler::create(c, 10, &s).ok());
  c.min_p = 0.1f, c.repeat_penalty = 0.f;
  EXPECT_FALSE(sampler::Sampler::create(c, 10, &s).ok());
  c.repeat_penalty = 1.1f, c.repeat_last_n = -2;
  EXPECT_FALSE(sampler::Sampler::create(c, 10, &s).ok());
  c.repeat_last_n = -1;
  EXPECT_TRUE(sampler::Sampler::create(c, 10, &s, 32).ok());
}

// min_p keeps only the tokens at least min_p times as likely as the best: with probabilities
// proportional to e^2, e^1.9, e^0 and min_p 0.5, tokens 0 and 1 stay (ratio e^-0.1) and 2, 3 never
// come up (ratio e^-2 < 0.5).
TEST(Sampler, MinPDropsTheUnlikelyTokens) {
  sampler::SamplerConfig c{1.f, 0, 1.f, 5};
  c.min_p = 0.5f;
  sampler::Sampler s;
  ASSERT_TRUE(sampler::Sampler::create(c, 4, &s).ok());
  std::map<int, int> count;
  for (int i = 0; i < 2000; ++i) {
    float l[4] = {2.f, 1.9f, 0.f, 0.f};
    ++count[s.sample(l)];
  }
  EXPECT_EQ(count[2] + count[3], 0);
  EXPECT_GT(count[0], 800);
  EXPECT_GT(count[1], 700);
}

// The penalty divides positive logits and multiplies negative ones, once per distinct token of the
// window, and forgets tokens that left the window (repeat_last_n 2 here).
TEST(Sampler, RepeatPenaltyOverTheLastTokens) {
  sampler::SamplerConfig c{0.f, 0, 1.f, 0};
  c.repeat_penalty = 2.f;
  c.repeat_last_n = 2;
  sampler::Sampler s;
  ASSERT_TRUE(sampler::Sampler::create(c, 4, &s).ok());
  EXPECT_FALSE(s.is_greedy());  // needs the logits on the host
  // Token 0 (logit 3) halves to 1.5 once it is seen, even twice; token 1 (2.0) then wins.
  s.accept(0);
  s.accept(0);
  float a[4] = {3.f, 2.f, -1.f, 0.f};
  EXPECT_EQ(s.sample(a), 1);
  EXPECT_FLOAT_EQ(a[0], 1.5f);
  // Negative logits grow more negative: with tokens 1 and 2 in the window, 1 -> 1.0, 2 -> -2.
  s.accept(1);
  s.accept(2);  // the window is now {1, 2}: token 0 has left it
  float b[4] = {0.9f, 2.f, -1.f, 0.95f};
  EXPECT_EQ(s.sample(b), 1);  // 2.0 / 2 = 1.0 still beats 0.95 and 0.9
  EXPECT_FLOAT_EQ(b[0], 0.9f);
  EXPECT_FLOAT_EQ(b[2], -2.f);
  s.reset_history();
  float d[4] = {3.f, 2.f, -1.f, 0.f};
  EXPECT_EQ(s.sample(d), 0);
  EXPECT_FLOAT_EQ(d[0], 3.f);
}

// Frequencies follow softmax(logits / T) within 4 standard deviations over 20000 draws.
TEST(Sampler, FrequenciesFollowTheTemperedSoftmax) {
  const float logits[4] = {1.f, 2.f, 0.f, 1.5f};
  const float T = 0.7f;
  double p[4], z = 0;
  for (int i = 0; i < 4; ++i) z += p[i] = std::exp(logits[i] / T);
  sampler::Sampler s;
  ASSERT_TRUE(sampler::Sampler::create({T, 0, 1.f, 11}, 4, &s).ok());
  const int N = 20000;
  std::map<int, int> count;
  for (int i = 0; i < N; ++i) {
    float l[4] = {logits[0], logits[1], logits[2], logits[3]};
    ++count[s.sample(l)];
  }
  for (int i = 0; i < 4; ++i) {
    const double pi = p[i] / z, sd = std::sqrt(N * pi * (1 - pi));
    EXPECT_NEAR(count[i], N * pi, 4 * sd) << "token " << i;
  }
}

// top_p = 0.6 over probabilities {0.5, 0.3, 0.2}: the nucleus is the first two tokens, renormalised.
TEST(Sampler, TopPKeepsTheNucleus) {
  sampler::Sampler s;
  ASSERT_TRUE(sampler::Sampler::create({1.f, 0, 0.6f, 5}, 3, &s).ok());
  std::map<int, int> count;
  for (int i = 0; i < 10000; ++i) {
    float l[3] = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
    ++count[s.sample(l)];
  }
  EXPECT_EQ(count[2], 0);
  EXPECT_NEAR(count[0] / 10000.0, 0.625, 0.03);
}

TEST(Utf8Stream, HoldsBackSplitCharacters) {
  model::Utf8Stream u;
  EXPECT_EQ(u.push("a\xe4"), "a");        // first byte of 中 (e4 b8 ad)
  EXPECT_EQ(u.push("\xb8"), "");
  EXPECT_EQ(u.push("\xad!"), "\xe4\xb8\xad!");
  EXPECT_EQ(u.push("\xf0\x9f"), "");      // half an emoji
  EXPECT_EQ(u.push("\x98\x80"), "\xf0\x9f\x98\x80");
  EXPECT_EQ(u.flush(), "");
}

TEST(Utf8Stream, InvalidBytesBecomeReplacementCharacters) {
  model::Utf8Stream u;
  EXPECT_EQ(u.push("\xff" "a"), "\xef\xbf\xbd" "a");
  EXPECT_EQ(u.push("\xe4" "b"), "\xef\xbf\xbd" "b");  // lead byte cut short by ASCII
  EXPECT_EQ(u.push("\xc0\xaf"), "\xef\xbf\xbd\xef\xbf\xbd");  // overlong form
  EXPECT_EQ(u.push("\xe4\xb8"), "");
  EXPECT_EQ(u.flush(), "\xef\xbf\xbd");  // generation ended mid-character
}

class SentencePieceTest : public ::testing::Test {
 protected:
  void load(const std::string& rel) {
    if (testutil::models_dir().empty()) GTEST_SKIP() << "needs ../shared/models beside the checkout; it is absent";
    const base::Status s = model::load_tokenizer_file(testutil::models_dir() + rel, &tok_);
    ASSERT_TRUE(s.ok()) << s.message();
  }
  std::unique_ptr<model::Tokenizer> tok_;
};

TEST_F(SentencePieceTest, Tok512RoundTripsAndAddsBos) {
  load("/stories260K/tok512.model");
  EXPECT_EQ(tok_->vocab_size(), 512);
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_id(), 2);
  std::vector<int32_t> ids;
  ASSERT_TRUE(tok_->encode("Once upon a time", true, &ids).ok());
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 403, 407, 261, 378}));  // as sentencepiece's Python package gives
  EXPECT_EQ(tok_->decode(ids), "Once upon a time");
  // Characters outside the 512-piece vocabulary fall back to bytes and come back intact.
  ASSERT_TRUE(tok_->encode("Zoë said 你好", false, &ids).ok());
  EXPECT_EQ(tok_->decode(ids), " Zoë said 你好");
}

TEST_F(SentencePieceTest, Llama2TokenizerRoundTrips) {
  load("/llama2/tokenizer.model");
  EXPECT_EQ(tok_->vocab_size(), 32000);
  for (const char* text : {"Hello, world!", "  two  spaces", "def f(x):\n    return x ** 2", "emoji 😀 and 中文"}) {
    std::vector<int32_t> ids;
    ASSERT_TRUE(tok_->encode(text, true, &ids).ok());
    EXPECT_EQ(tok_->decode(ids), text);
  }
}

TEST(Tokenizer, MissingOrBogusFileIsAnError) {
  std::unique_ptr<model::Tokenizer> t;
  EXPECT_EQ(model::load_tokenizer_file("/nonexistent.model", &t).code(), base::StatusCode::kNotFound);
  EXPECT_FALSE(model::load_tokenizer_blob(model::TokenizerType::kSentencePiece, "not a protobuf", "x", &t).ok());
}

}  // namespace
