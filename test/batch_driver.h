// A small driver of the batched step for tests (test_batch.cpp on the CPU, test_gpu_paged.cpp on the
// GPU): 32 sequences with prompts of 3-40 tokens on shuffled pages join over the first five steps;
// each step every joined sequence adds its next prefill chunk (at most kChunk tokens, within the
// step's budget) or its one decode token, until each has kNew greedy tokens.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "heap_counter.h"
#include "model/batch.h"

namespace testutil {

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

inline std::vector<Seq> make_seqs(int vocab) {
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
inline void run(const StepFn& step, std::vector<Seq>& seqs, int vocab, int64_t* heap_window = nullptr) {
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

}  // namespace testutil
