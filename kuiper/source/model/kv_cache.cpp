#include "model/kv_cache.h"

#include <glog/logging.h>

#include <limits>
#include <string>

namespace model {

uint64_t KVCacheShape::bytes() const {
  const uint64_t factors[] = {(uint64_t)n_layers, 2, (uint64_t)capacity, (uint64_t)n_kv_heads,
                              (uint64_t)head_dim, base::dtype_size(dtype)};
  uint64_t b = 1;
  for (uint64_t f : factors) {
    if (f == 0 || b > std::numeric_limits<uint64_t>::max() / f) return 0;
    b *= f;
  }
  return b;
}

namespace {
// The one line for a cache that does not fit: what it needs, what the device has, and what to change,
// with the context length that would fit in what is free. On GPUs each --tp rank holds the cache of
// its own KV heads on its own GPU, so more ranks help; CPU ranks share the host's memory.
std::string does_not_fit(const KVCacheShape& shape, uint64_t bytes, const base::DeviceAllocator& alloc) {
  const uint64_t per_position = bytes / (uint64_t)shape.capacity;
  const uint64_t fit = alloc.memory_info().free / per_position;
  std::string m = "the KV cache (" + std::to_string(shape.n_layers) + " layers x " +
                  std::to_string(shape.capacity) + " positions) needs " + base::format_size(bytes) + " " +
                  base::memory_report(alloc) + "; lower --max_seq_len";
  if (fit > 0) m += " (at most " + std::to_string(fit) + " positions fit)";
  if (alloc.device_type() == base::DeviceType::kCUDA) m += " or use more --tp ranks";
  return m;
}
}  // namespace

base::Status KVCacheManager::init(const KVCacheShape& shape, base::DeviceAllocator* alloc) {
  const uint64_t b = shape.bytes();
  if (b == 0) return base::InvalidArgument("KV cache size is zero or overflows");
  if (shape.page_size <= 0 || shape.capacity % shape.page_size != 0)
    return base::InvalidArgument("KV cache: page size " + std::to_string(shape.page_size) + " does not divide " +
                                 std::to_string(shape.capacity) + " positions");
  base::Status s = base::Buffer::create(alloc, b, &block_);
  if (s.code() == base::StatusCode::kOutOfMemory) return base::OutOfMemory(does_not_fit(shape, b, *alloc));
  if (!s.ok()) return s;
  shape_ = shape;
  pages_.init(shape.n_pages(), shape.page_size);
  return base::Status::Ok();
}

tensor::Tensor KVCacheManager::view(int layer, int kv) const {
  CHECK(block_ && layer >= 0 && layer < shape_.n_layers) << "KV cache layer " << layer << " out of range";
  const int64_t row = (int64_t)shape_.n_kv_heads * shape_.head_dim;
  const size_t per_matrix = (size_t)shape_.capacity * row * base::dtype_size(shape_.dtype);
  return tensor::Tensor::from_buffer(block_, ((size_t)layer * 2 + kv) * per_matrix, shape_.dtype,
                                     {shape_.capacity, row});
}

tensor::Tensor KVCacheManager::key(int layer) const { return view(layer, 0); }
tensor::Tensor KVCacheManager::value(int layer) const { return view(layer, 1); }

}  // namespace model
