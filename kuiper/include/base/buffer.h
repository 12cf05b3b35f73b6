// Device memory: allocators that count what they hand out, and Buffer, the owner of one allocation.
//
// Every byte the engine owns comes from a DeviceAllocator, so a test can read the counters before and
// after generating and prove that nothing was allocated on the way (the KV cache and the workspace
// are taken once at start-up). A Buffer may also wrap memory it does not own: such a Buffer frees
// nothing. Read-only memory (the mmapped model file) is handed out only as a `const Buffer`, whose
// data() is a const pointer: writing to it does not compile.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "base/dtype.h"
#include "base/status.h"

namespace base {

class DeviceAllocator {
 public:
  explicit DeviceAllocator(DeviceType type) : type_(type) {}
  virtual ~DeviceAllocator() = default;
  DeviceAllocator(const DeviceAllocator&) = delete;
  DeviceAllocator& operator=(const DeviceAllocator&) = delete;

  DeviceType device_type() const { return type_; }
  // Allocates `bytes` (> 0) aligned to 256 bytes; returns OutOfMemory with the sizes on failure.
  virtual Status allocate(size_t bytes, void** ptr) = 0;
  virtual void release(void* ptr, size_t bytes) = 0;

  // Counters across the process lifetime of this allocator.
  int64_t allocations() const { return allocations_.load(); }
  int64_t bytes_in_use() const { return bytes_in_use_.load(); }

 protected:
  void count_alloc(size_t bytes) { ++allocations_; bytes_in_use_ += (int64_t)bytes; }
  void count_free(size_t bytes) { bytes_in_use_ -= (int64_t)bytes; }

 private:
  DeviceType type_;
  std::atomic<int64_t> allocations_{0};
  std::atomic<int64_t> bytes_in_use_{0};
};

// Host memory (aligned_alloc).
class CPUAllocator final : public DeviceAllocator {
 public:
  CPUAllocator() : DeviceAllocator(DeviceType::kCPU) {}
  Status allocate(size_t bytes, void** ptr) override;
  void release(void* ptr, size_t bytes) override;
  static CPUAllocator* get();  // the process-wide instance
};

// Device memory of one GPU (cudaMalloc with that device current). One instance per device id.
class CUDAAllocator final : public DeviceAllocator {
 public:
  explicit CUDAAllocator(int device_id) : DeviceAllocator(DeviceType::kCUDA), device_id_(device_id) {}
  Status allocate(size_t bytes, void** ptr) override;
  void release(void* ptr, size_t bytes) override;
  int device_id() const { return device_id_; }
  static CUDAAllocator* get(int device_id);  // one per device, created on first use

 private:
  int device_id_;
};

// One contiguous allocation (or a wrapped external region). Non-copyable; shared through shared_ptr
// by the tensors that view it.
class Buffer {
 public:
  // Allocates `bytes` from `alloc`.
  static Status create(DeviceAllocator* alloc, size_t bytes, std::shared_ptr<Buffer>* out);
  // Wraps writable memory owned elsewhere; `keepalive` holds that owner.
  static std::shared_ptr<Buffer> wrap(void* ptr, size_t bytes, DeviceType device, int device_id,
                                      std::shared_ptr<void> keepalive = nullptr);
  // Wraps read-only memory owned elsewhere (a read-only mapping of the model file): there is no
  // non-const access to it, so no writable pointer can be had.
  static std::shared_ptr<const Buffer> wrap_read_only(const void* ptr, size_t bytes, DeviceType device,
                                                      int device_id, std::shared_ptr<void> keepalive = nullptr);
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() { return writable_; }
  const void* data() const { return data_; }
  size_t size() const { return bytes_; }
  DeviceType device_type() const { return device_; }
  int device_id() const { return device_id_; }
  bool owns_memory() const { return alloc_ != nullptr; }

 private:
  Buffer() = default;
  const void* data_ = nullptr;
  void* writable_ = nullptr;  // data_ when writable; null for read-only memory
  size_t bytes_ = 0;
  DeviceType device_ = DeviceType::kCPU;
  int device_id_ = 0;
  DeviceAllocator* alloc_ = nullptr;  // null for wrapped memory
  std::shared_ptr<void> keepalive_;
};

}  // namespace base
