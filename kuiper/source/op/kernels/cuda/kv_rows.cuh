// Where an attention kernel finds a sequence's K and V rows, and how long the sequence is: the one
// place every attention kernel reads the cache layout from, so a page table plugs in everywhere.
//
// Two cache layouts, one per layer for K and one for V:
//  - contiguous: [max_len, kv_dim]; row t of the (only) sequence is row t;
//  - paged: [n_pages, page_size, kv_dim]; token t of sequence b is row t % page_size of page
//    table[b * table_stride + t / page_size] (the contiguous cache is the identity table).
// Page ids are clamped to [0, n_pages), so a corrupt table reads the wrong rows but never outside the
// cache. The table is device memory the host may rewrite between launches (it is read through the
// read-only cache, which is coherent across kernel launches).
//
// Query positions: the first query of sequence b is at position start[b] + start_offset (start is the
// engine's device `pos` with offset 0, or a batch's sequence lengths with offset -1), clamped so that
// its n queries fit in max_len rows; query i of the sequence sees keys [0, start + i].
#pragma once

#include <cstdint>

namespace kernel::cuda {

struct KvRows {
  const int32_t* table;  // int32 [batch, table_stride] page ids (device), or nullptr: contiguous
  int64_t table_stride;  // page ids per sequence
  int page_size;         // rows per page (1 when contiguous)
  int n_pages;           // pages in the cache

  // Row of the cache (in rows of kv_dim elements) that holds token t of sequence b.
  __device__ __forceinline__ int64_t row(int b, int t) const {
    if (table == nullptr) return t;
    int p = __ldg(table + (int64_t)b * table_stride + t / page_size);
    p = p < 0 ? 0 : (p >= n_pages ? n_pages - 1 : p);
    return (int64_t)p * page_size + t % page_size;
  }
};

struct SeqStarts {
  const int32_t* start;  // int32 [batch] (device)
  int start_offset;      // added to start[b]
  int max_len;           // rows one sequence may have (the contiguous cache's rows, or pages * page_size)

  // Position of the first of the sequence's n queries, in [0, max_len - n].
  __device__ __forceinline__ int first(int b, int n) const {
    const int p = start[b] + start_offset;
    return p < 0 ? 0 : (p > max_len - n ? max_len - n : p);
  }
};

}  // namespace kernel::cuda
