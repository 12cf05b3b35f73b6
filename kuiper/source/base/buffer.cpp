#include "base/buffer.h"

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
std::string mib(size_t bytes) { return std::to_string(bytes / (1024 * 1024)) + " MiB"; }
}  // namespace

Status CPUAllocator::allocate(size_t bytes, void** ptr) {
  if (bytes == 0) return InvalidArgument("zero-byte allocation");
  *ptr = std::aligned_alloc(kAlignment, round_up(bytes));
  if (*ptr == nullptr) return OutOfMemory("host allocation of " + mib(bytes) + " failed");
  count_alloc(bytes);
  return Status::Ok();
}

void CPUAllocator::release(void* ptr, size_t bytes) {
  std::free(ptr);
  count_free(bytes);
}

CPUAllocator* CPUAllocator::get() {
  static CPUAllocator instance;
  return &instance;
}

#ifdef KUIPER_WITH_CUDA
Status CUDAAllocator::allocate(size_t bytes, void** ptr) {
  if (bytes == 0) return InvalidArgument("zero-byte allocation");
  CUDA_CHECK(cudaSetDevice(device_id_));
  cudaError_t err = cudaMalloc(ptr, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls work
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return OutOfMemory("GPU " + std::to_string(device_id_) + ": cannot allocate " + mib(bytes) + " (" +
                       mib(free_b) + " free of " + mib(total_b) + ")");
  }
  count_alloc(bytes);
  return Status::Ok();
}

void CUDAAllocator::release(void* ptr, size_t bytes) {
  cudaSetDevice(device_id_);
  cudaFree(ptr);
  count_free(bytes);
}
#else
Status CUDAAllocator::allocate(size_t, void**) { return Unsupported("this build has no CUDA support"); }
void CUDAAllocator::release(void*, size_t) {}
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
