// The paged KV cache without a model: the page accounting (PageAllocator: states, sharing, prefix
// lookups, LRU eviction, generations), the batch plan (StepPlan: row order, slots, tables, checks) and
// the paged CPU kernels, which must give bitwise what the contiguous kernels give on the same data
// gathered into a contiguous cache (a sequence's result may not depend on where its pages are).
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "base/buffer.h"
#include "heap_counter.h"
#include "model/batch.h"
#include "model/kv_cache.h"
#include "model/page_allocator.h"
#include "op/kernels.h"
#include "test_util.h"

using base::DType;
using model::PageAllocator;
using tensor::Tensor;

namespace {

std::vector<int32_t> page_tokens(int32_t base, int32_t n = 4) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), base);
  return t;
}

TEST(PageAllocator, TakesEveryPageOnceThenRefuses) {
  PageAllocator a;
  a.init(4, 16);
  std::vector<int32_t> got;
  int32_t p = -1;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(a.allocate(&p));
    got.push_back(p);
  }
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 2, 3}));  // in order: one sequence gets the identity table
  EXPECT_FALSE(a.allocate(&p));
  EXPECT_EQ(a.used_pages(), 4);
  EXPECT_EQ(a.free_pages(), 0);
  a.release(2);
  EXPECT_EQ(a.used_pages(), 3);
  EXPECT_EQ(a.cached_pages(), 0);  // never published: plainly free
  ASSERT_TRUE(a.allocate(&p));
  EXPECT_EQ(p, 2);
}

TEST(PageAllocator, SharedPageIsFreedByItsLastHolder) {
  PageAllocator a;
  a.init(2, 4);
  int32_t p = -1;
  ASSERT_TRUE(a.allocate(&p));
  a.retain(p);
  EXPECT_EQ(a.ref(p), 2);
  a.release(p);
  EXPECT_EQ(a.used_pages(), 1);
  a.release(p);
  EXPECT_EQ(a.used_pages(), 0);
  EXPECT_EQ(a.free_pages(), 2);
}

// A chain of two published pages is found again page by page, and only behind the right parent.
TEST(PageAllocator, PrefixLookupFollowsTheChain) {
  PageAllocator a;
  a.init(8, 4);
  const auto t0 = page_tokens(100), t1 = page_tokens(200);
  int32_t p0 = -1, p1 = -1;
  ASSERT_TRUE(a.allocate(&p0));
  ASSERT_TRUE(a.allocate(&p1));
  EXPECT_TRUE(a.publish(p0, -1, t0.data()));
  EXPECT_TRUE(a.publish(p1, p0, t1.data()));
  EXPECT_FALSE(a.publish(p1, p0, t1.data()));  // already published
  // While the first sequence still holds them, a second one shares them.
  EXPECT_EQ(a.lookup(-1, t0.data()), p0);
  EXPECT_EQ(a.lookup(p0, t1.data()), p1);
  EXPECT_EQ(a.ref(p0), 2);
  EXPECT_EQ(a.lookup(-1, t1.data()), -1);   // t1 as a first page: a different prefix
  EXPECT_EQ(a.lookup(p1, t1.data()), -1);   // behind the wrong parent
  const auto other = page_tokens(101);
  EXPECT_EQ(a.lookup(-1, other.data()), -1);  // one token differs
  // Both sequences finish: the pages stay, cached, and a third sequence finds them.
  for (int i = 0; i < 2; ++i) a.release(p0), a.release(p1);
  EXPECT_EQ(a.used_pages(), 0);
  EXPECT_EQ(a.cached_pages(), 2);
  EXPECT_EQ(a.free_pages(), 8);
  EXPECT_EQ(a.lookup(-1, t0.data()), p0);
  EXPECT_EQ(a.cached_pages(), 1);
  EXPECT_EQ(a.used_pages(), 1);
}

// A second page with the same key is not published: the first stays the one found.
TEST(PageAllocator, DuplicateContentStaysPrivate) {
  PageAllocator a;
  a.init(4, 4);
  const auto t = page_tokens(7);
  int32_t p = -1, q = -1;
  ASSERT_TRUE(a.allocate(&p));
  ASSERT_TRUE(a.allocate(&q));
  EXPECT_TRUE(a.publish(p, -1, t.data()));
  EXPECT_FALSE(a.publish(q, -1, t.data()));
  EXPECT_FALSE(a.published(q));
  a.release(q);
  EXPECT_EQ(a.cached_pages(), 0);
  EXPECT_EQ(a.lookup(-1, t.data()), p);
}

// Free pages go first; then cached pages in least-recently-used order, and an evicted page's
// content is forgotten, with its descendants.
TEST(PageAllocator, EvictsLeastRecentlyUsedCachedPageFirst) {
  PageAllocator a;
  a.init(3, 4);
  const auto t0 = page_tokens(0), t1 = page_tokens(10), t2 = page_tokens(20);
  int32_t p[3];
  for (int32_t& x : p) ASSERT_TRUE(a.allocate(&x));
  ASSERT_TRUE(a.publish(p[0], -1, t0.data()));
  ASSERT_TRUE(a.publish(p[1], p[0], t1.data()));
  ASSERT_TRUE(a.publish(p[2], -1, t2.data()));
  a.release(p[2]);  // least recently used
  a.release(p[0]);
  a.release(p[1]);  // most recently used
  EXPECT_EQ(a.cached_pages(), 3);
  // A hit moves a page out of the LRU; its release puts it back as the most recent.
  EXPECT_EQ(a.lookup(-1, t2.data()), p[2]);
  a.release(p[2]);
  int32_t got = -1;
  ASSERT_TRUE(a.allocate(&got));
  EXPECT_EQ(got, p[0]);  // now the oldest
  EXPECT_EQ(a.lookup(-1, t0.data()), -1);
  // p[1] is still cached, but its parent's content is gone: even the same tokens published again in
  // the same page do not reach it (the parent's generation moved on).
  ASSERT_TRUE(a.publish(got, -1, t0.data()));
  EXPECT_EQ(a.lookup(got, t1.data()), -1);
  EXPECT_EQ(a.lookup(-1, t2.data()), p[2]);
}

TEST(PageAllocator, NothingAllocatesAfterInit) {
  ASSERT_TRUE(testutil::heap_counter_works());
  PageAllocator a;
  a.init(64, 16);
  std::vector<int32_t> toks(16 * 64);
  std::iota(toks.begin(), toks.end(), 0);
  std::vector<int32_t> held(64);
  testutil::HeapCounter heap;
  for (int round = 0; round < 3; ++round) {
    int32_t parent = -1;
    for (int i = 0; i < 64; ++i) {
      const int32_t* t = toks.data() + 16 * (i % 8 + round);
      int32_t p = a.lookup(parent, t);
      if (p < 0) {
        ASSERT_TRUE(a.allocate(&p));
        a.publish(p, parent, t);
      }
      held[i] = parent = p;
    }
    for (int i = 0; i < 64; ++i) a.release(held[i]);
  }
  EXPECT_EQ(heap.count(), 0);
  EXPECT_EQ(a.used_pages(), 0);
}

// ---------------------------------------------------------------------------------------------------
model::StepLimits limits() {
  model::StepLimits l;
  l.max_tokens = 32;
  l.max_seqs = 4;
  l.max_pages = 4;
  l.page_size = 4;
  l.n_pages = 10;
  l.max_seq_len = 16;
  l.vocab_size = 100;
  return l;
}

TEST(StepPlan, DecodeRowsFirstThenChunks) {
  const model::StepLimits l = limits();
  std::vector<int32_t> block(model::StepPlan::ints(l));
  model::StepPlan plan;
  plan.init(l, block.data());
  const std::vector<int32_t> prompt = {5, 6, 7, 8, 9}, pages_a = {3, 7}, pages_b = {2}, pages_c = {9, 1};
  const int32_t tok_b = 42, tok_c = 43;
  model::BatchSeq seqs[3];
  seqs[0] = {prompt.data(), 5, 2, pages_a.data(), 2, true, false};  // a chunk at positions 2..6
  seqs[1] = {&tok_b, 1, 3, pages_b.data(), 1, true, false};         // decode at position 3
  seqs[2] = {&tok_c, 1, 4, pages_c.data(), 2, false, false};        // decode, no logits wanted
  ASSERT_TRUE(plan.build(seqs, 3).ok());
  EXPECT_EQ(plan.n_rows, 7);
  EXPECT_EQ(plan.n_decode, 2);
  EXPECT_EQ(plan.n_chunks, 1);
  EXPECT_EQ(std::vector<int32_t>(plan.tokens, plan.tokens + 7), (std::vector<int32_t>{42, 43, 5, 6, 7, 8, 9}));
  EXPECT_EQ(std::vector<int32_t>(plan.positions, plan.positions + 7), (std::vector<int32_t>{3, 4, 2, 3, 4, 5, 6}));
  // slot = table[p / 4] * 4 + p % 4
  EXPECT_EQ(std::vector<int32_t>(plan.slots, plan.slots + 7),
            (std::vector<int32_t>{2 * 4 + 3, 1 * 4 + 0, 3 * 4 + 2, 3 * 4 + 3, 7 * 4 + 0, 7 * 4 + 1, 7 * 4 + 2}));
  EXPECT_EQ(plan.seq_lens[0], 4);
  EXPECT_EQ(plan.seq_lens[1], 5);
  EXPECT_EQ(plan.tables[0 * 4 + 0], 2);  // decode row 0: sequence 1's table
  EXPECT_EQ(plan.tables[2 * 4 + 1], 7);  // chunk 0: table row n_decode + 0
  EXPECT_EQ(plan.chunk_start[0], 2);
  EXPECT_EQ(plan.chunk_len[0], 5);
  EXPECT_EQ(plan.chunk_pos[0], 2);
  // Classifier rows in the order of the sequences asking: seq 0's last row (6), then seq 1's (0).
  EXPECT_EQ(plan.n_logits, 2);
  EXPECT_EQ(plan.logit_rows[0], 6);
  EXPECT_EQ(plan.logit_rows[1], 0);
  EXPECT_EQ(plan.out_row[0], 0);
  EXPECT_EQ(plan.out_row[1], 1);
  EXPECT_EQ(plan.out_row[2], -1);
  EXPECT_FALSE(plan.contiguous);
}

TEST(StepPlan, RefusesWhatDoesNotFit) {
  const model::StepLimits l = limits();
  std::vector<int32_t> block(model::StepPlan::ints(l));
  model::StepPlan plan;
  plan.init(l, block.data());
  const std::vector<int32_t> toks(20, 1), pages = {0, 1, 2, 3}, bad = {0, 10};
  auto msg = [&](model::BatchSeq s) { return plan.build(&s, 1).message(); };
  EXPECT_NE(msg({toks.data(), 5, 12, pages.data(), 4}).find("context full"), std::string::npos);
  EXPECT_NE(msg({toks.data(), 5, 0, pages.data(), 1}).find("1 pages for 5 positions"), std::string::npos);
  EXPECT_NE(msg({toks.data(), 5, 0, bad.data(), 2}).find("page 10 outside the cache"), std::string::npos);
  const std::vector<int32_t> big = {100};
  EXPECT_NE(msg({big.data(), 1, 0, pages.data(), 1}).find("outside the vocabulary"), std::string::npos);
  model::BatchSeq five[5];
  for (auto& s : five) s = {toks.data(), 1, 0, pages.data(), 1};
  EXPECT_NE(plan.build(five, 5).message().find("5 sequences (at most 4)"), std::string::npos);
  EXPECT_TRUE(msg({toks.data(), 5, 0, pages.data(), 2}).empty());
  EXPECT_TRUE(plan.contiguous);  // pages 0, 1: the identity table
}

// ---------------------------------------------------------------------------------------------------
Tensor make(DType dtype, std::vector<int64_t> shape) {
  Tensor t;
  EXPECT_TRUE(Tensor::create(dtype, std::move(shape), base::CPUAllocator::get(), &t).ok());
  return t;
}

Tensor ints(const std::vector<int32_t>& v, std::vector<int64_t> shape = {}) {
  Tensor t = make(DType::kInt32, shape.empty() ? std::vector<int64_t>{(int64_t)v.size()} : shape);
  std::copy(v.begin(), v.end(), t.ptr<int32_t>());
  return t;
}

std::vector<float> floats(const Tensor& t) { return std::vector<float>(t.ptr<float>(), t.ptr<float>() + t.numel()); }

// A paged cache of 12 pages of 4 rows holding two sequences on shuffled pages, and the same
// sequences gathered into contiguous caches: 6 query heads over 2 KV heads of 8.
struct PagedFixture {
  static constexpr int kPage = 4, kPages = 12, kHeads = 6, kKv = 2, kHd = 8;
  static constexpr int kKvDim = kKv * kHd;
  Tensor kc = testutil::random_cpu({kPages * kPage, kKvDim}, 1), vc = testutil::random_cpu({kPages * kPage, kKvDim}, 2);
  std::vector<int32_t> table_a = {7, 2, 11, 0}, table_b = {5, 9, 3, 1};
  // Sequence `table`'s first `len` positions as a contiguous [16, kv] cache.
  Tensor contiguous(const Tensor& cache, const std::vector<int32_t>& table) const {
    Tensor c = make(DType::kFp32, {16, kKvDim});
    for (int t = 0; t < 16; ++t)
      std::copy_n(cache.ptr<float>() + ((int64_t)table[t / kPage] * kPage + t % kPage) * kKvDim, kKvDim,
                  c.ptr<float>() + (int64_t)t * kKvDim);
    return c;
  }
  Tensor scratch() const { return make(DType::kFp32, {kernel::attention_scratch_floats(16, kHeads, kHd, 16, base::DeviceType::kCPU)}); }
};

TEST(PagedAttention, DecodeRowsMatchTheContiguousKernelBitwise) {
  PagedFixture f;
  const std::vector<int32_t> lens = {13, 6};
  Tensor q = testutil::random_cpu({2, PagedFixture::kHeads * PagedFixture::kHd}, 3);
  Tensor out = make(DType::kFp32, {2, 48});
  std::vector<int32_t> tables = f.table_a;
  tables.insert(tables.end(), f.table_b.begin(), f.table_b.end());
  Tensor tab = ints(tables, {2, 4}), sl = ints(lens), scratch = f.scratch();
  ASSERT_TRUE(kernel::paged_decode_attention(q, f.kc, f.vc, tab, sl, 4, 6, 2, 8, scratch, out, nullptr).ok());
  for (int b = 0; b < 2; ++b) {
    const auto& table = b == 0 ? f.table_a : f.table_b;
    Tensor kc = f.contiguous(f.kc, table), vc = f.contiguous(f.vc, table);
    Tensor qb = q.slice_rows(b, b + 1), ref = make(DType::kFp32, {1, 48}), pos = ints({lens[b] - 1});
    ASSERT_TRUE(kernel::attention(qb, kc, vc, pos, 6, 2, 8, scratch, ref, nullptr).ok());
    EXPECT_EQ(floats(out.slice_rows(b, b + 1)), floats(ref)) << "row " << b;
  }
}

TEST(PagedAttention, PrefillChunkMatchesTheContiguousKernelBitwise) {
  PagedFixture f;
  Tensor q = testutil::random_cpu({5, 48}, 4), out = make(DType::kFp32, {5, 48}), ref = make(DType::kFp32, {5, 48});
  Tensor table = ints(f.table_b), pos = ints({7}), scratch = f.scratch();
  ASSERT_TRUE(kernel::paged_prefill_attention(q, f.kc, f.vc, table, pos, 4, 6, 2, 8, scratch, out, nullptr).ok());
  Tensor kc = f.contiguous(f.kc, f.table_b), vc = f.contiguous(f.vc, f.table_b);
  ASSERT_TRUE(kernel::attention(q, kc, vc, pos, 6, 2, 8, scratch, ref, nullptr).ok());
  EXPECT_EQ(floats(out), floats(ref));
}

TEST(PagedAttention, PaddingRowIsZeroAndBadPagesAreRefused) {
  PagedFixture f;
  Tensor q = testutil::random_cpu({1, 48}, 5), out = testutil::random_cpu({1, 48}, 6);
  Tensor tab = ints(f.table_a, {1, 4}), zero = ints({0}), scratch = f.scratch();
  ASSERT_TRUE(kernel::paged_decode_attention(q, f.kc, f.vc, tab, zero, 4, 6, 2, 8, scratch, out, nullptr).ok());
  EXPECT_EQ(floats(out), std::vector<float>(48, 0.f));
  Tensor bad = ints({7, 12, 0, 0}, {1, 4}), len = ints({6});
  const base::Status s = kernel::paged_decode_attention(q, f.kc, f.vc, bad, len, 4, 6, 2, 8, scratch, out, nullptr);
  EXPECT_NE(s.message().find("page 12 outside the cache"), std::string::npos) << s.message();
  Tensor too_long = ints({17});
  EXPECT_FALSE(kernel::paged_decode_attention(q, f.kc, f.vc, tab, too_long, 4, 6, 2, 8, scratch, out, nullptr).ok());
}

TEST(PagedAppend, WritesEachRowToItsSlotAndSkipsNegativeOnes) {
  Tensor kc = make(DType::kFp32, {8, 3}), vc = make(DType::kFp32, {8, 3});
  std::fill_n(kc.ptr<float>(), 24, -1.f);
  std::fill_n(vc.ptr<float>(), 24, -1.f);
  Tensor k = testutil::random_cpu({3, 3}, 7), v = testutil::random_cpu({3, 3}, 8), slots = ints({5, -1, 2});
  ASSERT_TRUE(kernel::kv_append_paged(k, v, kc, vc, slots, nullptr).ok());
  for (int d = 0; d < 3; ++d) {
    EXPECT_EQ(kc.ptr<float>()[5 * 3 + d], k.ptr<float>()[d]);
    EXPECT_EQ(vc.ptr<float>()[2 * 3 + d], v.ptr<float>()[2 * 3 + d]);
  }
  int untouched = 0;
  for (int i = 0; i < 24; ++i) untouched += kc.ptr<float>()[i] == -1.f;
  EXPECT_EQ(untouched, 18);
  Tensor beyond = ints({8, 0, 0});
  EXPECT_FALSE(kernel::kv_append_paged(k, v, kc, vc, beyond, nullptr).ok());
}

TEST(RopeAt, EachRowAtItsPositionEqualsRopeAtThatStart) {
  std::vector<float> table(16 * 4 * 2);
  for (size_t i = 0; i < table.size(); ++i) table[i] = std::cos(0.37f * (float)i);
  Tensor cs = make(DType::kFp32, {16, 4, 2});
  std::copy(table.begin(), table.end(), cs.ptr<float>());
  Tensor q = testutil::random_cpu({3, 16}, 9), k = testutil::random_cpu({3, 8}, 10);
  Tensor q2 = testutil::random_cpu({3, 16}, 9), k2 = testutil::random_cpu({3, 8}, 10);
  const std::vector<int32_t> positions = {11, 0, 4};
  Tensor p = ints(positions);
  ASSERT_TRUE(kernel::rope_at(q, k, p, cs, 8, nullptr).ok());
  for (int i = 0; i < 3; ++i) {
    Tensor qi = q2.slice_rows(i, i + 1), ki = k2.slice_rows(i, i + 1), start = ints({positions[i]});
    ASSERT_TRUE(kernel::rope(qi, ki, start, cs, 8, nullptr).ok());
  }
  EXPECT_EQ(floats(q), floats(q2));
  EXPECT_EQ(floats(k), floats(k2));
  Tensor beyond = ints({16, 0, 0});
  EXPECT_FALSE(kernel::rope_at(q, k, beyond, cs, 8, nullptr).ok());
}

}  // namespace
