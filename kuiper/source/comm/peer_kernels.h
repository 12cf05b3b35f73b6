// The device side of PeerCommGroup (comm/peer_communicator.h): what one rank's kernels are given, and
// the launchers of the three collectives. Internal to kuiper_comm. The protocol is described in
// comm/peer_communicator.h; the code is in peer_kernels.cu.
#pragma once

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "base/dtype.h"
#include "base/status.h"

namespace comm::peer {

constexpr int kMaxRanks = 8;
constexpr int kMaxChannels = 32;   // blocks of one collective at most; one flag row and counter each
constexpr int kFlatThreads = 512;  // threads of an all-reduce or all-gather block

// Host memory mapped into every device (cudaHostAlloc, mapped + portable), one for the whole group.
struct Control {
  uint64_t status;      // 0 while healthy; kStatusHostAbort, or a device timeout record (timeout_record)
  uint64_t timeout_ns;  // how long a block waits for a peer; read by a block only once it is slow
};
constexpr uint64_t kStatusHostAbort = 1;

enum class Op : uint32_t { kAllReduce = 1, kAllReduceAddRmsnorm = 2, kAllGather = 3 };

// The status word a block that gave up stores: which collective, which rank waited, who was missing.
__host__ __device__ inline uint64_t timeout_record(Op op, int waiter, int missing) {
  return (1ull << 63) | ((uint64_t)op << 40) | ((uint64_t)(waiter & 0xff) << 32) | ((uint64_t)(missing & 0xff) << 24);
}
inline bool is_timeout_record(uint64_t s) { return (s >> 63) != 0; }
inline Op record_op(uint64_t s) { return (Op)((s >> 40) & 0xff); }
inline int record_waiter(uint64_t s) { return (int)((s >> 32) & 0xff); }
inline int record_missing(uint64_t s) { return (int)((s >> 24) & 0xff); }

// Everything one rank's kernels need, passed by value (about 200 bytes of kernel parameters).
struct Args {
  char* data[kMaxRanks];       // rank s's data region: [2 parity][world src][capacity] bytes
  uint64_t* flags[kMaxRanks];  // rank s's flag region: [kMaxChannels][kMaxRanks] epochs
  uint64_t* counters;          // this rank's call counters: [kMaxChannels] (only this rank touches them)
  Control* control;            // device address of the group's mapped control block
  int rank = 0;
  int world = 0;
  int channels = 0;            // blocks a collective may use (<= kMaxChannels; co-residency bound)
  uint64_t capacity = 0;       // bytes of one slot = channels * seg
  uint64_t seg = 0;            // bytes of one channel's part of a slot (multiple of 256)
  uint64_t block_bytes = 0;    // all-reduce / all-gather: message bytes one block aims to move
};

// In place: data (n elements of dtype, fp32/fp16/bf16) = sum over ranks.
base::Status launch_all_reduce(const Args& a, void* data, int64_t n, base::DType dtype, cudaStream_t stream);

// True when rows of `dim` elements fit the fused kernel (a row must fit one channel's segment).
bool add_rmsnorm_fits(const Args& a, int64_t dim, base::DType dtype);
// s = sum over ranks of partial; residual += s; out = rmsnorm(residual) * weight.
// partial, residual, out: [rows, dim] of dtype; weight: fp32 [dim]. Needs add_rmsnorm_fits().
base::Status launch_all_reduce_add_rmsnorm(const Args& a, const void* partial, void* residual, const float* weight,
                                           float eps, void* out, int64_t rows, int64_t dim, base::DType dtype,
                                           cudaStream_t stream);

// out ([world * bytes]) = every rank's `in` (bytes), rank order.
base::Status launch_all_gather(const Args& a, const void* in, void* out, uint64_t bytes, cudaStream_t stream);

}  // namespace comm::peer

#endif  // KUIPER_WITH_CUDA
