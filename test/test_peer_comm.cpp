// PeerCommGroup (comm/peer_communicator.h) on GPUs. Label gpu: every test skips with a message when no
// GPU is visible. Each collective test runs in three layouts:
//   SameGpu2, SameGpu4  2 or 4 ranks on GPU 0. The "peers" are the same GPU, so the protocol and the
//                       co-residency of the ranks' kernels are tested on one GPU.
//   Distinct            one rank per visible GPU (up to 8); skipped with fewer than 2 GPUs.
// Each rank is a host thread with its own non-blocking stream, and the ranks call concurrently. Device
// memory is allocated and freed outside the concurrent part: cudaFree synchronizes the device, and on a
// shared GPU that would stall one rank while another rank's kernel waits for it.
//
// References are computed here on the host from the values the GPU was given. Those values are random in
// [-1, 1) and already rounded to the dtype. u is the unit roundoff of the dtype: 2^-24 (fp32), 2^-11 (fp16),
// 2^-8 (bf16). `tiny` is half the smallest subnormal spacing of the dtype.
//  - all-reduce, exact: the result is bitwise round_dt(((x_0 + x_1) + x_2) + ...) in fp32. This is the
//    rank order and the fp32 accumulation that the kernel promises, and it is the same bits on every rank.
//  - all-reduce, float64: |got - sum| <= u |sum| + (N + 1) 2^-24 sum_s |x_s| + tiny. That is the fp32
//    recursive-summation bound plus one rounding to the dtype.
//  - add_rmsnorm, x: |x_dev - (x0 + sum p)| <= 1.01 u (|s| + |x_ref|) + (N + 2) 2^-24 (sum|p| + |x0| + |s|)
//    + 2 tiny. The sum is rounded to the dtype, then x0 + s is rounded again.
//  - add_rmsnorm, xb: against rmsnorm(x_dev) * w in float64, computed from the stored x:
//    |xb - ref| <= (u + 1e-5) |ref| + tiny. 1e-5 is about 7x the worst case of the fp32 arithmetic here:
//    the sum of squares has fewer than 20 roundings in its chain, and rsqrtf is within 2 ulp.
//  - add_rmsnorm, fused vs unfused: bitwise equal to all_reduce_sum + kernel::add_rmsnorm (the default
//    Communicator implementation), because the fused kernel repeats that arithmetic exactly.
//  - all-gather: exact bytes.
//
// Microbenchmark, not run by ctest: the peer all-reduce and NCCL side by side, each timed inside a CUDA
// graph of 100 back-to-back calls, per-call time = graph time / 100:
//   build/bin/test_peer_comm --gtest_also_run_disabled_tests --gtest_filter='*PeerCommBench*'
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "base/buffer.h"
#include "base/cuda_utils.h"
#include "comm/host_barrier.h"
#include "comm/nccl_handler.h"
#include "comm/peer_communicator.h"
#include "op/kernels.h"
#include "test_util.h"

namespace {

// Ranks that share GPU 0 need every kernel loaded before any of them spins in a collective (see
// PeerCommGroup::create); this runs before main(), so before CUDA starts.
const bool kEagerLoading = testutil::eager_kernel_loading();

using base::DType;
using base::Status;
using comm::Communicator;
using comm::PeerCommGroup;
using tensor::Tensor;

const DType kDtypes[] = {DType::kFp32, DType::kFp16, DType::kBf16};

// ---------------------------------------------------------------------------------------------------
// Layouts.

enum class Layout { kSameGpu2, kSameGpu4, kDistinct };

std::string name_of(Layout l) {
  switch (l) {
    case Layout::kSameGpu2: return "SameGpu2";
    case Layout::kSameGpu4: return "SameGpu4";
    case Layout::kDistinct: return "Distinct";
  }
  return "Unknown";
}
std::string layout_name(const ::testing::TestParamInfo<Layout>& info) { return name_of(info.param); }
void PrintTo(Layout l, std::ostream* os) { *os << name_of(l); }

// The devices of a layout on this machine; empty, with the reason in *why, when it cannot run here.
std::vector<int> devices_of(Layout l, std::string* why) {
  const int gpus = testutil::gpu_count();
  if (gpus == 0) {
    *why = "needs a CUDA GPU; none is visible";
    return {};
  }
  switch (l) {
    case Layout::kSameGpu2: return {0, 0};
    case Layout::kSameGpu4: return {0, 0, 0, 0};
    case Layout::kDistinct: {
      if (gpus < 2) {
        *why = "needs 2 or more GPUs; " + std::to_string(gpus) + " visible";
        return {};
      }
      std::vector<int> d;
      for (int i = 0; i < std::min(gpus, PeerCommGroup::kMaxRanks); ++i) d.push_back(i);
      if (!PeerCommGroup::supported(d)) {
        *why = "the visible GPUs have no peer access to each other";
        return {};
      }
      return d;
    }
  }
  return {};
}

#define ASSERT_OK(expr)                                              \
  do {                                                               \
    const ::base::Status kp_st_ = (expr);                            \
    ASSERT_TRUE(kp_st_.ok()) << #expr << ": " << kp_st_.message();   \
  } while (0)

// Inside a rank's body (a function returning its failure text, "" when it succeeded).
#define TRY(expr)                                                                          \
  do {                                                                                     \
    const ::base::Status kp_st_ = (expr);                                                  \
    if (!kp_st_.ok()) return std::string(#expr) + ": " + kp_st_.message();                 \
  } while (0)
#define TRY_CUDA(expr)                                                                     \
  do {                                                                                     \
    const cudaError_t kp_e_ = (expr);                                                      \
    if (kp_e_ != cudaSuccess) return std::string(#expr) + ": " + cudaGetErrorString(kp_e_); \
  } while (0)

// ---------------------------------------------------------------------------------------------------
// Host values in a dtype.

size_t esize(DType dt) { return base::dtype_size(dt); }

std::vector<uint8_t> encode(DType dt, const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * esize(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::kFp32) {
      std::memcpy(&b[i * 4], &v[i], 4);
    } else {
      const uint16_t h = dt == DType::kFp16 ? base::float_to_half(v[i]) : base::float_to_bf16(v[i]);
      std::memcpy(&b[i * 2], &h, 2);
    }
  }
  return b;
}

std::vector<float> decode(DType dt, const std::vector<uint8_t>& b) {
  std::vector<float> v(b.size() / esize(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::kFp32) {
      std::memcpy(&v[i], &b[i * 4], 4);
    } else {
      uint16_t h;
      std::memcpy(&h, &b[i * 2], 2);
      v[i] = dt == DType::kFp16 ? base::half_to_float(h) : base::bf16_to_float(h);
    }
  }
  return v;
}

// n values uniform in [lo, hi), rounded to dt (so the float values are exactly what the GPU holds).
std::vector<float> random_values(DType dt, size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return decode(dt, encode(dt, v));
}

double unit_roundoff(DType dt) {
  switch (dt) {
    case DType::kFp16: return std::ldexp(1.0, -11);
    case DType::kBf16: return std::ldexp(1.0, -8);
    default: return std::ldexp(1.0, -24);
  }
}
double tiny_of(DType dt) { return dt == DType::kFp16 ? std::ldexp(1.0, -25) : 1e-38; }

// ---------------------------------------------------------------------------------------------------
// Device buffers and rank threads.

Tensor device_tensor(DType dt, std::vector<int64_t> shape, int device) {
  Tensor t;
  const Status s = Tensor::create(dt, std::move(shape), base::CUDAAllocator::get(device), &t);
  EXPECT_TRUE(s.ok()) << s.message();
  return t;
}

// A view of n elements that starts `offset` elements into a fresh buffer (offset 1: not 16-byte aligned).
Tensor device_view(DType dt, int64_t n, int device, int64_t offset) {
  std::shared_ptr<base::Buffer> buf;
  const Status s = base::Buffer::create(base::CUDAAllocator::get(device), (size_t)(n + offset) * esize(dt), &buf);
  EXPECT_TRUE(s.ok()) << s.message();
  return Tensor::from_buffer(buf, (size_t)offset * esize(dt), dt, {n});
}

cudaError_t upload(const Tensor& t, const std::vector<uint8_t>& bytes, cudaStream_t s) {
  return cudaMemcpyAsync(t.data(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice, s);
}
// Copies t to the host once the stream's work is done (call after the rank's wait()).
cudaError_t download(const Tensor& t, std::vector<uint8_t>* bytes, cudaStream_t s) {
  bytes->resize(t.nbytes());
  const cudaError_t e = cudaMemcpyAsync(bytes->data(), t.data(), t.nbytes(), cudaMemcpyDeviceToHost, s);
  return e != cudaSuccess ? e : cudaStreamSynchronize(s);
}

// The group's ranks, each with a stream made here (outside the concurrent part).
class Ranks {
 public:
  explicit Ranks(PeerCommGroup* g) : g_(g), streams_(g->world_size()) {
    for (int r = 0; r < g->world_size(); ++r) EXPECT_TRUE(streams_[r].create(g->devices()[r]).ok());
  }
  int world() const { return g_->world_size(); }
  int device(int r) const { return g_->devices()[r]; }
  Communicator* comm(int r) const { return g_->rank(r); }
  cudaStream_t stream(int r) const { return streams_[r].get(); }

  // Runs body(r) on one thread per rank, all at once, with the rank's device current. A rank whose body
  // fails aborts the group, so no other rank waits for it until the timeout (as the engine does).
  // Returns each rank's failure text ("" when it succeeded).
  std::vector<std::string> run(const std::function<std::string(int)>& body) const {
    std::vector<std::string> err(world());
    std::vector<std::thread> threads;
    for (int r = 0; r < world(); ++r)
      threads.emplace_back([&, r] {
        if (cudaSetDevice(device(r)) != cudaSuccess) {
          err[r] = "cudaSetDevice failed";
        } else {
          err[r] = body(r);
        }
        if (!err[r].empty()) g_->abort("rank " + std::to_string(r) + " failed in the test: " + err[r]);
      });
    for (auto& t : threads) t.join();
    return err;
  }

 private:
  PeerCommGroup* g_;
  std::vector<base::CudaStream> streams_;
};

::testing::AssertionResult all_ranks_ok(const std::vector<std::string>& err) {
  std::ostringstream os;
  bool ok = true;
  for (size_t r = 0; r < err.size(); ++r)
    if (!err[r].empty()) {
      ok = false;
      os << "\n  rank " << r << ": " << err[r];
    }
  return ok ? ::testing::AssertionSuccess() : ::testing::AssertionFailure() << "ranks failed:" << os.str();
}

// ---------------------------------------------------------------------------------------------------
// References.

// Checks one rank's all-reduce result (bytes of dt) against every rank's inputs (see the file comment);
// "" when it matches, else the count and the first mismatches.
std::string check_sum(DType dt, const std::vector<std::vector<float>>& inputs, const std::vector<uint8_t>& got_bytes) {
  const size_t n = inputs[0].size();
  const int world = (int)inputs.size();
  const std::vector<float> got = decode(dt, got_bytes);
  if (got.size() != n) return "wrong size";
  std::vector<float> emulated(n);
  for (size_t i = 0; i < n; ++i) {
    float acc = inputs[0][i];
    for (int s = 1; s < world; ++s) acc += inputs[s][i];
    emulated[i] = acc;
  }
  const std::vector<uint8_t> exact = encode(dt, emulated);
  const double u = unit_roundoff(dt), tiny = tiny_of(dt);
  std::ostringstream os;
  int bad = 0;
  for (size_t i = 0; i < n; ++i) {
    double sum = 0, mag = 0;
    for (int s = 0; s < world; ++s) {
      sum += inputs[s][i];
      mag += std::fabs(inputs[s][i]);
    }
    const double bound = u * std::fabs(sum) + (world + 1) * std::ldexp(1.0, -24) * mag + tiny;
    const bool exact_ok = std::memcmp(&exact[i * esize(dt)], &got_bytes[i * esize(dt)], esize(dt)) == 0;
    const bool bound_ok = std::fabs((double)got[i] - sum) <= bound;
    if (!exact_ok || !bound_ok) {
      if (bad < 5)
        os << " [" << i << "] got " << got[i] << " fp32-rank-order " << decode(dt, exact)[i] << " float64 " << sum
           << " (bound " << bound << ")";
      ++bad;
    }
  }
  return bad == 0 ? "" : std::to_string(bad) + " of " + std::to_string(n) + " elements wrong:" + os.str();
}

// One fused case's host inputs: partial per rank [rows, dim], residual x0 and weight w shared by all ranks.
struct NormCase {
  int64_t rows, dim;
  std::vector<std::vector<float>> partial;  // [world][rows * dim]
  std::vector<float> x0;                    // [rows * dim]
  std::vector<float> w;                     // fp32 [dim]
};

NormCase make_norm_case(DType dt, int world, int64_t rows, int64_t dim, uint64_t seed) {
  NormCase c{rows, dim, {}, {}, {}};
  for (int r = 0; r < world; ++r) c.partial.push_back(random_values(dt, rows * dim, seed + 100 * r));
  c.x0 = random_values(dt, rows * dim, seed + 7, -2.f, 2.f);
  c.w = random_values(DType::kFp32, dim, seed + 9, 0.5f, 1.5f);
  return c;
}

// Checks the stored residual x and output xb of one rank against the case (see the file comment).
std::string check_norm(DType dt, const NormCase& c, float eps, const std::vector<uint8_t>& x_bytes,
                       const std::vector<uint8_t>& xb_bytes) {
  const std::vector<float> x = decode(dt, x_bytes), xb = decode(dt, xb_bytes);
  const int world = (int)c.partial.size();
  const double u = unit_roundoff(dt), tiny = tiny_of(dt), e24 = std::ldexp(1.0, -24);
  std::ostringstream os;
  int bad = 0;
  for (int64_t r = 0; r < c.rows; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < c.dim; ++j) ss += (double)x[r * c.dim + j] * x[r * c.dim + j];
    const double inv = 1.0 / std::sqrt(ss / c.dim + eps);
    for (int64_t j = 0; j < c.dim; ++j) {
      const int64_t i = r * c.dim + j;
      double s = 0, mag = 0;
      for (int k = 0; k < world; ++k) {
        s += c.partial[k][i];
        mag += std::fabs(c.partial[k][i]);
      }
      const double xr = c.x0[i] + s;
      const double bx = 1.01 * u * (std::fabs(s) + std::fabs(xr)) + (world + 2) * e24 * (mag + std::fabs(c.x0[i]) + std::fabs(s)) + 2 * tiny;
      const double xbr = (double)x[i] * inv * c.w[j];
      const double bxb = (u + 1e-5) * std::fabs(xbr) + tiny;
      const bool ok = std::fabs(x[i] - xr) <= bx && std::fabs(xb[i] - xbr) <= bxb;
      if (!ok) {
        if (bad < 5)
          os << " [" << r << ", " << j << "] x " << x[i] << " vs " << xr << " (bound " << bx << "), xb " << xb[i]
             << " vs " << xbr << " (bound " << bxb << ")";
        ++bad;
      }
    }
  }
  return bad == 0 ? "" : std::to_string(bad) + " elements wrong:" + os.str();
}

// Uploads in[r] into t[r] on every rank, all-reduces, and checks each rank's result against the fp32
// rank-order sum (check_sum) and against rank 0's bits.
void expect_all_reduced(Ranks& ranks, DType dt, const std::vector<std::vector<float>>& in, std::vector<Tensor>& t) {
  const int world = ranks.world();
  std::vector<std::vector<uint8_t>> out(world);
  ASSERT_TRUE(all_ranks_ok(ranks.run([&](int r) -> std::string {
    cudaStream_t s = ranks.stream(r);
    TRY_CUDA(upload(t[r], encode(dt, in[r]), s));
    TRY(ranks.comm(r)->all_reduce_sum(t[r], s));
    TRY(ranks.comm(r)->wait(s));
    TRY_CUDA(download(t[r], &out[r], s));
    return "";
  })));
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(check_sum(dt, in, out[r]), "") << "rank " << r;
    EXPECT_TRUE(out[r] == out[0]) << "rank " << r << " differs from rank 0";
  }
}

// ---------------------------------------------------------------------------------------------------
// The tests.

class PeerComm : public ::testing::TestWithParam<Layout> {
 protected:
  // The group of this layout with `capacity` bytes a slot, or a skip.
  std::unique_ptr<PeerCommGroup> make_group(size_t capacity) {
    std::string why;
    const std::vector<int> devs = devices_of(GetParam(), &why);
    if (devs.empty()) {
      skip_ = why;
      return nullptr;
    }
    std::unique_ptr<PeerCommGroup> g;
    const Status s = PeerCommGroup::create(devs, capacity, &g);
    EXPECT_TRUE(s.ok()) << s.message();
    return g;
  }
  std::string skip_;
};

#define MAKE_GROUP_OR_SKIP(g, capacity)          \
  auto g = make_group(capacity);                 \
  if (!skip_.empty()) GTEST_SKIP() << skip_;     \
  ASSERT_NE(g, nullptr)

constexpr size_t kSmallCapacity = 64 << 10;  // over-capacity messages stay small
constexpr size_t kDecodeCapacity = 1 << 20;  // what an engine would use for decode

// (a) Random data, every dtype, sizes 1, 7, 4096, 8192 and twice the capacity plus 5 (several rounds),
// against the float64 sum and the fp32 rank-order emulation, bitwise equal across ranks.
TEST_P(PeerComm, AllReduce) {
  MAKE_GROUP_OR_SKIP(g, kSmallCapacity);
  Ranks ranks(g.get());
  const int world = ranks.world();
  for (DType dt : kDtypes) {
    const int64_t big = (int64_t)(g->capacity_bytes() / esize(dt)) * 2 + 5;
    for (int64_t n : {int64_t(1), int64_t(7), int64_t(4096), int64_t(8192), big}) {
      SCOPED_TRACE(std::string(base::dtype_name(dt)) + " n=" + std::to_string(n));
      std::vector<std::vector<float>> in(world);
      std::vector<Tensor> t(world);
      for (int r = 0; r < world; ++r) {
        in[r] = random_values(dt, n, 1000 * r + n);
        t[r] = device_tensor(dt, {n}, ranks.device(r));
      }
      ASSERT_NO_FATAL_FAILURE(expect_all_reduced(ranks, dt, in, t));
    }
  }
}

// Buffers that are not 16-byte aligned (the element-wise kernel), on some ranks only: the partition of
// a message must not depend on alignment, or the ranks would sum different elements.
TEST_P(PeerComm, AllReduceUnalignedBuffers) {
  MAKE_GROUP_OR_SKIP(g, kSmallCapacity);
  Ranks ranks(g.get());
  const int world = ranks.world();
  for (DType dt : kDtypes) {
    for (int64_t n : {int64_t(7), int64_t(4099), (int64_t)(g->capacity_bytes() / esize(dt)) + 3}) {
      SCOPED_TRACE(std::string(base::dtype_name(dt)) + " n=" + std::to_string(n));
      std::vector<std::vector<float>> in(world);
      std::vector<Tensor> t(world);
      for (int r = 0; r < world; ++r) {
        in[r] = random_values(dt, n, 77 + r);
        t[r] = device_view(dt, n, ranks.device(r), r % 2);  // odd ranks unaligned
      }
      ASSERT_NO_FATAL_FAILURE(expect_all_reduced(ranks, dt, in, t));
    }
  }
}

// Prefill sizes: 128 and 512 tokens x 8192 (2 MB and 8 MB in bf16, 16 MB in fp32), larger than the 1 MB
// capacity: several rounds inside one kernel.
TEST_P(PeerComm, AllReducePrefillSizes) {
  MAKE_GROUP_OR_SKIP(g, kDecodeCapacity);
  Ranks ranks(g.get());
  const int world = ranks.world();
  for (DType dt : {DType::kBf16, DType::kFp32}) {
    for (int64_t tokens : {int64_t(128), int64_t(512)}) {
      const int64_t n = tokens * 8192;
      SCOPED_TRACE(std::string(base::dtype_name(dt)) + " [" + std::to_string(tokens) + ", 8192]");
      std::vector<std::vector<float>> in(world);
      std::vector<Tensor> t(world);
      for (int r = 0; r < world; ++r) {
        in[r] = random_values(dt, n, 5 + r);
        t[r] = device_tensor(dt, {tokens, 8192}, ranks.device(r));
      }
      ASSERT_NO_FATAL_FAILURE(expect_all_reduced(ranks, dt, in, t));
    }
  }
}

// (b) 100 all-reduces queued back to back with no host synchronisation in between, on 100 buffers.
// Sizes and dtypes vary, so the channels' counters and parities advance unevenly.
TEST_P(PeerComm, BackToBack100) {
  MAKE_GROUP_OR_SKIP(g, kSmallCapacity);
  Ranks ranks(g.get());
  const int world = ranks.world();
  constexpr int kCalls = 100;
  struct Call {
    DType dt;
    int64_t n;
    std::vector<std::vector<float>> in;  // [world][n]
    std::vector<Tensor> t;               // [world]
  };
  std::vector<Call> calls(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    Call& c = calls[i];
    c.dt = kDtypes[i % 3];
    const int64_t sizes[] = {1, 7, 4096, 8192, (int64_t)(g->capacity_bytes() / esize(c.dt)) + 100};
    c.n = sizes[(i / 3) % 5];
    for (int r = 0; r < world; ++r) {
      c.in.push_back(random_values(c.dt, c.n, 31 * i + r));
      c.t.push_back(device_tensor(c.dt, {c.n}, ranks.device(r)));
    }
  }
  std::vector<std::vector<std::vector<uint8_t>>> out(world, std::vector<std::vector<uint8_t>>(kCalls));
  ASSERT_TRUE(all_ranks_ok(ranks.run([&](int r) -> std::string {
    cudaStream_t s = ranks.stream(r);
    for (Call& c : calls) TRY_CUDA(upload(c.t[r], encode(c.dt, c.in[r]), s));
    for (Call& c : calls) TRY(ranks.comm(r)->all_reduce_sum(c.t[r], s));
    TRY(ranks.comm(r)->wait(s));
    for (int i = 0; i < kCalls; ++i) TRY_CUDA(download(calls[i].t[r], &out[r][i], s));
    return "";
  })));
  for (int i = 0; i < kCalls; ++i)
    for (int r = 0; r < world; ++r) {
      EXPECT_EQ(check_sum(calls[i].dt, calls[i].in, out[r][i]), "") << "call " << i << " rank " << r;
      EXPECT_TRUE(out[r][i] == out[0][i]) << "call " << i << ": rank " << r << " differs from rank 0";
    }
}

// (b) Inside a CUDA graph replayed 50 times: copy fresh inputs in, all-reduce a decode vector, then the
// fused all-reduce + add_rmsnorm of a decode row. New inputs are uploaded before every replay, so a
// replay that computed nothing (or reused a stale parity) cannot pass.
TEST_P(PeerComm, GraphReplay50) {
  MAKE_GROUP_OR_SKIP(g, kDecodeCapacity);
  Ranks ranks(g.get());
  const int world = ranks.world();
  constexpr int kReplays = 50;
  constexpr int64_t kN = 4096, kDim = 4096;
  const float eps = 1e-5f;
  for (DType dt : kDtypes) {
    SCOPED_TRACE(base::dtype_name(dt));
    // Per rank: src/work: dt [kN]; p0/p: dt [1, kDim] (partial); x0/x: dt [1, kDim] (residual);
    // w: fp32 [kDim]; xb: dt [1, kDim].
    std::vector<Tensor> src(world), work(world), p0(world), p(world), x0(world), x(world), w(world), xb(world);
    for (int r = 0; r < world; ++r) {
      const int d = ranks.device(r);
      src[r] = device_tensor(dt, {kN}, d);
      work[r] = device_tensor(dt, {kN}, d);
      p0[r] = device_tensor(dt, {1, kDim}, d);
      p[r] = device_tensor(dt, {1, kDim}, d);
      x0[r] = device_tensor(dt, {1, kDim}, d);
      x[r] = device_tensor(dt, {1, kDim}, d);
      w[r] = device_tensor(DType::kFp32, {kDim}, d);
      xb[r] = device_tensor(dt, {1, kDim}, d);
    }
    // Inputs of every replay: flat[k][r], norm[k].
    std::vector<std::vector<std::vector<float>>> flat(kReplays);
    std::vector<NormCase> norm;
    for (int k = 0; k < kReplays; ++k) {
      for (int r = 0; r < world; ++r) flat[k].push_back(random_values(dt, kN, 9000 + 10 * k + r));
      norm.push_back(make_norm_case(dt, world, 1, kDim, 50000 + 1000 * k));
      norm[k].w = norm[0].w;  // the weight is part of the model: uploaded once
    }
    // Results: [rank][replay].
    std::vector<std::vector<std::vector<uint8_t>>> got_flat(world, std::vector<std::vector<uint8_t>>(kReplays)),
        got_x = got_flat, got_xb = got_flat;
    ASSERT_TRUE(all_ranks_ok(ranks.run([&](int r) -> std::string {
      cudaStream_t s = ranks.stream(r);
      Communicator* c = ranks.comm(r);
      TRY_CUDA(upload(w[r], encode(DType::kFp32, norm[0].w), s));
      base::CudaGraph graph;
      TRY(graph.capture(s, [&]() -> Status {
        CUDA_CHECK(cudaMemcpyAsync(work[r].data(), src[r].data(), src[r].nbytes(), cudaMemcpyDeviceToDevice, s));
        KP_RETURN_IF_ERROR(c->all_reduce_sum(work[r], s));
        CUDA_CHECK(cudaMemcpyAsync(p[r].data(), p0[r].data(), p0[r].nbytes(), cudaMemcpyDeviceToDevice, s));
        CUDA_CHECK(cudaMemcpyAsync(x[r].data(), x0[r].data(), x0[r].nbytes(), cudaMemcpyDeviceToDevice, s));
        return c->all_reduce_add_rmsnorm(p[r], x[r], w[r], eps, xb[r], s);
      }));
      for (int k = 0; k < kReplays; ++k) {
        TRY_CUDA(upload(src[r], encode(dt, flat[k][r]), s));
        TRY_CUDA(upload(p0[r], encode(dt, norm[k].partial[r]), s));
        TRY_CUDA(upload(x0[r], encode(dt, norm[k].x0), s));
        TRY(graph.launch(s));
        TRY(c->wait(s));
        TRY_CUDA(download(work[r], &got_flat[r][k], s));
        TRY_CUDA(download(x[r], &got_x[r][k], s));
        TRY_CUDA(download(xb[r], &got_xb[r][k], s));
      }
      return "";
    })));
    int failures = 0;
    for (int k = 0; k < kReplays && failures < 5; ++k)
      for (int r = 0; r < world; ++r) {
        const std::string e1 = check_sum(dt, flat[k], got_flat[r][k]);
        const std::string e2 = check_norm(dt, norm[k], eps, got_x[r][k], got_xb[r][k]);
        const bool same = got_flat[r][k] == got_flat[0][k] && got_x[r][k] == got_x[0][k] && got_xb[r][k] == got_xb[0][k];
        EXPECT_EQ(e1, "") << "replay " << k << " rank " << r << " (all-reduce)";
        EXPECT_EQ(e2, "") << "replay " << k << " rank " << r << " (all-reduce + add_rmsnorm)";
        EXPECT_TRUE(same) << "replay " << k << ": rank " << r << " differs from rank 0";
        failures += !e1.empty() || !e2.empty() || !same;
      }
  }
}

// (c) The fused all-reduce + add_rmsnorm against the float64 reference, bitwise across ranks, and
// bitwise equal to the unfused default (all_reduce_sum + kernel::add_rmsnorm). Decode rows (1 x 4096,
// 1 x 8192) and an odd dim (element-wise kernel) in a decode-sized group. In a small group: 100 short
// rows (several rounds), and rows too long for a segment (the default path is taken).
TEST_P(PeerComm, AllReduceAddRmsnorm) {
  struct Shape {
    size_t capacity;
    int64_t rows, dim;
  };
  const Shape shapes[] = {{kDecodeCapacity, 1, 4096}, {kDecodeCapacity, 1, 8192}, {kDecodeCapacity, 3, 999},
                          {kSmallCapacity, 100, 256},  {kSmallCapacity, 100, 512}, {kSmallCapacity, 3, 8192}};
  const float eps = 1e-5f;
  for (const Shape& sh : shapes) {
    MAKE_GROUP_OR_SKIP(g, sh.capacity);
    Ranks ranks(g.get());
    const int world = ranks.world();
    for (DType dt : kDtypes) {
      const bool fused = sh.dim * esize(dt) <= g->max_fused_row_bytes();
      SCOPED_TRACE(std::string(base::dtype_name(dt)) + " [" + std::to_string(sh.rows) + ", " + std::to_string(sh.dim) +
                   "] capacity " + std::to_string(sh.capacity) + (fused ? " (fused)" : " (default path)"));
      const NormCase c = make_norm_case(dt, world, sh.rows, sh.dim, 300 + sh.dim + sh.rows);
      // Per rank: p, p2: dt [rows, dim] (partial); x, x2: dt [rows, dim] (residual); w: fp32 [dim];
      // xb, xb2: dt [rows, dim]. The "2" set goes through the default two-kernel path.
      std::vector<Tensor> p(world), x(world), w(world), xb(world), p2(world), x2(world), xb2(world);
      for (int r = 0; r < world; ++r) {
        const int d = ranks.device(r);
        for (Tensor* t : {&p[r], &x[r], &xb[r], &p2[r], &x2[r], &xb2[r]}) *t = device_tensor(dt, {sh.rows, sh.dim}, d);
        w[r] = device_tensor(DType::kFp32, {sh.dim}, d);
      }
      std::vector<std::vector<uint8_t>> gx(world), gxb(world), gx2(world), gxb2(world);
      ASSERT_TRUE(all_ranks_ok(ranks.run([&](int r) -> std::string {
        cudaStream_t s = ranks.stream(r);
        Communicator* cm = ranks.comm(r);
        TRY_CUDA(upload(p[r], encode(dt, c.partial[r]), s));
        TRY_CUDA(upload(p2[r], encode(dt, c.partial[r]), s));
        TRY_CUDA(upload(x[r], encode(dt, c.x0), s));
        TRY_CUDA(upload(x2[r], encode(dt, c.x0), s));
        TRY_CUDA(upload(w[r], encode(DType::kFp32, c.w), s));
        TRY(cm->all_reduce_add_rmsnorm(p[r], x[r], w[r], eps, xb[r], s));
        TRY(cm->Communicator::all_reduce_add_rmsnorm(p2[r], x2[r], w[r], eps, xb2[r], s));
        TRY(cm->wait(s));
        TRY_CUDA(download(x[r], &gx[r], s));
        TRY_CUDA(download(xb[r], &gxb[r], s));
        TRY_CUDA(download(x2[r], &gx2[r], s));
        TRY_CUDA(download(xb2[r], &gxb2[r], s));
        return "";
      })));
      for (int r = 0; r < world; ++r) {
        EXPECT_EQ(check_norm(dt, c, eps, gx[r], gxb[r]), "") << "rank " << r;
        EXPECT_TRUE(gx[r] == gx[0] && gxb[r] == gxb[0]) << "rank " << r << " differs from rank 0";
        EXPECT_TRUE(gx[r] == gx2[r]) << "rank " << r << ": x differs from all_reduce_sum + add_rmsnorm";
        EXPECT_TRUE(gxb[r] == gxb2[r]) << "rank " << r << ": xb differs from all_reduce_sum + add_rmsnorm";
      }
    }
  }
}

// (d) all_gather: each rank's [1, m] into [world, m], exact bytes. Byte counts that are multiples of 16,
// of 2 only (fp16 x 7), odd (int8 x 3), a logits slice (fp32 128256 / world), and more than the capacity.
TEST_P(PeerComm, AllGather) {
  MAKE_GROUP_OR_SKIP(g, kDecodeCapacity);
  Ranks ranks(g.get());
  const int world = ranks.world();
  struct Case {
    DType dt;
    int64_t m;
  };
  const Case cases[] = {{DType::kFp32, 1},
                        {DType::kFp16, 7},
                        {DType::kInt8, 3},
                        {DType::kBf16, 4096},
                        {DType::kFp32, 128256 / world},
                        {DType::kFp32, (int64_t)(g->capacity_bytes() / 4) * 3 + 1}};
  for (const Case& cs : cases) {
    SCOPED_TRACE(std::string(base::dtype_name(cs.dt)) + " m=" + std::to_string(cs.m));
    const size_t bytes = (size_t)cs.m * esize(cs.dt);
    std::vector<std::vector<uint8_t>> in(world);
    std::vector<Tensor> tin(world), tout(world);
    std::mt19937 rng(cs.m);
    for (int r = 0; r < world; ++r) {
      in[r].resize(bytes);
      for (auto& b : in[r]) b = (uint8_t)rng();
      tin[r] = device_tensor(cs.dt, {1, cs.m}, ranks.device(r));
      tout[r] = device_tensor(cs.dt, {world, cs.m}, ranks.device(r));
    }
    std::vector<std::vector<uint8_t>> out(world);
    ASSERT_TRUE(all_ranks_ok(ranks.run([&](int r) -> std::string {
      cudaStream_t s = ranks.stream(r);
      TRY_CUDA(upload(tin[r], in[r], s));
      TRY_CUDA(cudaMemsetAsync(tout[r].data(), 0xff, tout[r].nbytes(), s));
      TRY(ranks.comm(r)->all_gather(tin[r], tout[r], s));
      TRY(ranks.comm(r)->wait(s));
      TRY_CUDA(download(tout[r], &out[r], s));
      return "";
    })));
    std::vector<uint8_t> want;
    for (int r = 0; r < world; ++r) want.insert(want.end(), in[r].begin(), in[r].end());
    for (int r = 0; r < world; ++r) EXPECT_TRUE(out[r] == want) << "rank " << r;
  }
}

// (e) One rank skips its all-reduce on purpose. With a 1 s device timeout, the waiting rank's wait()
// returns the one-line error within 1 s + 2 s (a watchdog thread fails the test, instead of hanging it,
// when it does not). Afterwards the group is aborted on every rank, and later calls fail at once.
TEST_P(PeerComm, HangTimesOut) {
  MAKE_GROUP_OR_SKIP(g, kDecodeCapacity);
  Ranks ranks(g.get());
  g->set_timeout_ms(1000);
  const int world = ranks.world();
  std::vector<Tensor> t(world);
  for (int r = 0; r < world; ++r) t[r] = device_tensor(DType::kFp32, {4096}, ranks.device(r));
  // Every rank but the last calls; the last never does.
  using Clock = std::chrono::steady_clock;
  std::vector<Status> st(world);
  std::vector<double> seconds(world, 0);
  auto done = std::async(std::launch::async, [&] {
    std::vector<std::thread> threads;
    for (int r = 0; r < world - 1; ++r)
      threads.emplace_back([&, r] {
        cudaSetDevice(ranks.device(r));
        const auto t0 = Clock::now();
        st[r] = ranks.comm(r)->all_reduce_sum(t[r], ranks.stream(r));
        if (st[r].ok()) st[r] = ranks.comm(r)->wait(ranks.stream(r));
        seconds[r] = std::chrono::duration<double>(Clock::now() - t0).count();
      });
    for (auto& th : threads) th.join();
  });
  if (done.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    std::fprintf(stderr, "HangTimesOut: wait() did not return within 10 s: the peer all-reduce hangs\n");
    std::abort();  // a hang must fail the test, not stall it
  }
  const std::regex line("rank [0-9]: peer all-reduce: rank [0-9] did not arrive within 1 s");
  for (int r = 0; r < world - 1; ++r) {
    EXPECT_FALSE(st[r].ok()) << "rank " << r << ": the all-reduce succeeded without rank " << world - 1;
    EXPECT_EQ(st[r].code(), base::StatusCode::kCommError) << st[r].message();
    EXPECT_TRUE(std::regex_search(st[r].message(), line)) << "rank " << r << ": " << st[r].message();
    EXPECT_LE(seconds[r], 3.0) << "rank " << r;
    EXPECT_GE(seconds[r], 0.9) << "rank " << r << " gave up before the 1 s timeout: " << st[r].message();
  }
  // The group is aborted everywhere; the skipping rank's calls fail at once with the same line.
  for (int r = 0; r < world; ++r) EXPECT_TRUE(ranks.comm(r)->aborted()) << "rank " << r;
  const int last = world - 1;
  ASSERT_EQ(cudaSetDevice(ranks.device(last)), cudaSuccess);
  const auto t0 = Clock::now();
  const Status late = ranks.comm(last)->all_reduce_sum(t[last], ranks.stream(last));
  EXPECT_FALSE(late.ok());
  EXPECT_TRUE(std::regex_search(late.message(), line)) << late.message();
  EXPECT_FALSE(ranks.comm(last)->wait(ranks.stream(last)).ok());
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 0.5);
}

// abort() releases kernels that are spinning for a peer at once, long before the device timeout.
TEST_P(PeerComm, AbortReleasesSpinningKernels) {
  MAKE_GROUP_OR_SKIP(g, kDecodeCapacity);
  Ranks ranks(g.get());
  g->set_timeout_ms(30000);
  const int world = ranks.world();
  std::vector<Tensor> t(world);
  for (int r = 0; r < world; ++r) t[r] = device_tensor(DType::kBf16, {8192}, ranks.device(r));
  using Clock = std::chrono::steady_clock;
  std::vector<Status> st(world);
  const auto t0 = Clock::now();
  auto done = std::async(std::launch::async, [&] {
    std::vector<std::thread> threads;
    for (int r = 0; r < world - 1; ++r)
      threads.emplace_back([&, r] {
        cudaSetDevice(ranks.device(r));
        st[r] = ranks.comm(r)->all_reduce_sum(t[r], ranks.stream(r));
        if (st[r].ok()) st[r] = ranks.comm(r)->wait(ranks.stream(r));
      });
    for (auto& th : threads) th.join();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  g->abort("test: abort while rank " + std::to_string(world - 1) + " is missing");
  if (done.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    std::fprintf(stderr, "AbortReleasesSpinningKernels: wait() did not return within 10 s of abort()\n");
    std::abort();
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  for (int r = 0; r < world - 1; ++r) {
    EXPECT_FALSE(st[r].ok());
    EXPECT_NE(st[r].message().find("test: abort"), std::string::npos) << st[r].message();
  }
  EXPECT_LT(s, 5.0) << "the spinning kernels did not see the abort";
  // The kernels exit too (wait() returns on the abort flag without waiting for them): each stream is
  // idle within 2 s, not after the 30 s device timeout.
  for (int r = 0; r < world - 1; ++r) {
    ASSERT_EQ(cudaSetDevice(ranks.device(r)), cudaSuccess);
    const auto q0 = Clock::now();
    cudaError_t q = cudaStreamQuery(ranks.stream(r));
    while (q == cudaErrorNotReady && Clock::now() - q0 < std::chrono::seconds(2)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      q = cudaStreamQuery(ranks.stream(r));
    }
    EXPECT_EQ(q, cudaSuccess) << "rank " << r << ": " << cudaGetErrorString(q);
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, PeerComm,
                         ::testing::Values(Layout::kSameGpu2, Layout::kSameGpu4, Layout::kDistinct), layout_name);

TEST(PeerCommGroup, RefusesBadArguments) {
  std::unique_ptr<PeerCommGroup> g;
  EXPECT_FALSE(PeerCommGroup::create({}, 1 << 20, &g).ok());
  EXPECT_FALSE(PeerCommGroup::create({0, 0, 0, 0, 0, 0, 0, 0, 0}, 1 << 20, &g).ok());  // 9 ranks
  EXPECT_FALSE(PeerCommGroup::create({0, 999}, 1 << 20, &g).ok());                    // no such GPU
  EXPECT_FALSE(PeerCommGroup::supported({0, 999}));
  EXPECT_EQ(g, nullptr);
  KP_SKIP_WITHOUT_GPU();
  EXPECT_FALSE(PeerCommGroup::create({0, 0}, 1024, &g).ok());  // capacity below 16 KB
  ASSERT_OK(PeerCommGroup::create({0, 0}, 1 << 20, &g));
  Ranks ranks(g.get());
  Tensor host;
  ASSERT_OK(Tensor::create(DType::kFp32, {16}, base::CPUAllocator::get(), &host));
  EXPECT_EQ(g->rank(0)->all_reduce_sum(host, ranks.stream(0)).code(), base::StatusCode::kInvalidArgument);
  Tensor i32 = device_tensor(DType::kInt32, {16}, 0);
  EXPECT_FALSE(g->rank(0)->all_reduce_sum(i32, ranks.stream(0)).ok());
  EXPECT_FALSE(g->aborted());  // argument errors are reported before anything is launched
}

// ---------------------------------------------------------------------------------------------------
// Microbenchmark (see the file comment).

// Microseconds per call: each rank captures kCalls back-to-back calls of call(r, stream) into one graph,
// replays it once to warm up, then kReps times (the ranks start each replay together). Reports the
// slowest rank's median of graph time / kCalls.
double graph_us_per_call(const std::vector<int>& devices, const std::vector<Communicator*>& comms,
                         const std::function<Status(int, cudaStream_t)>& call) {
  constexpr int kCalls = 100, kReps = 20;
  const int world = (int)devices.size();
  comm::HostBarrier barrier(world);
  std::vector<double> median(world, -1);
  std::vector<std::string> err(world);
  std::vector<base::CudaStream> streams(world);
  std::vector<base::CudaEvent> a(world), b(world);
  for (int r = 0; r < world; ++r) {
    EXPECT_TRUE(streams[r].create(devices[r]).ok());
    EXPECT_TRUE(a[r].create(devices[r], true).ok());
    EXPECT_TRUE(b[r].create(devices[r], true).ok());
  }
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      err[r] = [&]() -> std::string {
        TRY_CUDA(cudaSetDevice(devices[r]));
        cudaStream_t s = streams[r].get();
        base::CudaGraph graph;
        TRY(graph.capture(s, [&]() -> Status {
          for (int i = 0; i < kCalls; ++i) KP_RETURN_IF_ERROR(call(r, s));
          return Status::Ok();
        }));
        TRY(graph.launch(s));
        TRY(comms[r]->wait(s));
        std::vector<double> us;
        for (int k = 0; k < kReps; ++k) {
          TRY(barrier.wait(r));
          TRY_CUDA(cudaEventRecord(a[r].get(), s));
          TRY(graph.launch(s));
          TRY_CUDA(cudaEventRecord(b[r].get(), s));
          TRY(comms[r]->wait(s));
          float ms = 0;
          TRY_CUDA(cudaEventElapsedTime(&ms, a[r].get(), b[r].get()));
          us.push_back(ms * 1000.0 / kCalls);
        }
        std::sort(us.begin(), us.end());
        median[r] = us[us.size() / 2];
        return "";
      }();
      if (!err[r].empty()) {
        barrier.abort(err[r]);
        comms[r]->abort(err[r]);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_TRUE(all_ranks_ok(err));
  return *std::max_element(median.begin(), median.end());
}

TEST(PeerCommBench, DISABLED_GraphLatency) {
  KP_SKIP_WITHOUT_GPU();
  setenv("NCCL_NVLS_ENABLE", "0", 1);  // never NVLink multicast (it can take the shared host down)
  const int gpus = testutil::gpu_count();
  std::vector<int> devices;
  if (gpus >= 2) {
    devices = {0, 1};
  } else {
    devices = {0, 0};
    std::printf("one GPU: peer path with 2 ranks on GPU 0 only (not representative; NCCL needs 2 GPUs)\n");
  }
  const int world = (int)devices.size();
  const bool nccl = gpus >= 2;
  std::unique_ptr<PeerCommGroup> g;
  ASSERT_OK(PeerCommGroup::create(devices, 2 << 20, &g));
  std::printf("peer group: %d ranks on GPUs", world);
  for (int d : devices) std::printf(" %d", d);
  std::printf(", %d channels, capacity %zu bytes\n", g->channels(), g->capacity_bytes());
  if (nccl) ASSERT_OK(comm::NcclHandler::instance().init(world));
  std::vector<Communicator*> peer_comms, nccl_comms;
  for (int r = 0; r < world; ++r) {
    peer_comms.push_back(g->rank(r));
    if (nccl) nccl_comms.push_back(comm::NcclHandler::instance().communicator(r));
  }
  const DType dt = DType::kBf16;
  std::printf("%-44s %12s %12s\n", "bf16, graph of 100 calls, us per call", "peer", nccl ? "nccl" : "");
  for (int64_t dim : {int64_t(4096), int64_t(8192)}) {
    // Per rank: v: bf16 [1, dim] (zeros: the sums stay finite); x: bf16 [1, dim]; w: fp32 [dim]; xb: bf16 [1, dim].
    std::vector<Tensor> v(world), x(world), w(world), xb(world);
    for (int r = 0; r < world; ++r) {
      v[r] = device_tensor(dt, {1, dim}, devices[r]);
      x[r] = device_tensor(dt, {1, dim}, devices[r]);
      w[r] = device_tensor(DType::kFp32, {dim}, devices[r]);
      xb[r] = device_tensor(dt, {1, dim}, devices[r]);
      for (Tensor* t : {&v[r], &x[r], &w[r], &xb[r]}) ASSERT_EQ(cudaMemset(t->data(), 0, t->nbytes()), cudaSuccess);
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const auto reduce = [&](const std::vector<Communicator*>& c) {
      return graph_us_per_call(devices, c, [&](int r, cudaStream_t s) { return c[r]->all_reduce_sum(v[r], s); });
    };
    const auto fused = [&](const std::vector<Communicator*>& c) {
      return graph_us_per_call(devices, c, [&](int r, cudaStream_t s) {
        return c[r]->all_reduce_add_rmsnorm(v[r], x[r], w[r], 1e-5f, xb[r], s);
      });
    };
    char name[96];
    std::snprintf(name, sizeof name, "all-reduce %lld KB", (long long)(dim * 2 / 1024));
    const double peer_us = reduce(peer_comms);
    std::printf("%-44s %12.2f", name, peer_us);
    if (nccl) std::printf(" %12.2f", reduce(nccl_comms));
    std::printf("\n");
    std::snprintf(name, sizeof name, "all-reduce + add_rmsnorm [1, %lld]", (long long)dim);
    std::printf("%-44s %12.2f", name, fused(peer_comms));
    if (nccl) std::printf(" %12.2f", fused(nccl_comms));  // NCCL + kernel::add_rmsnorm (the default)
    std::printf("\n");
    // The peer all-reduce with 1, 2, 4 and 8 blocks (set_block_bytes).
    for (int blocks : {1, 2, 4, 8}) {
      g->set_block_bytes((size_t)dim * 2 / blocks);
      std::snprintf(name, sizeof name, "  peer all-reduce %lld KB, %d block(s)", (long long)(dim * 2 / 1024), blocks);
      std::printf("%-44s %12.2f\n", name, reduce(peer_comms));
    }
    g->set_block_bytes(PeerCommGroup::kDefaultBlockBytes);
    std::fflush(stdout);
  }
  if (nccl) comm::NcclHandler::instance().shutdown();
}

}  // namespace
