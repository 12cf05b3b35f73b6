// PeerCommGroup: the collectives of tensor parallelism between the GPUs of one process, by plain peer
// loads and stores (NVLink or PCIe peer access). It does not use NCCL, and it does not use NVLink
// multicast (no cuMulticastCreate: that can take the shared host down). Each collective is one kernel on
// the caller's compute stream. The host takes no part in it, and there is no per-call host state, so it
// can be captured into the decode graph and replayed. NCCL (comm/nccl_handler.h) stays the fallback and
// the path for several processes.
//
// Memory. create() allocates it once for each rank, in that rank's device memory, and hands every rank
// the pointers of every peer's regions:
//   data[r]     [2 parity][N src][capacity] bytes   slot (p, s): what rank s sent to r in a call of parity p
//   flags[r]    [32 channel][8 src] uint64          flags[r][c][s]: the last epoch rank s reached on channel c
//   counters[r] [32 channel] uint64                 r's rounds so far on channel c (only r touches them)
// A collective runs G <= channels blocks. Block c is channel c, and it owns bytes [c*seg, (c+1)*seg) of
// every slot (seg = capacity / channels). A block never waits on the other blocks of its grid, only on
// block c of the other ranks.
//
// One round of channel c on rank r, with k = counters[r][c], parity p = k & 1 and epoch k + 1:
//
//     rank 0                                      rank 1
//     push partial -> data[0][p][0], data[1][p][0]  push partial -> data[0][p][1], data[1][p][1]
//     fence.sys; flags[0][c][0] = flags[1][c][0] = k+1   fence.sys; flags[0][c][1] = flags[1][c][1] = k+1
//     wait flags[0][c][s] >= k+1 for s = 0, 1       wait flags[1][c][s] >= k+1 for s = 0, 1
//     out = data[0][p][0] + data[0][p][1]           out = data[1][p][0] + data[1][p][1]
//     counters[0][c] = k+1                          counters[1][c] = k+1
//
// The sum is taken over the slots of ranks 0..N-1 in that order with fp32 accumulation, so every rank
// holds bitwise the same result. The kernel reads and advances the counter itself, so graph replays work.
// No reset is ever needed: flags hold increasing epochs, and parity = counter & 1 alternates the slots.
//
// Why the ranks push (store into the peers' slots) rather than pull (load from the peers):
//  - Remote stores are posted: the data and the flag travel one way, and the only loads, the sum's, are
//    local.
//  - Pulling takes a remote round trip for every load after the barrier. It also needs a second barrier
//    before a rank may overwrite the buffer that its peers read, which the in-place result does.
//
// Why two parities are enough: a peer stores call k+2's data (parity k & 1 again) only after it has
// passed the barrier of call k+1. That barrier needs my flag k+2, and I store that flag only after I have
// read all of call k's slots.
//
// Sizes. A message is one-shot (one round, one barrier) when it fits the capacity: an all-reduce of up to
// `capacity` bytes, or an all-gather of up to `capacity` bytes a rank. A larger message is cut into
// rounds of `capacity` bytes inside the same kernel (correct, not tuned). Use NCCL or a two-shot
// algorithm for prefill sizes if that measures faster. The fused all-reduce + add_rmsnorm needs a row
// (dim * element size) to fit one channel's segment (max_fused_row_bytes()). Otherwise it falls back to
// all_reduce_sum followed by kernel::add_rmsnorm.
//
// It cannot hang. A block that waits for a peer gives up after timeout_ms (10 s by default) and records
// who was missing in a status word in host-mapped memory. Every spinning block of every rank polls that
// word, and abort() sets it too, so all of them exit at once. wait() (the host watchdog) reports the
// failure as one line, e.g. "rank 0: peer all-reduce: rank 1 did not arrive within 10 s", and aborts the
// group. After an abort the group is dead: make a new one.
//
// As a Communicator (rank(r)), all_reduce_start() does the whole reduction: one kernel on the caller's
// stream. There is no separate comm stream to overlap with, because the kernel is the communication.
// all_reduce_finish() does nothing (it only reports a failure). all_reduce_add_rmsnorm() is the fused
// kernel, and all_gather() uses the same slots and barrier, copying the slots out in rank order.
//
// Requirements:
//  - Every rank calls the same collectives in the same order with the same sizes (as with NCCL). The
//    rounds of a call depend only on its size.
//  - Each rank calls from its own host thread, on its own stream, with that rank's device current (the
//    call sets it when it is not).
//  - Buffers are device memory of the rank's GPU. 16-byte-aligned buffers take the vector path.
//  - The fused kernel's result is bitwise identical across ranks when every rank's tensors have the same
//    16-byte alignment, as they do when every rank allocates alike.
//  - The blocks of all ranks that share a GPU must be co-resident. create() caps `channels` at
//    SMs / (2 x ranks on that GPU), and a collective never waits on work that cannot be scheduled.
#pragma once

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/status.h"
#include "comm/communicator.h"

namespace comm {

namespace peer {
struct Control;
}

class PeerCommGroup {
 public:
  static constexpr int kMaxRanks = 8;
  static constexpr int kDefaultPeerTimeoutMs = 10000;
  // The default message size a block aims to move in an all-reduce or all-gather. A decode vector of
  // 8 KB takes one block and 16 KB takes two. See set_block_bytes().
  static constexpr size_t kDefaultBlockBytes = 8192;

  // True when the group can be made: 1..8 ranks, valid device ids, and peer access between every pair
  // of distinct devices (cudaDeviceCanAccessPeer). A device may appear several times. Enables nothing.
  static bool supported(const std::vector<int>& devices);
  // Makes the group for ranks 0..N-1 on `devices` (rank r on devices[r]). It enables peer access between
  // the distinct devices (process-wide; left enabled afterwards). It allocates, for each rank, 2 x N x
  // capacity bytes of data plus 2.3 KB of flags and counters, and one mapped host control block.
  // capacity_bytes (>= 16 KB) is the largest message that is one-shot; it is rounded down to
  // channels x a multiple of 256 bytes. Call it from one thread, with no work in flight on the devices.
  // It fails with kUnsupported when a pair of devices has no peer access.
  static base::Status create(const std::vector<int>& devices, size_t capacity_bytes,
                             std::unique_ptr<PeerCommGroup>* out);
  // Waits for the devices' work (cudaDeviceSynchronize on each), then frees everything.
  ~PeerCommGroup();
  PeerCommGroup(const PeerCommGroup&) = delete;
  PeerCommGroup& operator=(const PeerCommGroup&) = delete;

  // The Communicator of rank r (owned by the group).
  Communicator* rank(int r);
  int world_size() const { return (int)devices_.size(); }
  const std::vector<int>& devices() const { return devices_; }
  // Bytes of one slot: the largest one-shot all-reduce, and the largest one-shot all-gather input.
  size_t capacity_bytes() const { return capacity_; }
  // Blocks a collective may use.
  int channels() const { return channels_; }
  // The largest row (dim x element size) that all_reduce_add_rmsnorm fuses. Larger rows take the default.
  size_t max_fused_row_bytes() const { return seg_; }

  // Device-side bound on a wait for a peer. It applies at once, also to kernels already captured in a graph.
  void set_timeout_ms(int ms);
  int timeout_ms() const { return timeout_ms_.load(); }
  // Host-side bound on wait(): a stream whose work takes longer is declared hung (default kDefaultTimeoutMs).
  void set_wait_timeout_ms(int ms) { wait_timeout_ms_.store(ms); }
  int wait_timeout_ms() const { return wait_timeout_ms_.load(); }
  // Tuning: the message bytes one block of an all-reduce or all-gather aims for, which sets the number
  // of blocks (at most channels()). It must be the same on every rank, so set it while nothing is in
  // flight. Graphs keep the value they were captured with.
  void set_block_bytes(size_t bytes);

  // The watchdog (Communicator::wait of every rank). It returns when `stream` is done. It fails, and
  // aborts the group, when a kernel recorded a timeout, when the group was aborted, on a CUDA error, or
  // after wait_timeout_ms().
  base::Status wait(int rank, cudaStream_t stream);
  // Makes every pending and later collective of every rank fail. Spinning kernels exit within
  // microseconds. Any thread may call it, any number of times; the first reason is kept.
  void abort(const std::string& why);
  // True after abort(), or once any kernel has recorded a timeout.
  bool aborted() const;

 private:
  friend class PeerCommunicator;
  struct Rank;
  PeerCommGroup() = default;
  uint64_t status_word() const;
  // The Status every call fails with once aborted: turns a device timeout record into an abort first.
  base::Status failure();
  std::string describe(uint64_t status) const;

  std::vector<int> devices_;
  size_t capacity_ = 0;
  size_t seg_ = 0;
  int channels_ = 0;
  std::vector<std::unique_ptr<Rank>> ranks_;
  peer::Control* control_ = nullptr;  // host address of the mapped control block
  std::atomic<int> timeout_ms_{kDefaultPeerTimeoutMs};
  std::atomic<int> wait_timeout_ms_{kDefaultTimeoutMs};
  mutable std::mutex mu_;  // guards why_
  std::atomic<bool> aborted_{false};
  std::string why_;
};

}  // namespace comm

#endif  // KUIPER_WITH_CUDA
