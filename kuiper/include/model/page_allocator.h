// PageAllocator: the bookkeeping of the paged KV cache (model/kv_cache.h), on the host only.
//
// The cache is n_pages pages of page_size token rows. A sequence holds a page table: its position t
// lives in page table[t / page_size], row t % page_size. A page is in one of three states:
//   in use  - ref > 0: held by one sequence, or by several when it is a shared prefix page;
//   cached  - ref == 0, but it still holds the K/V of a known full page of tokens (prefix cache);
//   free    - ref == 0 and its content means nothing.
// allocate() takes a free page first, then the least recently used cached page (evicting it).
//
// Prefix caching. A full page is published under the key (the page before it in its sequence, that
// page's generation, its page_size tokens); a page's K/V depends on every token before it, and the
// key names all of them through the chain of pages. lookup() finds a published page by key and takes
// a reference to it, so a repeated system prompt is prefilled once. The stored key is compared on
// every lookup, so a hash collision can never hand out the wrong page. When a cached page is evicted
// its generation goes up, which makes every page published after it under the old generation
// unreachable: they age out of the LRU like any other.
//
// Nothing allocates after init(): the hash table is buckets plus intrusive chains, the LRU an
// intrusive list, the free pages a reserved stack.
#pragma once

#include <cstdint>
#include <vector>

namespace model {

class PageAllocator {
 public:
  // n_pages pages of page_size tokens, all free.
  void init(int32_t n_pages, int32_t page_size);

  int32_t n_pages() const { return (int32_t)pages_.size(); }
  int32_t page_size() const { return page_size_; }

  // Takes a page (ref 1) into *page; false when every page is in use.
  bool allocate(int32_t* page);
  // One more holder of an in-use page.
  void retain(int32_t page);
  // One holder fewer; at zero a published page becomes cached (most recently used), else free.
  void release(int32_t page);

  // The published page that follows `parent` (-1: the first page of a sequence) and holds `tokens`
  // (page_size ids); takes a reference to it. -1 when there is none.
  int32_t lookup(int32_t parent, const int32_t* tokens);
  // Publishes the full, in-use `page` (following `parent`, holding `tokens`) for lookup(). False when
  // it is already published or an identical page is (then this one stays private to its holders).
  bool publish(int32_t page, int32_t parent, const int32_t* tokens);

  int32_t used_pages() const { return used_; }                          // ref > 0
  int32_t cached_pages() const { return cached_; }                      // ref == 0, published
  int32_t free_pages() const { return n_pages() - used_; }              // free or cached: allocatable
  int32_t ref(int32_t page) const { return pages_[page].ref; }
  bool published(int32_t page) const { return pages_[page].published; }

 private:
  struct Page {
    int32_t ref = 0;
    uint32_t generation = 0;  // bumped when the page's content is forgotten
    bool published = false;
    uint64_t hash = 0;
    int32_t parent = -1;      // key: the page before, its generation, and tokens_ of this page
    uint32_t parent_generation = 0;
    int32_t chain_next = -1;  // next page in the same hash bucket
    int32_t lru_prev = -1, lru_next = -1;
  };
  uint64_t key_hash(int32_t parent, uint32_t parent_generation, const int32_t* tokens) const;
  bool key_equals(int32_t page, int32_t parent, uint32_t parent_generation, const int32_t* tokens) const;
  void unpublish(int32_t page);
  void lru_push_back(int32_t page);
  void lru_remove(int32_t page);

  int32_t page_size_ = 0;
  std::vector<Page> pages_;
  std::vector<int32_t> tokens_;   // [n_pages, page_size]: the tokens of each published page
  std::vector<int32_t> buckets_;  // first page of each hash bucket (-1: empty); size a power of 2
  std::vector<int32_t> free_;     // stack of free pages
  int32_t lru_head_ = -1, lru_tail_ = -1;  // cached pages, least recently used first
  int32_t used_ = 0, cached_ = 0;
};

}  // namespace model
