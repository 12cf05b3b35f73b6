// The batched forward step (LlamaModel::step, TpRunner::step) on the CPU with storyteller (fp16
// weights, fp32 activations): 32 sequences with prompts of different lengths join at different steps,
// long prompts are prefilled in chunks next to other sequences' decode rows, and every sequence's
// greedy tokens and its logits, bit for bit, must be exactly those it gets when run alone through the
// same pages; its tokens those of the single-sequence path (llama_infer's contiguous cache). Decode steps of a running batch allocate
// nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "batch_driver.h"
#include "heap_counter.h"
#include "model/batch.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "model_test_util.h"
#include "runtime/tp_runner.h"
#include "test_util.h"

namespace {

using testutil::kNew;
using testutil::kSeqs;
using testutil::Seq;
using testutil::StepFn;
using testutil::make_seqs;
using testutil::run;
using testutil::kBudget;
using testutil::kPage;
using testutil::kPagesPerSeq;

struct Storyteller {
  std::unique_ptr<model::ModelFile> file;
  model::ModelOptions opts;
  Storyteller() {
    EXPECT_TRUE(model::ModelFile::open(testutil::source_dir() + "/models/storyteller.bin", &file).ok());
    opts.max_batch_seqs = kSeqs;
    opts.max_batch_tokens = kBudget;
    opts.kv_capacity = kSeqs * kPagesPerSeq * kPage;
    opts.page_size = kPage;
  }
};

// Each sequence alone through its own pages, and through the single-sequence (contiguous) path.
void expect_same_as_alone(const StepFn& step, const std::vector<Seq>& batched, int vocab,
                          const std::function<std::vector<int32_t>(const std::vector<int32_t>&)>& single) {
  std::vector<Seq> alone = make_seqs(vocab);
  for (int i = 0; i < kSeqs; ++i) {
    std::vector<Seq> one(1, alone[i]);
    one[0].join = 0;
    run(step, one, vocab);
    EXPECT_EQ(batched[i].out, one[0].out) << "sequence " << i << " (prompt of " << alone[i].prompt_len << ")";
    EXPECT_TRUE(batched[i].logits == one[0].logits) << "sequence " << i << ": logits differ from its own alone";
    const std::vector<int32_t> prompt(alone[i].tokens.begin(), alone[i].tokens.begin() + alone[i].prompt_len);
    if (i % 8 == 0) EXPECT_EQ(batched[i].out, single(prompt)) << "sequence " << i << " on the contiguous path";
  }
}

TEST(BatchedStep, ThirtyTwoSequencesGiveTheTokensEachGivesAlone) {
  Storyteller st;
  std::unique_ptr<model::LlamaModel> m;
  ASSERT_TRUE(model::LlamaModel::create(*st.file, st.opts, &m).ok());
  const int vocab = m->config().vocab_size;
  StepFn step = [&](const model::BatchSeq* b, int32_t n, const model::StepOutput& o) { return m->step(b, n, o); };
  std::vector<Seq> seqs = make_seqs(vocab);
  ASSERT_TRUE(testutil::heap_counter_works());
  int64_t heap = -1;
  run(step, seqs, vocab, &heap);
  EXPECT_EQ(heap, 0) << "allocations in the decode steps of the full batch (-1: there were none)";
  int differing = 0;  // the sequences do not all say the same thing
  for (int i = 1; i < kSeqs; ++i) differing += seqs[i].out != seqs[0].out;
  EXPECT_GT(differing, kSeqs / 2);
  expect_same_as_alone(step, seqs, vocab, [&](const std::vector<int32_t>& p) { return testutil::greedy(*m, p, kNew); });
}

// Two CPU ranks: every step's batch goes to both; the batched tokens equal each sequence alone on
// the same two ranks.
TEST(BatchedStep, TensorParallelTwoRanksRunTheBatchedStep) {
  Storyteller st;
  std::unique_ptr<runtime::TpRunner> r;
  ASSERT_TRUE(runtime::TpRunner::create(*st.file, st.opts, 2, &r).ok());
  const int vocab = r->config().vocab_size;
  StepFn step = [&](const model::BatchSeq* b, int32_t n, const model::StepOutput& o) { return r->step(b, n, o); };
  std::vector<Seq> seqs = make_seqs(vocab);
  run(step, seqs, vocab);
  expect_same_as_alone(step, seqs, vocab, [&](const std::vector<int32_t>& p) { return testutil::greedy(*r, p, kNew); });
}

}  // namespace
