#include "model/page_allocator.h"

#include <glog/logging.h>

#include <algorithm>

namespace model {

void PageAllocator::init(int32_t n_pages, int32_t page_size) {
  CHECK(n_pages > 0 && page_size > 0) << "PageAllocator: " << n_pages << " pages of " << page_size;
  page_size_ = page_size;
  pages_.assign(n_pages, Page{});
  tokens_.assign((size_t)n_pages * page_size, 0);
  size_t n_buckets = 1;
  while (n_buckets < 2 * (size_t)n_pages) n_buckets *= 2;
  buckets_.assign(n_buckets, -1);
  free_.resize(n_pages);
  // Popped from the back: page 0 first, so a single sequence gets the identity table.
  for (int32_t i = 0; i < n_pages; ++i) free_[i] = n_pages - 1 - i;
  lru_head_ = lru_tail_ = -1;
  used_ = cached_ = 0;
}

bool PageAllocator::allocate(int32_t* page) {
  int32_t p = -1;
  if (!free_.empty()) {
    p = free_.back();
    free_.pop_back();
  } else if (lru_head_ >= 0) {  // evict the least recently used cached page
    p = lru_head_;
    lru_remove(p);
    unpublish(p);
    --cached_;
  } else {
    return false;
  }
  pages_[p].ref = 1;
  ++used_;
  *page = p;
  return true;
}

void PageAllocator::retain(int32_t page) {
  Page& pg = pages_[page];
  if (pg.ref == 0) {
    CHECK(pg.published) << "retain of free page " << page;
    lru_remove(page);
    --cached_;
    ++used_;
  }
  ++pg.ref;
}

void PageAllocator::release(int32_t page) {
  Page& pg = pages_[page];
  CHECK(pg.ref > 0) << "release of page " << page << " that nobody holds";
  if (--pg.ref > 0) return;
  --used_;
  if (pg.published) {
    lru_push_back(page);
    ++cached_;
  } else {
    free_.push_back(page);
  }
}

// splitmix64 over the key's words.
uint64_t PageAllocator::key_hash(int32_t parent, uint32_t parent_generation, const int32_t* tokens) const {
  auto mix = [](uint64_t h, uint64_t v) {
    uint64_t z = h + v + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  uint64_t h = mix((uint64_t)(uint32_t)parent, parent_generation);
  for (int32_t i = 0; i < page_size_; ++i) h = mix(h, (uint32_t)tokens[i]);
  return h;
}

bool PageAllocator::key_equals(int32_t page, int32_t parent, uint32_t parent_generation, const int32_t* tokens) const {
  const Page& pg = pages_[page];
  return pg.parent == parent && pg.parent_generation == parent_generation &&
         std::equal(tokens, tokens + page_size_, tokens_.begin() + (size_t)page * page_size_);
}

int32_t PageAllocator::lookup(int32_t parent, const int32_t* tokens) {
  const uint32_t gen = parent >= 0 ? pages_[parent].generation : 0;
  const uint64_t h = key_hash(parent, gen, tokens);
  for (int32_t p = buckets_[h & (buckets_.size() - 1)]; p >= 0; p = pages_[p].chain_next) {
    if (pages_[p].hash == h && key_equals(p, parent, gen, tokens)) {
      retain(p);
      return p;
    }
  }
  return -1;
}

bool PageAllocator::publish(int32_t page, int32_t parent, const int32_t* tokens) {
  Page& pg = pages_[page];
  CHECK(pg.ref > 0) << "publish of page " << page << " that nobody holds";
  if (pg.published) return false;
  const uint32_t gen = parent >= 0 ? pages_[parent].generation : 0;
  const uint64_t h = key_hash(parent, gen, tokens);
  int32_t& head = buckets_[h & (buckets_.size() - 1)];
  for (int32_t p = head; p >= 0; p = pages_[p].chain_next)
    if (pages_[p].hash == h && key_equals(p, parent, gen, tokens)) return false;
  std::copy(tokens, tokens + page_size_, tokens_.begin() + (size_t)page * page_size_);
  pg.published = true;
  pg.hash = h;
  pg.parent = parent;
  pg.parent_generation = gen;
  pg.chain_next = head;
  head = page;
  return true;
}

void PageAllocator::unpublish(int32_t page) {
  Page& pg = pages_[page];
  int32_t* link = &buckets_[pg.hash & (buckets_.size() - 1)];
  while (*link != page) link = &pages_[*link].chain_next;
  *link = pg.chain_next;
  pg.chain_next = -1;
  pg.published = false;
  ++pg.generation;  // pages published after this one under the old content no longer match
}

void PageAllocator::lru_push_back(int32_t page) {
  Page& pg = pages_[page];
  pg.lru_prev = lru_tail_;
  pg.lru_next = -1;
  if (lru_tail_ >= 0) pages_[lru_tail_].lru_next = page;
  else lru_head_ = page;
  lru_tail_ = page;
}

void PageAllocator::lru_remove(int32_t page) {
  Page& pg = pages_[page];
  if (pg.lru_prev >= 0) pages_[pg.lru_prev].lru_next = pg.lru_next;
  else lru_head_ = pg.lru_next;
  if (pg.lru_next >= 0) pages_[pg.lru_next].lru_prev = pg.lru_prev;
  else lru_tail_ = pg.lru_prev;
  pg.lru_prev = pg.lru_next = -1;
}

}  // namespace model
