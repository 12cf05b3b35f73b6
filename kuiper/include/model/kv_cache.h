// KVCacheManager: the key/value cache of every layer in ONE allocation made at start-up.
//
//   bytes = n_layers x 2 (K, V) x max_seq_len x n_kv_heads x head_dim x sizeof(dtype)
//
// The block is laid out [layer][K|V][position][kv_head * head_dim], so one layer's K (or V) is a
// contiguous [max_seq_len, kv_dim] matrix and appending a token writes one row. The model asks for
// per-layer tensors, which are views of the block: nothing is allocated while generating. Under
// tensor parallelism each rank holds the cache of its own KV heads (n_kv_heads here is the local count).
#pragma once

#include <cstdint>

#include "base/buffer.h"
#include "base/status.h"
#include "tensor/tensor.h"

namespace model {

struct KVCacheShape {
  int32_t n_layers = 0;
  int32_t max_seq_len = 0;
  int32_t n_kv_heads = 0;  // on this rank
  int32_t head_dim = 0;
  base::DType dtype = base::DType::kFp32;

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

  // Views into the block: [max_seq_len, n_kv_heads * head_dim].
  tensor::Tensor key(int layer) const;
  tensor::Tensor value(int layer) const;

  const KVCacheShape& shape() const { return shape_; }
  uint64_t bytes() const { return shape_.bytes(); }

 private:
  tensor::Tensor view(int layer, int kv) const;
  KVCacheShape shape_;
  std::shared_ptr<base::Buffer> block_;
};

}  // namespace model
