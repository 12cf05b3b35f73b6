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
#include <string>

#include "base/dtype.h"
#include "base/status.h"

namespace base {

// Free and total bytes of a device's memory.
struct MemoryInfo {
  uint64_t free = 0;
  uint64_t total = 0;
};

class DeviceAllocator {
 public:
  explicit DeviceAllocator(DeviceType type) : type_(type) {}
  virtual ~DeviceAllocator() = default;
  DeviceAllocator(const DeviceAllocator&) = delete;
  DeviceAllocator& operator=(const DeviceAllocator&) = delete;

  DeviceType device_type() const { return type_; }
  virtual int device_id() const { return 0; }
  // "on GPU 0" or "in host memory", for messages.
  std::string where() const;

  // Allocates `bytes` (> 0) aligned to 256 bytes. On failure returns OutOfMemory saying how much was
  // asked for and what the device has; callers that know what the memory was for say so instead
  // (KV cache, weights), from memory_info().
  Status allocate(size_t bytes, void** ptr);
  void release(void* ptr, size_t bytes);

  // A budget: with a limit set, an allocation that would bring bytes_in_use() above it fails exactly
  // as if the device had run out, and memory_info() reports the budget. 0 (the default) is no limit.
  // Nothing in the programs sets one; tests use it to make "does not fit" happen without a GPU or
  // without exhausting the machine.
  void set_limit(uint64_t bytes) { limit_ = bytes; }
  uint64_t limit() const { return limit_; }

  // Free and total memory now: the device's (cudaMemGetInfo; MemAvailable / MemTotal of the host),
  // within the limit when one is set.
  MemoryInfo memory_info() const;

  // Counters across the process lifetime of this allocator.
  int64_t allocations() const { return allocations_.load(); }
  int64_t bytes_in_use() const { return bytes_in_use_.load(); }

 protected:
  virtual Status device_allocate(size_t bytes, void** ptr) = 0;
  virtual void device_release(void* ptr) = 0;
  // The device's own numbers, {0, 0} when they cannot be read.
  virtual MemoryInfo device_memory() const = 0;

 private:
  DeviceType type_;
  std::atomic<uint64_t> limit_{0};
  std::atomic<int64_t> allocations_{0};
  std::atomic<int64_t> bytes_in_use_{0};
};

// Host memory (aligned_alloc).
class CPUAllocator final : public DeviceAllocator {
 public:
  CPUAllocator() : DeviceAllocator(DeviceType::kCPU) {}
  static CPUAllocator* get();  // the process-wide instance

 protected:
  Status device_allocate(size_t bytes, void** ptr) override;
  void device_release(void* ptr) override;
  MemoryInfo device_memory() const override;
};

// Device memory of one GPU (cudaMalloc with that device current). One instance per device id.
class CUDAAllocator final : public DeviceAllocator {
 public:
  explicit CUDAAllocator(int device_id) : DeviceAllocator(DeviceType::kCUDA), device_id_(device_id) {}
  int device_id() const override { return device_id_; }
  static CUDAAllocator* get(int device_id);  // one per device, created on first use

 protected:
  Status device_allocate(size_t bytes, void** ptr) override;
  void device_release(void* ptr) override;
  MemoryInfo device_memory() const override;

 private:
  int device_id_;
};

// "16.00 GiB", or "3.39 MiB" below 1 GiB: sizes in out-of-memory messages.
std::string format_size(uint64_t bytes);
// "in host memory, which has 3.20 GiB free of 15.50 GiB" / "on GPU 1, which has ...": what `alloc`'s
// device has now, the second half of an out-of-memory message.
std::string memory_report(const DeviceAllocator& alloc);

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
