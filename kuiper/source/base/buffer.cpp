#include "base/buffer.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>

#include "base/cuda_utils.h"
#endif

namespace base {

namespace {
constexpr size_t kAlignment = 256;  // enough for 16-byte vector loads and cuBLAS
size_t round_up(size_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

// MemAvailable and MemTotal from /proc/meminfo (kB), {0, 0} if unreadable. Only on failure paths.
MemoryInfo host_meminfo() {
  MemoryInfo m;
  FILE* f = std::fopen("/proc/meminfo", "r");
  if (f == nullptr) return m;
  char line[256];
  unsigned long long kb = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "MemTotal: %llu kB", &kb) == 1) m.total = kb * 1024;
    if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) m.free = kb * 1024;
  }
  std::fclose(f);
  return m;
}
}  // namespace

std::string format_size(uint64_t bytes) {
  char s[32];
  if (bytes >= (1ull << 30)) {
    std::snprintf(s, sizeof(s), "%.2f GiB", (double)bytes / (1ull << 30));
  } else {
    std::snprintf(s, sizeof(s), "%.2f MiB", (double)bytes / (1ull << 20));
  }
  return s;
}

std::string DeviceAllocator::where() const {
  return device_type() == DeviceType::kCUDA ? "on GPU " + std::to_string(device_id()) : "in host memory";
}

std::string memory_report(const DeviceAllocator& alloc) {
  const MemoryInfo m = alloc.memory_info();
  if (m.total == 0) return alloc.where() + " (its free memory cannot be read)";
  return alloc.where() + ", which has " + format_size(m.free) + " free of " + format_size(m.total);
}

MemoryInfo DeviceAllocator::memory_info() const {
  MemoryInfo m = device_memory();
  const uint64_t limit = limit_.load();
  if (limit == 0) return m;
  const uint64_t used = (uint64_t)std::max<int64_t>(0, bytes_in_use());
  const uint64_t left = limit > used ? limit - used : 0;
  // Within the budget; where the device's numbers are unknown (no GPU), the budget alone.
  m.free = m.total == 0 ? left : std::min(m.free, left);
  m.total = m.total == 0 ? limit : std::min(m.total, limit);
  return m;
}

Status DeviceAllocator::allocate(size_t bytes, void** ptr) {
  if (bytes == 0) return InvalidArgument("zero-byte allocation");
  // Reserve first, so that ranks allocating at once cannot pass the limit together.
  const uint64_t limit = limit_.load();
  const int64_t in_use = bytes_in_use_.fetch_add((int64_t)bytes) + (int64_t)bytes;
  Status s = limit != 0 && (uint64_t)in_use > limit ? OutOfMemory("over the limit") : device_allocate(bytes, ptr);
  if (!s.ok()) {
    bytes_in_use_ -= (int64_t)bytes;
    if (s.code() != StatusCode::kOutOfMemory) return s;
    return OutOfMemory("cannot allocate " + format_size(bytes) + " " + memory_report(*this));
  }
  ++allocations_;
  return Status::Ok();
}

void DeviceAllocator::release(void* ptr, size_t bytes) {
  device_release(ptr);
  bytes_in_use_ -= (int64_t)bytes;
}

Status CPUAllocator::device_allocate(size_t bytes, void** ptr) {
  *ptr = std::aligned_alloc(kAlignment, round_up(bytes));
  return *ptr != nullptr ? Status::Ok() : OutOfMemory("aligned_alloc failed");
}

void CPUAllocator::device_release(void* ptr) { std::free(ptr); }

MemoryInfo CPUAllocator::device_memory() const { return host_meminfo(); }

CPUAllocator* CPUAllocator::get() {
  static CPUAllocator instance;
  return &instance;
}

#ifdef KUIPER_WITH_CUDA
Status CUDAAllocator::device_allocate(size_t bytes, void** ptr) {
  CUDA_CHECK(cudaSetDevice(device_id_));
  const cudaError_t err = cudaMalloc(ptr, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the error so that later calls work
    return OutOfMemory("cudaMalloc failed");
  }
  CUDA_CHECK(err);
  return Status::Ok();
}

void CUDAAllocator::device_release(void* ptr) {
  cudaSetDevice(device_id_);
  cudaFree(ptr);
}

MemoryInfo CUDAAllocator::device_memory() const {
  size_t free_b = 0, total_b = 0;
  if (cudaSetDevice(device_id_) != cudaSuccess || cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return {};
  }
  return {free_b, total_b};
}
#else
Status CUDAAllocator::device_allocate(size_t, void**) { return Unsupported("this build has no CUDA support"); }
void CUDAAllocator::device_release(void*) {}
MemoryInfo CUDAAllocator::device_memory() const { return {}; }
#endif

CUDAAllocator* CUDAAllocator::get(int device_id) {
  static std::mutex mu;
  static std::vector<std::unique_ptr<CUDAAllocator>> instances;
  std::lock_guard<std::mutex> lock(mu);
  if (device_id < 0) return nullptr;
  if ((size_t)device_id >= instances.size()) instances.resize(device_id + 1);
  if (!instances[device_id]) instances[device_id] = std::make_unique<CUDAAllocator>(device_id);
  return instances[device_id].get();
}

Status Buffer::create(DeviceAllocator* alloc, size_t bytes, std::shared_ptr<Buffer>* out) {
  std::shared_ptr<Buffer> b(new Buffer());
  KP_RETURN_IF_ERROR(alloc->allocate(bytes, &b->writable_));
  b->data_ = b->writable_;
  b->bytes_ = bytes;
  b->device_ = alloc->device_type();
  b->device_id_ = alloc->device_type() == DeviceType::kCUDA ? static_cast<CUDAAllocator*>(alloc)->device_id() : 0;
  b->alloc_ = alloc;
  *out = std::move(b);
  return Status::Ok();
}

std::shared_ptr<Buffer> Buffer::wrap(void* ptr, size_t bytes, DeviceType device, int device_id,
                                     std::shared_ptr<void> keepalive) {
  std::shared_ptr<Buffer> b(new Buffer());
  b->data_ = b->writable_ = ptr;
  b->bytes_ = bytes;
  b->device_ = device;
  b->device_id_ = device_id;
  b->keepalive_ = std::move(keepalive);
  return b;
}

std::shared_ptr<const Buffer> Buffer::wrap_read_only(const void* ptr, size_t bytes, DeviceType device, int device_id,
                                                     std::shared_ptr<void> keepalive) {
  std::shared_ptr<Buffer> b(new Buffer());
  b->data_ = ptr;  // writable_ stays null
  b->bytes_ = bytes;
  b->device_ = device;
  b->device_id_ = device_id;
  b->keepalive_ = std::move(keepalive);
  return b;
}

Buffer::~Buffer() {
  if (alloc_ != nullptr && writable_ != nullptr) alloc_->release(writable_, bytes_);
}

}  // namespace base
