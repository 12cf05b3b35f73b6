#include "base/cuda_utils.h"

#include <string>

namespace base {

Status cuda_error(cudaError_t err, const char* stmt, const char* file, int line) {
  int dev = -1;
  cudaGetDevice(&dev);
  return {StatusCode::kCudaError, std::string("CUDA error '") + cudaGetErrorString(err) + "' in " + stmt +
                                      " at " + file + ":" + std::to_string(line) + " (device " +
                                      std::to_string(dev) + ")"};
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

CudaStream::~CudaStream() {
  if (stream_ != nullptr) {
    cudaSetDevice(device_id_);
    cudaStreamDestroy(stream_);
  }
}

Status CudaStream::create(int device_id) {
  device_id_ = device_id;
  CUDA_CHECK(cudaSetDevice(device_id));
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  return Status::Ok();
}

CudaEvent::~CudaEvent() {
  if (event_ != nullptr) {
    cudaSetDevice(device_id_);
    cudaEventDestroy(event_);
  }
}

Status CudaEvent::create(int device_id, bool timing) {
  device_id_ = device_id;
  CUDA_CHECK(cudaSetDevice(device_id));
  CUDA_CHECK(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
  return Status::Ok();
}

}  // namespace base
