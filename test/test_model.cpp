// The Llama model end to end on the CPU with a real trained checkpoint (stories260K):
//  - greedy token ids identical to the independent numpy reference (tools/reference_llama2c.py,
//    float64), committed in test/fixtures/stories260K_greedy.json;
//  - batched prefill, chunked prefill and token-by-token decoding agree;
//  - nothing is allocated while generating.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "base/buffer.h"
#include "runtime/generator.h"
#include "model/kv_cache.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "model/tokenizer.h"
#include "sampler/sampler.h"
#include "heap_counter.h"
#include "model_test_util.h"
#include "test_util.h"

namespace {

struct Stories {
  std::unique_ptr<model::ModelFile> file;
  std::unique_ptr<model::Tokenizer> tok;
};

void open_stories(Stories* s) {
  const std::string dir = testutil::models_dir() + "/stories260K/";
  ASSERT_TRUE(model::ModelFile::open(dir + "stories260K.bin", &s->file).ok());
  ASSERT_TRUE(model::load_tokenizer_file(dir + "tok512.model", &s->tok).ok());
}

std::unique_ptr<model::LlamaModel> make_model(const model::ModelFile& f, int32_t max_batch_tokens = 256) {
  model::ModelOptions o;
  o.max_batch_tokens = max_batch_tokens;
  std::unique_ptr<model::LlamaModel> m;
  const base::Status s = model::LlamaModel::create(f, o, &m);
  EXPECT_TRUE(s.ok()) << s.message();
  return m;
}

using testutil::greedy;

TEST(Stories260K, ConfigFromLlama2cHeader) {
  KP_SKIP_WITHOUT_MODELS();
  Stories s;
  open_stories(&s);
  const auto& c = s.file->config();
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(s.tok->vocab_size(), 512);
}

// Prompt encoding and greedy continuation match the float64 numpy reference exactly.
TEST(Stories260K, GreedyMatchesIndependentReference) {
  KP_SKIP_WITHOUT_MODELS();
  Stories s;
  open_stories(&s);
  std::ifstream f(testutil::source_dir() + "/test/fixtures/stories260K_greedy.json");
  ASSERT_TRUE(f.good());
  const nlohmann::json fx = nlohmann::json::parse(f);
  auto m = make_model(*s.file);
  ASSERT_GE(fx["cases"].size(), 5u);
  for (const auto& c : fx["cases"]) {
    const std::string prompt = c["prompt"];
    std::vector<int32_t> ids;
    ASSERT_TRUE(s.tok->encode(prompt, true, &ids).ok());
    EXPECT_EQ(ids, c["prompt_ids"].get<std::vector<int32_t>>()) << prompt;
    const auto want = c["generated_ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(greedy(*m, ids, (int)want.size()), want) << prompt;
  }
}

// One batched prefill, a prefill in chunks of 3 tokens, and one token at a time give the same logits
// (up to float rounding: the GEMM and GEMV paths sum in different orders).
TEST(Stories260K, BatchedChunkedAndSequentialPrefillAgree) {
  KP_SKIP_WITHOUT_MODELS();
  Stories s;
  open_stories(&s);
  std::vector<int32_t> ids;
  ASSERT_TRUE(s.tok->encode("One day, a little girl named Sue found a big red ball", true, &ids).ok());
  const int V = s.file->config().vocab_size;
  std::vector<float> batched(V), chunked(V), sequential(V);
  auto m1 = make_model(*s.file);
  ASSERT_TRUE(m1->prefill(ids, 0, batched.data()).ok());
  auto m2 = make_model(*s.file, 3);
  ASSERT_TRUE(m2->prefill(ids, 0, chunked.data()).ok());
  auto m3 = make_model(*s.file);
  for (size_t i = 0; i < ids.size(); ++i)
    ASSERT_TRUE(m3->forward(&ids[i], 1, (int32_t)i, i + 1 == ids.size() ? sequential.data() : nullptr).ok());
  std::vector<double> ref(batched.begin(), batched.end());
  EXPECT_TRUE(testutil::all_close(chunked, ref, 1e-4, 1e-4));
  EXPECT_TRUE(testutil::all_close(sequential, ref, 1e-4, 1e-4));
}

// After the first decoded token, `steps` decode steps make no heap allocation at all: every malloc and
// new of the process is counted (heap_counter.h), on every thread, not only the project's allocator,
// whose counters must not move either. `sc` picks the path: greedy (decode_greedy, the argmax in the
// model) or sampled (forward to host logits, then the Sampler).
void expect_no_allocation_while_decoding(model::LlamaModel& m, const std::vector<int32_t>& prompt,
                                         const sampler::SamplerConfig& sc, int steps) {
  ASSERT_TRUE(testutil::heap_counter_works()) << "the heap counter is not linked into this test";
  sampler::Sampler smp;
  ASSERT_TRUE(sampler::Sampler::create(sc, m.config().vocab_size, &smp).ok());
  std::vector<float> logits(m.config().vocab_size);
  auto* alloc = m.allocator();
  int64_t alloc_before = -1, bytes_before = -1;
  bool opened = false;
  testutil::DecodeWindow window(steps, [&] {  // runs as the window opens and as it closes
    if (opened) return;
    opened = true;
    alloc_before = alloc->allocations(), bytes_before = alloc->bytes_in_use();
  });
  runtime::GenerateOptions go;
  go.max_new_tokens = window.total_tokens();
  go.stop_at_eos = false;
  runtime::GenerateStats st;
  ASSERT_TRUE(runtime::generate(m, smp, prompt, 0, go, logits.data(), [&](int32_t) {
    window.on_token();
    return true;
  }, &st).ok());
  ASSERT_TRUE(window.complete()) << st.generated_tokens << " tokens generated; stop: " << st.stop_reason;
  EXPECT_EQ(window.allocations(), 0) << window.allocations() << " heap allocations in " << steps
                                     << " decode steps (temperature " << sc.temperature << ")";
  EXPECT_GT(alloc_before, 0);  // the model's blocks were counted, so an unchanged count means something
  EXPECT_EQ(alloc->allocations(), alloc_before);
  EXPECT_EQ(alloc->bytes_in_use(), bytes_before);
}

const sampler::SamplerConfig kGreedy{};
const sampler::SamplerConfig kSampled{0.9f, 40, 0.95f, 7};

// The KV cache and the workspace are taken at start-up: 200 decode steps allocate nothing.
TEST(Stories260K, NoAllocationWhileGenerating) {
  KP_SKIP_WITHOUT_MODELS();
  Stories s;
  open_stories(&s);
  auto m = make_model(*s.file);
  std::vector<int32_t> ids;
  ASSERT_TRUE(s.tok->encode("Once upon a time", true, &ids).ok());
  expect_no_allocation_while_decoding(*m, ids, kGreedy, 200);
  expect_no_allocation_while_decoding(*m, ids, kSampled, 200);
}

// The cache manager takes exactly one allocation, of n_layers x 2 x max_seq_len x n_kv_heads x head_dim
// x 4 bytes for stories260K's shape: 5 x 2 x 512 x 4 x 8 x 4 = 655360, written out by hand. Its own
// allocator instance, so its counters see nothing else.
TEST(KVCache, OneAllocationOfTheShapesSize) {
  base::CPUAllocator alloc;
  model::KVCacheManager kv;
  ASSERT_TRUE(kv.init({5, 512, 4, 8, base::DType::kFp32}, &alloc).ok());
  EXPECT_EQ(alloc.allocations(), 1);
  EXPECT_EQ(alloc.bytes_in_use(), 655360);
  // Layer 3's V: matrix 2 * 3 + 1 of [512, 32] fp32 (65536 bytes each) in the block.
  const tensor::Tensor v3 = kv.value(3);
  EXPECT_EQ(v3.shape(), (tensor::Shape{512, 32}));
  EXPECT_EQ(static_cast<const char*>(v3.data()) - static_cast<const char*>(kv.key(0).data()), 7 * 65536);
}

// LlamaModel::create takes three blocks from the host allocator and no more: the weights (the stacked
// wqkv and w13 copied in fp16; every other tensor used in place from the mapped file), the KV cache,
// the workspace. Weights 4128768 bytes and cache 2097152 bytes, worked out by hand in test_out_of_memory.cpp
// (ModelWeightsOnTheHost, ModelKvCacheOnTheHost).
TEST(Storyteller, ThreeBlocksWeightsKvCacheAndWorkspace) {
  std::unique_ptr<model::ModelFile> f;
  ASSERT_TRUE(model::ModelFile::open(testutil::source_dir() + "/models/storyteller.bin", &f).ok());
  auto* alloc = base::CPUAllocator::get();
  const int64_t n0 = alloc->allocations(), b0 = alloc->bytes_in_use();
  auto m = make_model(*f);
  ASSERT_TRUE(m);
  EXPECT_EQ(alloc->allocations() - n0, 3);
  EXPECT_EQ(alloc->bytes_in_use() - b0, 4128768 + 2097152 + (int64_t)m->workspace().bytes);
  EXPECT_TRUE(testutil::kv_cache_is_one_block(*m, 2097152));
}

// The project's own model (models/storyteller.bin, fp16) against the greedy ids PyTorch computed for
// it before export (test/fixtures/storyteller_greedy.json): 200 tokens identical.
TEST(Storyteller, GreedyMatchesPyTorch) {
  std::unique_ptr<model::ModelFile> f;
  ASSERT_TRUE(model::ModelFile::open(testutil::source_dir() + "/models/storyteller.bin", &f).ok());
  std::unique_ptr<model::Tokenizer> tok;
  ASSERT_TRUE(model::load_tokenizer_blob(f->tokenizer_type(), f->tokenizer_blob(), "storyteller", &tok).ok());
  std::ifstream in(testutil::source_dir() + "/test/fixtures/storyteller_greedy.json");
  const nlohmann::json fx = nlohmann::json::parse(in);
  std::vector<int32_t> ids;
  ASSERT_TRUE(tok->encode(fx["prompt"], true, &ids).ok());
  EXPECT_EQ(ids, fx["prompt_ids"].get<std::vector<int32_t>>());
  auto m = make_model(*f);
  EXPECT_EQ(greedy(*m, ids, 200), fx["generated_ids"].get<std::vector<int32_t>>());
}

// The same on the project's own model (fp16 in the file, and in memory: widened inside the kernels), which needs no
// test data: this test runs everywhere.
TEST(Storyteller, NoAllocationWhileGenerating) {
  std::unique_ptr<model::ModelFile> f;
  ASSERT_TRUE(model::ModelFile::open(testutil::source_dir() + "/models/storyteller.bin", &f).ok());
  std::unique_ptr<model::Tokenizer> tok;
  ASSERT_TRUE(model::load_tokenizer_blob(f->tokenizer_type(), f->tokenizer_blob(), "storyteller", &tok).ok());
  std::vector<int32_t> ids;
  ASSERT_TRUE(tok->encode("Once upon a time", true, &ids).ok());
  auto m = make_model(*f);
  expect_no_allocation_while_decoding(*m, ids, kGreedy, 200);
  expect_no_allocation_while_decoding(*m, ids, kSampled, 200);
}

TEST(Stories260K, ContextLimitIsAnErrorNotACrash) {
  KP_SKIP_WITHOUT_MODELS();
  Stories s;
  open_stories(&s);
  auto m = make_model(*s.file);
  std::vector<float> logits(512);
  int32_t tok = 1;
  EXPECT_FALSE(m->forward(&tok, 1, 512, logits.data()).ok());
  tok = 600;  // outside the vocabulary
  EXPECT_FALSE(m->forward(&tok, 1, 0, logits.data()).ok());
}

TEST(Stories260K, MaxSeqLenAboveTheModelIsRejected) {
  KP_SKIP_WITHOUT_MODELS();
  Stories s;
  open_stories(&s);
  model::ModelOptions o;
  o.max_seq_len = 513;
  std::unique_ptr<model::LlamaModel> m;
  EXPECT_FALSE(model::LlamaModel::create(*s.file, o, &m).ok());
}

TEST(Stories260K, SamplingIsRepeatableWithASeed) {
  KP_SKIP_WITHOUT_MODELS();
  Stories s;
  open_stories(&s);
  auto m = make_model(*s.file);
  std::vector<int32_t> ids;
  ASSERT_TRUE(s.tok->encode("The cat", true, &ids).ok());
  auto run = [&](uint64_t seed) {
    sampler::Sampler smp;
    EXPECT_TRUE(sampler::Sampler::create({1.0f, 0, 0.9f, seed}, 512, &smp).ok());
    std::vector<float> logits(512);
    std::vector<int32_t> out;
    runtime::GenerateOptions go;
    go.max_new_tokens = 40;
    go.stop_at_eos = false;
    runtime::GenerateStats st;
    EXPECT_TRUE(runtime::generate(*m, smp, ids, 0, go, logits.data(), [&](int32_t t) {
      out.push_back(t);
      return true;
    }, &st).ok());
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

}  // namespace
