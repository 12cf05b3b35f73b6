// The thread pool behind parallel_for (see thread_pool.h for why it is not OpenMP).
//
// One job at a time per pool. A job is published as one 64-bit atomic word
//   state = generation (32 bits) | chunk count (16 bits) | next chunk to claim (16 bits)
// so that claiming a chunk is one compare-and-swap that also proves the chunk belongs to the job the
// thread read: a worker that wakes late, after the caller has moved on, finds another generation
// and claims nothing. The caller publishes the next job only when `done` counts every chunk, so the
// job's fields are stable while any chunk of it runs.
//
// Workers spin briefly between jobs (the regions of one decode step come microseconds apart), then
// sleep on a condition variable.
#include "thread_pool.h"

#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace kernel::cpu {
namespace {

constexpr int64_t kMaxChunks = 0xffff;
// How long an idle worker spins before it sleeps, and how long the caller spins before it yields.
constexpr auto kWorkerSpin = std::chrono::microseconds(300);
constexpr int kCallerSpinsBeforeYield = 2000;

uint64_t pack(uint64_t gen, uint64_t chunks, uint64_t next) { return gen << 32 | chunks << 16 | next; }
uint32_t gen_of(uint64_t s) { return (uint32_t)(s >> 32); }
int64_t chunks_of(uint64_t s) { return (int64_t)((s >> 16) & 0xffff); }
int64_t next_of(uint64_t s) { return (int64_t)(s & 0xffff); }

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  void run(int64_t n, int64_t grain, int threads, RangeFn fn) {
    grow(threads - 1);
    const int64_t chunks = (n + grain - 1) / grain;
    n_ = n;
    grain_ = grain;
    fn_ = &fn;
    helpers_.store(threads - 1, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    if (++gen_ == 0) ++gen_;  // 0 means "no job yet" to the workers
    const uint32_t gen = gen_;
    state_.store(pack(gen, (uint64_t)chunks, 0), std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    }
    work(gen);
    for (int spins = 0; done_.load(std::memory_order_acquire) < chunks; ++spins) {
      if (spins < kCallerSpinsBeforeYield) _mm_pause();
      else sched_yield();  // a worker holding a chunk is off the CPU: let it run
    }
  }

 private:
  // Claims and runs chunks of generation `gen` until none is left.
  void work(uint32_t gen) {
    uint64_t s = state_.load(std::memory_order_acquire);
    while (gen_of(s) == gen && next_of(s) < chunks_of(s)) {
      if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      const int64_t begin = next_of(s) * grain_;
      (*fn_)(begin, std::min(n_, begin + grain_));
      done_.fetch_add(1, std::memory_order_release);
      s = state_.load(std::memory_order_acquire);
    }
  }

  void worker(int index) {
    uint32_t seen = 0;
    while (true) {
      uint32_t gen = wait_for_job(seen);
      if (gen == 0) return;  // quit
      seen = gen;
      if (index < helpers_.load(std::memory_order_relaxed)) work(gen);
    }
  }

  // Returns the generation of a job newer than `seen` (0 when the pool is closing).
  uint32_t wait_for_job(uint32_t seen) {
    const auto until = std::chrono::steady_clock::now() + kWorkerSpin;
    for (int i = 0;; ++i) {
      const uint32_t g = gen_of(state_.load(std::memory_order_acquire));
      if (g != seen) return g;
      if ((i & 63) == 0 && std::chrono::steady_clock::now() > until) break;
      _mm_pause();
    }
    std::unique_lock<std::mutex> lock(mu_);
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    cv_.wait(lock, [&] { return quit_ || gen_of(state_.load(std::memory_order_seq_cst)) != seen; });
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
    return quit_ ? 0 : gen_of(state_.load(std::memory_order_acquire));
  }

  void grow(int helpers) {
    while ((int)workers_.size() < helpers) {
      const int index = (int)workers_.size();
      workers_.emplace_back([this, index] { worker(index); });
    }
  }

  std::vector<std::thread> workers_;
  std::atomic<uint64_t> state_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> helpers_{0};  // workers with a lower index take part in the current job
  std::atomic<int> sleepers_{0};
  uint32_t gen_ = 0;             // the caller's generation counter (never 0 once a job is published)
  int64_t n_ = 0, grain_ = 1;
  const RangeFn* fn_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  bool quit_ = false;
};

}  // namespace

void parallel_for(int64_t n, int64_t grain, int threads, RangeFn fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if ((n + grain - 1) / grain > kMaxChunks) grain = (n + kMaxChunks - 1) / kMaxChunks;
  const int64_t chunks = (n + grain - 1) / grain;
  threads = (int)std::min<int64_t>(threads, chunks);
  if (threads <= 1) {
    fn(0, n);
    return;
  }
  // One pool per calling thread: tensor-parallel CPU ranks (one thread each) each get their own, so
  // their kernels never wait on one another's jobs.
  thread_local std::unique_ptr<Pool> pool = std::make_unique<Pool>();
  pool->run(n, grain, threads, fn);
}

}  // namespace kernel::cpu
