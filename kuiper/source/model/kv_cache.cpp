#include "model/kv_cache.h"

#include <glog/logging.h>

#include <limits>
#include <string>

namespace model {

uint64_t KVCacheShape::bytes() const {
  const uint64_t factors[] = {(uint64_t)n_layers, 2, (uint64_t)max_seq_len, (uint64_t)n_kv_heads,
                              (uint64_t)head_dim, base::dtype_size(dtype)};
  uint64_t b = 1;
  for (uint64_t f : factors) {
    if (f == 0 || b > std::numeric_limits<uint64_t>::max() / f) return 0;
    b *= f;
  }
  return b;
}

base::Status KVCacheManager::init(const KVCacheShape& shape, base::DeviceAllocator* alloc) {
  const uint64_t b = shape.bytes();
  if (b == 0) return base::InvalidArgument("KV cache size is zero or overflows");
  base::Status s = base::Buffer::create(alloc, b, &block_);
  if (!s.ok())
    return {s.code(), "KV cache of " + std::to_string(b >> 20) + " MiB (" + std::to_string(shape.n_layers) +
                          " layers x " + std::to_string(shape.max_seq_len) +
                          " positions) does not fit: " + s.message() +
                          "; try a smaller --max_seq_len or more --tp ranks"};
  shape_ = shape;
  return base::Status::Ok();
}

tensor::Tensor KVCacheManager::view(int layer, int kv) const {
  CHECK(block_ && layer >= 0 && layer < shape_.n_layers) << "KV cache layer " << layer << " out of range";
  const int64_t row = (int64_t)shape_.n_kv_heads * shape_.head_dim;
  const size_t per_matrix = (size_t)shape_.max_seq_len * row * base::dtype_size(shape_.dtype);
  return tensor::Tensor::from_buffer(block_, ((size_t)layer * 2 + kv) * per_matrix, shape_.dtype,
                                     {shape_.max_seq_len, row});
}

tensor::Tensor KVCacheManager::key(int layer) const { return view(layer, 0); }
tensor::Tensor KVCacheManager::value(int layer) const { return view(layer, 1); }

}  // namespace model
