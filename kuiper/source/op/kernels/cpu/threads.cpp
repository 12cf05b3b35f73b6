// The CPU thread budget: one pool for the whole process (thread_pool.h), OpenBLAS single-threaded
// inside it.
#include <cblas.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

#include "cpu_kernels.h"

namespace kernel {
namespace {

std::atomic<int> g_threads{0};    // 0: not set yet (usable_cpu_cores() on first use)
thread_local int t_share = 0;     // this thread's share; 0: the process budget
std::once_flag g_blas_once;

// OpenBLAS (Debian's pthread build) starts its own pool when the library loads and, left alone, runs
// every call on all cores while our threads wait for the next job. One thread for BLAS: each of our
// threads calls it on its own block of rows instead.
void blas_single_threaded() {
  std::call_once(g_blas_once, [] { openblas_set_num_threads(1); });
}

}  // namespace

int usable_cpu_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return std::max(1, (int)std::thread::hardware_concurrency());
  return std::max(1, CPU_COUNT(&set));
}

void set_cpu_threads(int n) {
  blas_single_threaded();
  g_threads = n > 0 ? n : usable_cpu_cores();
}

int cpu_threads() {
  if (t_share > 0) return t_share;
  int n = g_threads.load();
  if (n == 0) {
    set_cpu_threads(0);
    n = g_threads.load();
  }
  return n;
}

void set_cpu_threads_this_thread(int n) { t_share = std::max(0, n); }

namespace cpu {

int threads_for(int64_t work) {
  blas_single_threaded();
  const int budget = cpu_threads();
  if (budget <= 1 || work < 2 * kWorkPerThread) return 1;
  return (int)std::min<int64_t>(budget, work / kWorkPerThread);
}

}  // namespace cpu
}  // namespace kernel
