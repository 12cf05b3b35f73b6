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

#include "heap_counter.h"
#include "model/batch.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "model_test_util.h"
#include "runtime/tp_runner.h"
#include "test_util.h"

namespace {

constexpr int kSeqs = 32, kNew = 24, kMaxPrompt = 40, kPage = 16, kChunk = 16, kBudget = 64;
constexpr int kPagesPerSeq = (kMaxPrompt + kNew + kPage - 1) / kPage;

using StepFn = std::function<base::Status(const model::BatchSeq*, int32_t, const model::StepOutput&)>;

struct Seq {
  std::vector<int32_t> tokens;  // prompt, then the generated tokens (capacity reserved)
  int32_t prompt_len = 0;
  int32_t done = 0;             // positions whose K/V are in the cache
  int32_t join = 0;             // the step at which it joins the batch
  std::vector<int32_t> pages;
  std::vector<int32_t> out;     // generated tokens
  std::vector<float> logits;    // [kNew, vocab] the logits each was chosen from
};

std::vector<Seq> make_seqs(int vocab) {
  std::mt19937 rng(1234);
  std::vector<int32_t> pool(kSeqs * kPagesPerSeq);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);  // nobody gets the identity table
  std::vector<Seq> seqs(kSeqs);
  for (int i = 0; i < kSeqs; ++i) {
    Seq& s = seqs[i];
    s.prompt_len = 3 + (int32_t)(rng() % (kMaxPrompt - 2));
    s.tokens.reserve(kMaxPrompt + kNew + 1);
    s.tokens.push_back(1);  // BOS
    for (int t = 1; t < s.prompt_len; ++t) s.tokens.push_back(3 + (int32_t)(rng() % (vocab - 3)));
    s.join = i % 5;
    s.pages.assign(pool.begin() + i * kPagesPerSeq, pool.begin() + (i + 1) * kPagesPerSeq);
    s.out.reserve(kNew);
    s.logits.reserve((size_t)kNew * vocab);
  }
  return seqs;
}

// Runs every sequence to kNew tokens: each step, each sequence that has joined contributes its next
// prefill chunk (kChunk tokens at most, within the step's budget) or its one decode token.
// `heap_window` counts the allocations of the steps after every sequence has joined and finished its
// prompt (-1 when there were none).
void run(const StepFn& step, std::vector<Seq>& seqs, int vocab, int64_t* heap_window = nullptr) {
  std::vector<model::BatchSeq> batch(seqs.size());
  std::vector<int32_t> who(seqs.size()), next(seqs.size());
  std::vector<float> logits(seqs.size() * vocab);
  model::StepOutput out;
  out.next = next.data();
  out.logits = logits.data();
  int64_t window = -1;
  for (int s = 0;; ++s) {
    int32_t n = 0, budget = kBudget;
    bool all_decoding = true;
    for (size_t i = 0; i < seqs.size(); ++i) {
      Seq& q = seqs[i];
      if (q.join > s || (int)q.out.size() == kNew) continue;
      model::BatchSeq b;
      b.pos = q.done;
      b.tokens = q.tokens.data() + q.done;
      b.n = q.done < q.prompt_len ? std::min({kChunk, q.prompt_len - q.done, budget}) : 1;
      if (b.n <= 0 || b.n > budget) continue;
      all_decoding = all_decoding && q.done >= q.prompt_len;
      b.pages = q.pages.data();
      b.n_pages = (q.done + b.n + kPage - 1) / kPage;
      b.sample = b.host_logits = q.done + b.n >= q.prompt_len;
      budget -= b.n;
      who[n] = (int32_t)i;
      batch[n++] = b;
    }
    if (n == 0) {
      if (s > 5) break;
      continue;
    }
    testutil::HeapCounter heap;
    const base::Status st = step(batch.data(), n, out);
    ASSERT_TRUE(st.ok()) << "step " << s << ": " << st.message();
    for (int32_t k = 0; k < n; ++k) {
      Seq& q = seqs[who[k]];
      q.done += batch[k].n;
      if (!batch[k].sample) continue;
      q.tokens.push_back(next[k]);
      q.out.push_back(next[k]);
      q.logits.insert(q.logits.end(), logits.begin() + (size_t)k * vocab, logits.begin() + (size_t)(k + 1) * vocab);
    }
    if (all_decoding && s > 5 && n == (int)seqs.size()) window = std::max<int64_t>(window, 0) + heap.count();
  }
  if (heap_window != nullptr) *heap_window = window;
}

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
