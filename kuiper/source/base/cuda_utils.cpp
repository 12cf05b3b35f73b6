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

CudaGraph::~CudaGraph() {
  if (exec_) cudaGraphExecDestroy(exec_);
  if (graph_) cudaGraphDestroy(graph_);
}

Status CudaGraph::finish_capture(cudaStream_t stream, const Status& recorded) {
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);  // always end, even after a failure
  if (!recorded.ok()) {
    if (graph) cudaGraphDestroy(graph);
    return recorded;
  }
  if (end != cudaSuccess) return cuda_error(end, "cudaStreamEndCapture", __FILE__, __LINE__);
  graph_ = graph;
  CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
  // Set the graph up on the device now, so that its first replay (a decode step, where nothing may
  // allocate) is like every later one.
  CUDA_CHECK(cudaGraphUpload(exec_, stream));
  return Status::Ok();
}

Status CudaGraph::launch(cudaStream_t stream) const {
  CUDA_CHECK(cudaGraphLaunch(exec_, stream));
  return Status::Ok();
}

PinnedBuffer::~PinnedBuffer() {
  if (ptr_) cudaFreeHost(ptr_);
}

Status PinnedBuffer::create(size_t bytes) {
  CUDA_CHECK(cudaMallocHost(&ptr_, bytes));
  return Status::Ok();
}

}  // namespace base
