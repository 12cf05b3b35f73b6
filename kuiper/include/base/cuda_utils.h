// CUDA error checking and RAII owners for streams and events. Compiled only with KUIPER_WITH_CUDA.
//
// One family of check macros, routed to one reporter that names the failing statement, file:line and
// the current device, and turns the failure into a Status (the library never aborts on its own).
#pragma once

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>

#include <string>

#include "base/status.h"

namespace base {

// Builds the Status for a failed CUDA runtime call.
Status cuda_error(cudaError_t err, const char* stmt, const char* file, int line);

// Number of visible GPUs, 0 when there is no driver or no device (never an error).
int cuda_device_count();

// Owner of a non-blocking stream on one device.
class CudaStream {
 public:
  CudaStream() = default;
  ~CudaStream();
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  Status create(int device_id);
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
  int device_id_ = 0;
};

// Owner of an event created without timing (cheapest for cross-stream ordering) or with timing.
class CudaEvent {
 public:
  CudaEvent() = default;
  ~CudaEvent();
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  Status create(int device_id, bool timing = false);
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
  int device_id_ = 0;
};

// Owner of an instantiated CUDA graph captured from one stream.
class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  bool ready() const { return exec_ != nullptr; }
  // Captures what `record()` enqueues on `stream`, then instantiates it. `record` must not synchronise.
  template <typename F>
  Status capture(cudaStream_t stream, F&& record);
  Status launch(cudaStream_t stream) const;

 private:
  Status finish_capture(cudaStream_t stream, const Status& recorded);
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

// Host memory the GPU can copy from and to asynchronously (cudaMallocHost).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  Status create(size_t bytes);
  void* data() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
};

}  // namespace base

#define CUDA_CHECK(stmt)                                                         \
  do {                                                                           \
    cudaError_t kp_err_ = (stmt);                                                \
    if (kp_err_ != cudaSuccess) return ::base::cuda_error(kp_err_, #stmt, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: reports launch-configuration errors (not asynchronous faults).
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

template <typename F>
base::Status base::CudaGraph::capture(cudaStream_t stream, F&& record) {
  // Relaxed mode: other threads (other tensor-parallel ranks) may make CUDA calls while we capture.
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  return finish_capture(stream, record());
}

#endif  // KUIPER_WITH_CUDA
