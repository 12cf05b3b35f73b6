// The kernels of PeerCommGroup: the one-shot all-reduce, the all-reduce fused with the residual add and
// RMSNorm, and the all-gather. The protocol, the memory layout and the reasons for them are in
// comm/peer_communicator.h. Every block of a collective is a channel of its own and never waits for
// another block of its grid, only for the block of the same index on the other ranks:
//
//   k = counters[ch]
//   for j in 0 .. rounds-1:                      (one round when the message fits the capacity)
//     push my part of round j into slot (parity (k+j) & 1, src me) of every rank, me included
//     barrier at epoch k+j+1: flags[every rank][ch][me] = epoch; wait flags[me][ch][s] >= epoch for all s
//     consume the slots of ranks 0, 1, ..., N-1 in that order (fp32 accumulation)
//   counters[ch] = k + rounds
//
// The partition of a message into rounds and parts depends only on its size and the group (never on
// pointer alignment), so every rank's block ch moves the same elements.
#include <climits>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"
#include "peer_kernels.h"

namespace comm::peer {
namespace {

using base::DType;
using base::Status;
namespace kc = kernel::cuda;

// ---------------------------------------------------------------------------------------------------
// Memory-model primitives (PTX ISA memory consistency model). A release is a fence.acq_rel followed by
// a strong store, an acquire a strong load followed by fence.acq_rel, all at system scope: the peers
// are other GPUs, and the status word lives in host memory.

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ void fence_acq_rel_sys() { asm volatile("fence.acq_rel.sys;" ::: "memory"); }
__device__ __forceinline__ void store_relaxed_sys(uint64_t* p, uint64_t v) {
  asm volatile("st.relaxed.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ uint64_t load_relaxed_sys(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.relaxed.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

// A load that bypasses L1: the slots are written by other GPUs or other SMs, and each is read once.
template <typename W> __device__ __forceinline__ W load_l2(const W* p) {
  W w;
  if constexpr (sizeof(W) == 16) {
    const uint4 u = __ldcg(reinterpret_cast<const uint4*>(p));
    memcpy(&w, &u, 16);
  } else if constexpr (sizeof(W) == 8) {
    const uint2 u = __ldcg(reinterpret_cast<const uint2*>(p));
    memcpy(&w, &u, 8);
  } else if constexpr (sizeof(W) == 4) {
    const unsigned u = __ldcg(reinterpret_cast<const unsigned*>(p));
    memcpy(&w, &u, 4);
  } else if constexpr (sizeof(W) == 2) {
    const unsigned short u = __ldcg(reinterpret_cast<const unsigned short*>(p));
    memcpy(&w, &u, 2);
  } else {
    static_assert(sizeof(W) == 1, "1, 2, 4, 8 or 16-byte words");
    const unsigned char u = __ldcg(reinterpret_cast<const unsigned char*>(p));
    memcpy(&w, &u, 1);
  }
  return w;
}

// ---------------------------------------------------------------------------------------------------
// The flag barrier.

// The slow path of a flag wait: spins until *flag >= epoch. Gives up (false) as soon as the group's
// status word is set (a host abort, or another block that timed out), or after control->timeout_ns,
// in which case it records `record` (who waited for whom) in the status word first. The status word
// and the clock are looked at once every 64 polls: the fast path never touches host memory.
__device__ __noinline__ bool wait_slow(const uint64_t* flag, uint64_t epoch, Control* ctl, uint64_t record) {
  const uint64_t t0 = global_timer_ns();
  uint64_t deadline = 0;
  for (uint32_t it = 1;; ++it) {
    if (load_relaxed_sys(flag) >= epoch) return true;
    if (it % 64 == 0) {
      if (load_relaxed_sys(&ctl->status) != 0) return false;
      const uint64_t now = global_timer_ns();
      if (deadline == 0) deadline = t0 + load_relaxed_sys(&ctl->timeout_ns);
      if (now > deadline) {
        store_relaxed_sys(&ctl->status, record);
        __threadfence_system();
        return false;
      }
    }
    if (it > 4096) __nanosleep(256);  // a peer that is late, not just a little behind: poll gently
  }
}

// The barrier of one round of channel `ch` at `epoch`. Thread s (s < world) signals rank s and waits
// for rank s, so the N flags travel in parallel. Returns true in every thread when every rank's pushes
// of this round into my slots are visible; false in every thread when the group failed.
__device__ __forceinline__ bool barrier(const Args& a, int ch, uint64_t epoch, Op op, volatile int* s_fail) {
  __syncthreads();  // every thread of the block has issued its pushes of the round
  const int s = threadIdx.x;
  if (s < a.world) {
    // Release: the block's pushes (before this through bar.sync; the fence is cumulative) are visible
    // on rank s before my flag is.
    fence_acq_rel_sys();
    store_relaxed_sys(a.flags[s] + ch * kMaxRanks + a.rank, epoch);
    const uint64_t* mine = a.flags[a.rank] + ch * kMaxRanks + s;
    if (load_relaxed_sys(mine) < epoch && !wait_slow(mine, epoch, a.control, timeout_record(op, a.rank, s)))
      *s_fail = 1;
    // Acquire: what rank s pushed before its flag is visible to the loads after the next bar.sync.
    fence_acq_rel_sys();
  }
  __syncthreads();
  return *s_fail == 0;
}

// Byte offset of slot (parity, src), channel ch's part, in any rank's data region
// ([2 parity][world src][capacity] bytes; channel ch owns bytes [ch * seg, (ch + 1) * seg) of a slot).
__device__ __forceinline__ uint64_t slot_offset(const Args& a, int parity, int src, int ch) {
  return ((uint64_t)parity * a.world + src) * a.capacity + (uint64_t)ch * a.seg;
}

// Block ch's part [lo, hi) of round j of a message of n units: a round covers up to G * per_ch units,
// split evenly over the G blocks in multiples of `grain` units (per_ch is a multiple of grain).
struct Part {
  int64_t lo, hi;
};
__device__ __forceinline__ Part part_of(int64_t n, int64_t per_ch, int j, int ch, int G, int64_t grain) {
  const int64_t r_lo = (int64_t)j * G * per_ch;
  const int64_t r_end = min(r_lo + (int64_t)G * per_ch, n);
  const int64_t size = ((r_end - r_lo + G - 1) / G + grain - 1) / grain * grain;
  const int64_t lo = min(r_lo + ch * size, r_end);
  return {lo, min(lo + size, r_end)};
}

// V elements of T moved as one word: 16 bytes (V = kVec16<T>) or one element (V = 1).
template <typename T, int V> using Word = std::conditional_t<V == 1, T, uint4>;

// The block's per-kernel state: the channel's counter at entry, and the failure flag of barrier().
struct BlockState {
  uint64_t count;
  int fail;
};
__device__ __forceinline__ void block_begin(const Args& a, BlockState* st) {
  if (threadIdx.x == 0) {
    st->count = a.counters[blockIdx.x];
    st->fail = 0;
  }
  __syncthreads();
}
__device__ __forceinline__ void block_end(const Args& a, const BlockState* st, int rounds) {
  if (threadIdx.x == 0) a.counters[blockIdx.x] = st->count + rounds;
}

// ---------------------------------------------------------------------------------------------------
// The kernels. Grid: G <= a.channels blocks (block = channel); no PDL (plain stream order).

// In place: data (T [n]) = sum over ranks. V = 1 when data is not 16-byte aligned.
template <typename T, int V>
__global__ void __launch_bounds__(kFlatThreads)
    all_reduce_kernel(const __grid_constant__ Args a, T* data, int64_t n, int rounds) {
  using W = Word<T, V>;
  __shared__ BlockState st;
  const int ch = blockIdx.x;
  block_begin(a, &st);
  for (int j = 0; j < rounds; ++j) {
    const uint64_t k = st.count + j;
    const int parity = (int)(k & 1);
    const Part p = part_of(n, (int64_t)(a.seg / sizeof(T)), j, ch, gridDim.x, kc::kVec16<T>);
    T* x = data + p.lo;  // this block's part: T [cnt]
    const int64_t cnt = p.hi - p.lo, n_vec = cnt / V;
    const uint64_t to = slot_offset(a, parity, a.rank, ch);
    for (int64_t v = threadIdx.x; v < n_vec; v += blockDim.x) {
      const W w = reinterpret_cast<const W*>(x)[v];
      for (int s = 0; s < a.world; ++s) reinterpret_cast<W*>(a.data[s] + to)[v] = w;
    }
    for (int64_t i = n_vec * V + threadIdx.x; i < cnt; i += blockDim.x) {  // the tail (V > 1 only)
      const T e = x[i];
      for (int s = 0; s < a.world; ++s) reinterpret_cast<T*>(a.data[s] + to)[i] = e;
    }
    if (!barrier(a, ch, k + 1, Op::kAllReduce, &st.fail)) return;
    const char* slots = a.data[a.rank] + slot_offset(a, parity, 0, ch);  // slot s at + s * capacity
    for (int64_t v = threadIdx.x; v < n_vec; v += blockDim.x) {
      float acc[V], f[V];
      W w = load_l2(reinterpret_cast<const W*>(slots) + v);
      kc::unpack_floats<T, V>(&w, acc);
      for (int s = 1; s < a.world; ++s) {
        w = load_l2(reinterpret_cast<const W*>(slots + s * a.capacity) + v);
        kc::unpack_floats<T, V>(&w, f);
#pragma unroll
        for (int e = 0; e < V; ++e) acc[e] += f[e];
      }
      kc::store_floats<T, V>(x + v * V, acc);
    }
    for (int64_t i = n_vec * V + threadIdx.x; i < cnt; i += blockDim.x) {
      float acc = kc::to_float(load_l2(reinterpret_cast<const T*>(slots) + i));
      for (int s = 1; s < a.world; ++s) acc += kc::to_float(load_l2(reinterpret_cast<const T*>(slots + s * a.capacity) + i));
      x[i] = kc::from_float<T>(acc);
    }
  }
  block_end(a, &st, rounds);
}

// s = sum over ranks of partial; residual += s; out = rmsnorm(residual) * weight.
// partial, residual, out: T [rows, dim]; weight: fp32 [dim]; V divides dim. Each block owns whole rows
// (up to rows_per_ch a round). The arithmetic after the sum is that of add_rmsnorm_kernel in
// op/kernels/cuda/norm.cu, statement for statement and with the same block size, so the result is
// bitwise that of all_reduce_sum followed by kernel::add_rmsnorm. `out` may alias `partial`: a block
// reads its rows of partial (the push) before it writes those rows of out.
template <typename T, int V>
__global__ void __launch_bounds__(1024)
    all_reduce_add_rmsnorm_kernel(const __grid_constant__ Args a, const T* partial, T* residual,
                                  const float* __restrict__ weight, float eps, T* out, int rows, int dim,
                                  int rows_per_ch, int rounds) {
  using W = Word<T, V>;
  __shared__ BlockState st;
  __shared__ float red[kc::kWarpSize];
  const int ch = blockIdx.x;
  const int n_vec = dim / V;
  block_begin(a, &st);
  for (int j = 0; j < rounds; ++j) {
    const uint64_t k = st.count + j;
    const int parity = (int)(k & 1);
    const Part p = part_of(rows, rows_per_ch, j, ch, gridDim.x, 1);  // rows [p.lo, p.hi)
    const uint64_t to = slot_offset(a, parity, a.rank, ch);
    const W* src = reinterpret_cast<const W*>(partial + p.lo * dim);  // the part's rows, contiguous
    const int64_t n_w = (p.hi - p.lo) * n_vec;
    for (int64_t v = threadIdx.x; v < n_w; v += blockDim.x) {
      const W w = src[v];
      for (int s = 0; s < a.world; ++s) reinterpret_cast<W*>(a.data[s] + to)[v] = w;
    }
    if (!barrier(a, ch, k + 1, Op::kAllReduceAddRmsnorm, &st.fail)) return;
    const char* slots = a.data[a.rank] + slot_offset(a, parity, 0, ch);  // slot s at + s * capacity
    for (int64_t r = p.lo; r < p.hi; ++r) {
      const int64_t row = r * dim;
      const int64_t srow = (r - p.lo) * n_vec;  // the row's first word in a slot
      float ss = 0.f;
      for (int v = threadIdx.x; v < n_vec; v += blockDim.x) {
        float acc[V], f[V], x[V];
        W w = load_l2(reinterpret_cast<const W*>(slots) + srow + v);
        kc::unpack_floats<T, V>(&w, acc);
        for (int s = 1; s < a.world; ++s) {
          w = load_l2(reinterpret_cast<const W*>(slots + s * a.capacity) + srow + v);
          kc::unpack_floats<T, V>(&w, f);
#pragma unroll
          for (int e = 0; e < V; ++e) acc[e] += f[e];
        }
        kc::load_floats<T, V>(residual + row + v * V, x);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float d = kc::to_float(kc::from_float<T>(acc[e]));  // the sum as all_reduce_sum stores it
          x[e] = kc::to_float(kc::from_float<T>(x[e] + d));          // the value stored below
        }
        kc::store_floats<T, V>(residual + row + v * V, x);
#pragma unroll
        for (int e = 0; e < V; ++e) ss += x[e] * x[e];
      }
      const float inv = rsqrtf(kc::block_sum(ss, red) / (float)dim + eps);
      for (int v = threadIdx.x; v < n_vec; v += blockDim.x) {
        float x[V], w[V];
        kc::load_floats<T, V>(residual + row + v * V, x);  // written by this thread above
        kc::load_floats<float, V>(weight + v * V, w);
#pragma unroll
        for (int e = 0; e < V; ++e) x[e] = x[e] * inv * w[e];
        kc::store_floats<T, V>(out + row + v * V, x);
      }
    }
  }
  block_end(a, &st, rounds);
}

// out (bytes [world * n]) = every rank's in (bytes [n]), rank order. W: the widest word that divides n
// and the alignment of both pointers. The partition is in bytes, 16 at a time, whatever W.
template <typename W>
__global__ void __launch_bounds__(kFlatThreads)
    all_gather_kernel(const __grid_constant__ Args a, const char* in, char* out, int64_t n, int rounds) {
  __shared__ BlockState st;
  const int ch = blockIdx.x;
  block_begin(a, &st);
  for (int j = 0; j < rounds; ++j) {
    const uint64_t k = st.count + j;
    const int parity = (int)(k & 1);
    const Part p = part_of(n, (int64_t)a.seg, j, ch, gridDim.x, 16);
    const int64_t n_w = (p.hi - p.lo) / (int64_t)sizeof(W);
    const W* src = reinterpret_cast<const W*>(in + p.lo);
    const uint64_t to = slot_offset(a, parity, a.rank, ch);
    for (int64_t v = threadIdx.x; v < n_w; v += blockDim.x) {
      const W w = src[v];
      for (int s = 0; s < a.world; ++s) reinterpret_cast<W*>(a.data[s] + to)[v] = w;
    }
    if (!barrier(a, ch, k + 1, Op::kAllGather, &st.fail)) return;
    for (int s = 0; s < a.world; ++s) {
      const W* slot = reinterpret_cast<const W*>(a.data[a.rank] + slot_offset(a, parity, s, ch));
      W* dst = reinterpret_cast<W*>(out + s * n + p.lo);
      for (int64_t v = threadIdx.x; v < n_w; v += blockDim.x) dst[v] = load_l2(slot + v);
    }
  }
  block_end(a, &st, rounds);
}

// ---------------------------------------------------------------------------------------------------
// Launchers.

int64_t ceil_div64(int64_t x, int64_t y) { return (x + y - 1) / y; }

// Blocks for a flat message of `bytes`: one per block_bytes (more when a block's share would not fit
// its segment), at most `channels`.
int flat_blocks(const Args& a, int64_t bytes) {
  const int64_t per_block = (int64_t)std::min<uint64_t>(a.block_bytes, a.seg);
  return (int)std::min<int64_t>(a.channels, std::max<int64_t>(1, ceil_div64(bytes, per_block)));
}

Status check_rounds(int64_t rounds) {
  if (rounds > INT_MAX) return base::InvalidArgument("peer collective: message too large for the capacity");
  return Status::Ok();
}

// Threads per row of the fused kernel: exactly what norm.cu's add_rmsnorm picks (same reduction tree).
int norm_threads(int64_t n_vec) {
  const int64_t t = ceil_div64(n_vec, kc::kWarpSize) * kc::kWarpSize;
  return (int)(t < kc::kWarpSize ? kc::kWarpSize : (t > 1024 ? 1024 : t));
}

}  // namespace

Status launch_all_reduce(const Args& a, void* data, int64_t n, DType dtype, cudaStream_t stream) {
  if (n == 0) return Status::Ok();
  return kc::dispatch_float(dtype, "peer all-reduce", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    constexpr int kV = kc::kVec16<T>;
    const int G = flat_blocks(a, n * (int64_t)sizeof(T));
    const int64_t rounds = ceil_div64(n, (int64_t)G * (int64_t)(a.seg / sizeof(T)));
    KP_RETURN_IF_ERROR(check_rounds(rounds));
    T* p = static_cast<T*>(data);
    if (kc::is_aligned(p, 16))
      all_reduce_kernel<T, kV><<<G, kFlatThreads, 0, stream>>>(a, p, n, (int)rounds);
    else
      all_reduce_kernel<T, 1><<<G, kFlatThreads, 0, stream>>>(a, p, n, (int)rounds);
    CUDA_CHECK_LAUNCH();
    return Status::Ok();
  });
}

bool add_rmsnorm_fits(const Args& a, int64_t dim, DType dtype) {
  return dim > 0 && dim <= INT_MAX && (uint64_t)dim * base::dtype_size(dtype) <= a.seg;
}

Status launch_all_reduce_add_rmsnorm(const Args& a, const void* partial, void* residual, const float* weight,
                                     float eps, void* out, int64_t rows, int64_t dim, DType dtype,
                                     cudaStream_t stream) {
  if (rows == 0) return Status::Ok();
  if (!add_rmsnorm_fits(a, dim, dtype) || rows > INT_MAX)
    return base::InvalidArgument("peer all-reduce + add_rmsnorm: a row does not fit a channel's segment");
  return kc::dispatch_float(dtype, "peer all-reduce + add_rmsnorm", [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    constexpr int kV = kc::kVec16<T>;
    const int rows_per_ch = (int)std::min<uint64_t>(a.seg / ((uint64_t)dim * sizeof(T)), INT_MAX);
    const int G = (int)std::min<int64_t>(a.channels, rows);
    const int64_t rounds = ceil_div64(rows, (int64_t)G * rows_per_ch);
    KP_RETURN_IF_ERROR(check_rounds(rounds));
    const T* pp = static_cast<const T*>(partial);
    T* pr = static_cast<T*>(residual);
    T* po = static_cast<T*>(out);
    // The same vector condition as kernel::add_rmsnorm (partial plays its `delta`).
    const bool vec = dim % kV == 0 && kc::is_aligned(pr, 16) && kc::is_aligned(pp, 16) && kc::is_aligned(po, 16) &&
                     kc::is_aligned(weight, 16);
    if (vec)
      all_reduce_add_rmsnorm_kernel<T, kV><<<G, norm_threads(dim / kV), 0, stream>>>(
          a, pp, pr, weight, eps, po, (int)rows, (int)dim, rows_per_ch, (int)rounds);
    else
      all_reduce_add_rmsnorm_kernel<T, 1><<<G, norm_threads(dim), 0, stream>>>(a, pp, pr, weight, eps, po, (int)rows,
                                                                               (int)dim, rows_per_ch, (int)rounds);
    CUDA_CHECK_LAUNCH();
    return Status::Ok();
  });
}

Status launch_all_gather(const Args& a, const void* in, void* out, uint64_t bytes, cudaStream_t stream) {
  if (bytes == 0) return Status::Ok();
  const int G = flat_blocks(a, (int64_t)bytes);
  const int64_t rounds = ceil_div64((int64_t)bytes, (int64_t)G * (int64_t)a.seg);
  KP_RETURN_IF_ERROR(check_rounds(rounds));
  const char* pi = static_cast<const char*>(in);
  char* po = static_cast<char*>(out);
  const auto fits = [&](size_t w) { return bytes % w == 0 && kc::is_aligned(pi, w) && kc::is_aligned(po, w); };
  const int64_t n = (int64_t)bytes;
  if (fits(16))
    all_gather_kernel<uint4><<<G, kFlatThreads, 0, stream>>>(a, pi, po, n, (int)rounds);
  else if (fits(8))
    all_gather_kernel<uint2><<<G, kFlatThreads, 0, stream>>>(a, pi, po, n, (int)rounds);
  else if (fits(4))
    all_gather_kernel<unsigned><<<G, kFlatThreads, 0, stream>>>(a, pi, po, n, (int)rounds);
  else if (fits(2))
    all_gather_kernel<unsigned short><<<G, kFlatThreads, 0, stream>>>(a, pi, po, n, (int)rounds);
  else
    all_gather_kernel<unsigned char><<<G, kFlatThreads, 0, stream>>>(a, pi, po, n, (int)rounds);
  CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace comm::peer
