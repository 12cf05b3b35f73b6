// The continuous-batching scheduler (runtime/scheduler.h) over a fake model that keeps a cache of its
// own: every row writes its token into its slot, and a sequence's next token is a hash of all the
// tokens it reads back through its page table. So a wrong page table, a wrongly shared prefix page, a
// page reused too early or a recomputation that misses a token all change the tokens, which are
// compared with the same hash over the true token list. Checked: outputs, the token budget and the
// sequence limit of every step, decode rows in every step of a long prefill, preemption when pages
// run out, the bounded queue, cancellation, prefix-cache hits, stop tokens, and the page accounting
// back to zero.
#include <gtest/gtest.h>

#include <map>
#include <thread>
#include <vector>

#include "model/page_allocator.h"
#include "runtime/scheduler.h"

namespace {

constexpr int32_t kVocab = 97, kStop = 0;

uint32_t hash_tokens(const int32_t* t, int32_t n) {
  uint32_t h = 2166136261u;
  for (int32_t i = 0; i < n; ++i) h = (h ^ (uint32_t)t[i]) * 16777619u;
  return h;
}
// The fake model's next token: never the stop token unless `allow_stop`.
int32_t next_of(uint32_t h, bool allow_stop) { return allow_stop ? (int32_t)(h % kVocab) : 1 + (int32_t)(h % (kVocab - 1)); }

struct FakeModel {
  int32_t page_size = 4;
  bool allow_stop = false;
  std::vector<int32_t> cache;  // token in each slot (-1: never written)
  int32_t max_rows = 0, max_seqs = 0, steps = 0, steps_with_chunk_and_decode = 0;
  explicit FakeModel(int32_t n_pages, int32_t ps) : page_size(ps), cache((size_t)n_pages * ps, -1) {}
  base::Status operator()(const model::BatchSeq* b, int32_t n, const model::StepOutput& out) {
    int32_t rows = 0;
    bool chunk = false, decode = false;
    for (int32_t i = 0; i < n; ++i) {
      rows += b[i].n;
      (b[i].n > 1 ? chunk : decode) = true;
      for (int32_t t = 0; t < b[i].n; ++t) {
        const int32_t p = b[i].pos + t;
        cache[(size_t)b[i].pages[p / page_size] * page_size + p % page_size] = b[i].tokens[t];
      }
    }
    for (int32_t i = 0; i < n; ++i) {
      if (!b[i].sample) continue;
      std::vector<int32_t> seen(b[i].pos + b[i].n);
      for (int32_t p = 0; p < (int32_t)seen.size(); ++p)
        seen[p] = cache[(size_t)b[i].pages[p / page_size] * page_size + p % page_size];
      const int32_t next = next_of(hash_tokens(seen.data(), (int32_t)seen.size()), allow_stop);
      out.next[i] = next;
      if (b[i].host_logits)
        for (int32_t v = 0; v < kVocab; ++v) out.logits[(size_t)i * kVocab + v] = v == next ? 0.f : -1e9f;
    }
    max_rows = std::max(max_rows, rows);
    max_seqs = std::max(max_seqs, n);
    steps_with_chunk_and_decode += chunk && decode;
    ++steps;
    return base::Status::Ok();
  }
};

std::vector<int32_t> expected(std::vector<int32_t> tokens, int32_t n, bool allow_stop = false) {
  std::vector<int32_t> out;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t t = next_of(hash_tokens(tokens.data(), (int32_t)tokens.size()), allow_stop);
    if (allow_stop && t == kStop) break;
    out.push_back(t);
    tokens.push_back(t);
  }
  return out;
}

std::vector<int32_t> prompt_of(int32_t len, int32_t seed) {
  std::vector<int32_t> p(len);
  for (int32_t i = 0; i < len; ++i) p[i] = 1 + (seed * 7 + i * 13) % (kVocab - 1);
  return p;
}

struct Result {
  std::vector<int32_t> tokens;
  runtime::Finish finish;
  bool finished = false;
};

struct Harness {
  model::PageAllocator pages;
  FakeModel fake;
  std::unique_ptr<runtime::Scheduler> sched;
  std::map<uint64_t, std::unique_ptr<Result>> owned;
  Harness(int32_t n_pages, int32_t ps, runtime::SchedulerOptions o) : fake(n_pages, ps) {
    pages.init(n_pages, ps);
    o.vocab_size = kVocab;
    if (o.max_seq_len == 0) o.max_seq_len = 256;
    sched = std::make_unique<runtime::Scheduler>(o, &pages, std::ref(fake));
  }
  base::Status submit(std::vector<int32_t> prompt, int32_t max_tokens, uint64_t* id, float temperature = 0.f) {
    runtime::Request r;
    r.prompt = std::move(prompt);
    r.max_tokens = max_tokens;
    r.sampling.temperature = temperature;
    r.sampling.seed = 5;
    r.stop_ids = {kStop};
    auto res = std::make_unique<Result>();
    Result* raw = res.get();
    r.on_token = [raw](int32_t t, float) { raw->tokens.push_back(t); return true; };
    r.on_finish = [raw](const runtime::Finish& f) { raw->finish = f, raw->finished = true; };
    const base::Status s = sched->submit(std::move(r), id);
    if (s.ok()) owned[*id] = std::move(res);
    return s;
  }
  const Result& result(uint64_t id) { return *owned[id]; }
  void run_to_idle(int max_steps = 10000) {
    for (int i = 0; i < max_steps; ++i) {
      ASSERT_TRUE(sched->step().ok());
      if (sched->idle()) return;
    }
    FAIL() << "not idle after " << max_steps << " steps";
  }
};

runtime::SchedulerOptions opts(int32_t max_seqs, int32_t budget, int32_t max_waiting = 64) {
  runtime::SchedulerOptions o;
  o.max_seqs = max_seqs;
  o.token_budget = budget;
  o.max_waiting = max_waiting;
  return o;
}

TEST(Scheduler, ManyRequestsWithinBudgetAndSlotsAndPagesBackToZero) {
  Harness h(200, 4, opts(6, 24));
  std::vector<uint64_t> ids(20);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(h.submit(prompt_of(3 + i * 3, i), 5 + i % 7, &ids[i]).ok());
  h.run_to_idle();
  for (int i = 0; i < 20; ++i) {
    const Result& r = h.result(ids[i]);
    ASSERT_TRUE(r.finished) << i;
    EXPECT_EQ(r.finish.reason, "length");
    EXPECT_EQ(r.tokens, expected(prompt_of(3 + i * 3, i), 5 + i % 7)) << "request " << i;
    EXPECT_EQ(r.finish.completion_tokens, 5 + i % 7);
  }
  EXPECT_LE(h.fake.max_rows, 24);
  EXPECT_EQ(h.fake.max_seqs, 6);
  EXPECT_GT(h.fake.steps_with_chunk_and_decode, 0);  // chunked prefill beside running streams
  EXPECT_EQ(h.pages.used_pages(), 0);
  const runtime::SchedulerStats st = h.sched->stats();
  EXPECT_EQ(st.pages_used, 0);
  EXPECT_EQ(st.running + st.waiting, 0);
  EXPECT_EQ(st.finished, 20);
}

// A long prompt is prefilled in chunks while a running stream keeps decoding in every step.
TEST(Scheduler, LongPromptDoesNotStallARunningStream) {
  Harness h(200, 4, opts(4, 8));
  uint64_t a = 0, b = 0;
  ASSERT_TRUE(h.submit(prompt_of(4, 1), 30, &a).ok());
  ASSERT_TRUE(h.sched->step().ok());  // a's prompt
  ASSERT_TRUE(h.submit(prompt_of(100, 2), 3, &b).ok());
  for (int i = 0; i < 13; ++i) {
    const size_t before = h.result(a).tokens.size();
    ASSERT_TRUE(h.sched->step().ok());
    EXPECT_EQ(h.result(a).tokens.size(), before + 1) << "step " << i << ": the stream did not advance";
  }
  h.run_to_idle();
  EXPECT_EQ(h.result(b).tokens, expected(prompt_of(100, 2), 3));
  EXPECT_EQ(h.result(a).tokens, expected(prompt_of(4, 1), 30));
}

// 12 pages of 4 and three requests of up to 20 positions (5 pages each): the newest are preempted
// and recomputed, and everyone still gets exactly their tokens.
TEST(Scheduler, PreemptsTheNewestWhenPagesRunOut) {
  Harness h(12, 4, opts(3, 64));
  std::vector<uint64_t> ids(3);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(h.submit(prompt_of(6, 10 + i), 14, &ids[i]).ok());
  h.run_to_idle();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(h.result(ids[i]).tokens, expected(prompt_of(6, 10 + i), 14)) << i;
  EXPECT_GT(h.sched->stats().preemptions, 0);
  EXPECT_EQ(h.pages.used_pages(), 0);
}

TEST(Scheduler, BoundedQueueRefusesAndInvalidRequestsAreRefused) {
  Harness h(8, 4, opts(2, 16, 2));
  uint64_t id = 0;
  ASSERT_TRUE(h.submit(prompt_of(3, 1), 2, &id).ok());
  ASSERT_TRUE(h.submit(prompt_of(3, 2), 2, &id).ok());
  const base::Status busy = h.submit(prompt_of(3, 3), 2, &id);
  EXPECT_EQ(busy.code(), base::StatusCode::kUnavailable) << busy.message();
  EXPECT_EQ(h.sched->stats().refused, 1);
  EXPECT_EQ(h.submit({}, 2, &id).code(), base::StatusCode::kInvalidArgument);
  EXPECT_EQ(h.submit(prompt_of(256, 1), 2, &id).code(), base::StatusCode::kInvalidArgument);  // the context
  EXPECT_EQ(h.submit(prompt_of(30, 1), 10, &id).code(), base::StatusCode::kInvalidArgument);  // > 8 pages
  EXPECT_EQ(h.submit({kVocab}, 2, &id).code(), base::StatusCode::kInvalidArgument);
  h.run_to_idle();
}

TEST(Scheduler, CancellationFreesThePagesAtTheNextStep) {
  Harness h(100, 4, opts(4, 32));
  uint64_t a = 0, b = 0;
  ASSERT_TRUE(h.submit(prompt_of(20, 1), 50, &a).ok());
  ASSERT_TRUE(h.submit(prompt_of(20, 2), 50, &b).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(h.sched->step().ok());
  const int32_t held = h.pages.used_pages();
  h.sched->cancel(a);
  ASSERT_TRUE(h.sched->step().ok());
  EXPECT_TRUE(h.result(a).finished);
  EXPECT_EQ(h.result(a).finish.reason, "cancelled");
  EXPECT_LT(h.pages.used_pages(), held);
  EXPECT_FALSE(h.result(b).finished);
  h.run_to_idle();
  EXPECT_EQ(h.result(b).tokens, expected(prompt_of(20, 2), 50));
  EXPECT_EQ(h.pages.used_pages(), 0);
}

// The same 41-token prompt twice, one after the other: the second finds 40 tokens (10 full pages) in
// the prefix cache, and the tokens stay right; a prompt differing in its last page finds 36.
TEST(Scheduler, RepeatedPromptHitsThePrefixCache) {
  Harness h(100, 4, opts(4, 64));
  const std::vector<int32_t> p = prompt_of(41, 3);
  uint64_t a = 0, b = 0, c = 0;
  ASSERT_TRUE(h.submit(p, 4, &a).ok());
  h.run_to_idle();
  ASSERT_TRUE(h.submit(p, 4, &b).ok());
  h.run_to_idle();
  std::vector<int32_t> q = p;
  q[38] = (q[38] + 1) % kVocab;
  ASSERT_TRUE(h.submit(q, 4, &c).ok());
  h.run_to_idle();
  EXPECT_EQ(h.result(a).finish.cached_tokens, 0);
  EXPECT_EQ(h.result(b).finish.cached_tokens, 40);
  EXPECT_EQ(h.result(c).finish.cached_tokens, 36);
  EXPECT_EQ(h.result(b).tokens, expected(p, 4));
  EXPECT_EQ(h.result(c).tokens, expected(q, 4));
  EXPECT_EQ(h.sched->stats().prefix_hit_tokens, 76);
  EXPECT_EQ(h.pages.used_pages(), 0);
  EXPECT_GT(h.pages.cached_pages(), 0);
}

TEST(Scheduler, StopTokenEndsTheSequenceAndSamplingFollowsTheLogits) {
  Harness h(100, 4, opts(4, 64));
  h.fake.allow_stop = true;
  std::vector<uint64_t> ids(8);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(h.submit(prompt_of(5, 20 + i), 60, &ids[i], i % 2 ? 0.7f : 0.f).ok());
  h.run_to_idle();
  int stopped = 0;
  for (int i = 0; i < 8; ++i) {
    const Result& r = h.result(ids[i]);
    EXPECT_EQ(r.tokens, expected(prompt_of(5, 20 + i), 60, true)) << i;
    stopped += r.finish.reason == "stop";
  }
  EXPECT_GT(stopped, 0);
}

// serve() on its own thread: requests submitted from another thread finish; shutdown ends it.
TEST(Scheduler, ServeLoopRunsSubmittedRequests) {
  Harness h(100, 4, opts(4, 32));
  std::thread t([&] { h.sched->serve(); });
  uint64_t id = 0;
  ASSERT_TRUE(h.submit(prompt_of(7, 9), 6, &id).ok());
  for (int i = 0; i < 500 && !h.sched->idle(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  for (int i = 0; i < 500 && !h.result(id).finished; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  h.sched->shutdown();
  t.join();
  EXPECT_EQ(h.result(id).tokens, expected(prompt_of(7, 9), 6));
}

}  // namespace
