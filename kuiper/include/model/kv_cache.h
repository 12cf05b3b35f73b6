// KVCacheManager: the key/value cache of every layer in ONE allocation made at start-up, cut into pages.
//
//   bytes = n_layers x 2 (K, V) x capacity x n_kv_heads x head_dim x sizeof(dtype)
//   capacity = n_pages x page_size token rows
//
// The block is laid out [layer][K|V][page][row in page][kv_head * head_dim]: one layer's K (or V) is
// [n_pages, page_size, kv_dim], handed out as the 2-D view [capacity, kv_dim] whose row
// page * page_size + r is row r of that page (a "slot"). A sequence's position t lives in slot
// page_table[t / page_size] * page_size + t % page_size; a single sequence whose table is 0, 1, 2, ...
// (the identity table) sees one contiguous [capacity, kv_dim] cache, as before paging.
//
// Which page belongs to whom is the PageAllocator's business (model/page_allocator.h: page tables,
// prefix caching, LRU reuse): pages are taken and returned while serving, and nothing is allocated.
// Under tensor parallelism each rank holds the cache of its own KV heads (n_kv_heads here is the local
// count) with the same pages; the scheduler uses rank 0's allocator for all of them.
#pragma once

#include <cstdint>

#include "base/buffer.h"
#include "base/status.h"
#include "model/page_allocator.h"
#include "tensor/tensor.h"

namespace model {

struct KVCacheShape {
  int32_t n_layers = 0;
  int32_t capacity = 0;    // token rows of one layer's K (or V): n_pages * page_size
  int32_t n_kv_heads = 0;  // on this rank
  int32_t head_dim = 0;
  base::DType dtype = base::DType::kFp32;
  int32_t page_size = 16;  // tokens per page; must divide capacity

  int32_t n_pages() const { return page_size > 0 ? capacity / page_size : 0; }

  // Bytes of the whole block, or 0 if the product overflows.
  uint64_t bytes() const;
};

class KVCacheManager {
 public:
  KVCacheManager() = default;
  KVCacheManager(const KVCacheManager&) = delete;
  KVCacheManager& operator=(const KVCacheManager&) = delete;

  // Takes the one block from `alloc`; the error says how much was asked for.
  base::Status init(const KVCacheShape& shape, base::DeviceAllocator* alloc);

  // Views into the block: [capacity, n_kv_heads * head_dim] (slot = page * page_size + row).
  tensor::Tensor key(int layer) const;
  tensor::Tensor value(int layer) const;

  const KVCacheShape& shape() const { return shape_; }
  uint64_t bytes() const { return shape_.bytes(); }
  int32_t page_size() const { return shape_.page_size; }
  int32_t n_pages() const { return shape_.n_pages(); }
  // Who holds which page (host-side; the model itself never looks at it).
  PageAllocator& pages() { return pages_; }
  const PageAllocator& pages() const { return pages_; }

 private:
  tensor::Tensor view(int layer, int kv) const;
  KVCacheShape shape_;
  std::shared_ptr<base::Buffer> block_;
  PageAllocator pages_;
};

}  // namespace model
