// The heap counter (heap_counter.h) sees every kind of allocation, on every thread, so that the
// "nothing allocates" tests built on it (test_model.cpp, test_cpu_kernels.cpp, test_gpu_model.cpp)
// could fail. Each allocation goes through a volatile function pointer or into a volatile sink, so
// the optimiser cannot remove it.
#include <gtest/gtest.h>
#include <malloc.h>
#include "kernels/cpu/thread_pool.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "heap_counter.h"

namespace {

using testutil::HeapCounter;

void* volatile g_sink;  // where allocations go so that they are not optimised away

// Allocations made by this thread while f runs. The exact counts below are taken per thread: other
// threads of the process (a BLAS library's workers starting up, say) may allocate at the same moment,
// and did under the sanitizer on a busy CI machine.
template <typename F> int64_t allocations_of(F&& f) {
  const int64_t before = testutil::heap_allocations_this_thread();
  f();
  return testutil::heap_allocations_this_thread() - before;
}

// Allocations made by any thread of the process while f runs.
template <typename F> int64_t allocations_anywhere_of(F&& f) {
  HeapCounter c;
  f();
  return c.count();
}

TEST(HeapCounter, IsActiveInThisBinary) { EXPECT_TRUE(testutil::heap_counter_works()); }

TEST(HeapCounter, SeesTheCFunctions) {
  void* (*volatile m)(size_t) = &std::malloc;
  void* (*volatile c)(size_t, size_t) = &std::calloc;
  void* (*volatile r)(void*, size_t) = &std::realloc;
  void* (*volatile a)(size_t, size_t) = &std::aligned_alloc;
  int (*volatile pm)(void**, size_t, size_t) = &posix_memalign;
  void* (*volatile ma)(size_t, size_t) = &memalign;
  void* p = nullptr;
  EXPECT_EQ(allocations_of([&] { p = m(40); }), 1);
  EXPECT_EQ(allocations_of([&] { p = r(p, 4000); }), 1);
  std::free(p);
  EXPECT_EQ(allocations_of([&] { p = c(10, 8); }), 1);
  std::free(p);
  EXPECT_EQ(allocations_of([&] { p = a(256, 1024); }), 1);
  std::free(p);
  EXPECT_EQ(allocations_of([&] { ASSERT_EQ(pm(&p, 64, 100), 0); }), 1);
  std::free(p);
  EXPECT_EQ(allocations_of([&] { p = ma(64, 100); }), 1);
  std::free(p);
  // Inside glibc: strdup calls malloc itself.
  char* (*volatile dup)(const char*) = &strdup;
  char* s = nullptr;
  EXPECT_EQ(allocations_of([&] { s = dup("a string"); }), 1);
  std::free(s);
}

struct alignas(128) Wide { char bytes[256]; };

TEST(HeapCounter, SeesOperatorNewAndTheStandardLibrary) {
  EXPECT_EQ(allocations_of([] { g_sink = new int(3); }), 1);
  delete static_cast<int*>(g_sink);
  EXPECT_EQ(allocations_of([] { g_sink = new double[17]; }), 1);
  delete[] static_cast<double*>(g_sink);
  EXPECT_EQ(allocations_of([] { g_sink = new Wide; }), 1);  // aligned operator new
  delete static_cast<Wide*>(g_sink);
  EXPECT_GE(allocations_of([] {
              std::vector<int64_t> v(3);
              g_sink = v.data();
            }), 1);
  EXPECT_GE(allocations_of([] {
              std::string str(100, 'x');  // beyond the small-string buffer
              g_sink = &str[0];
            }), 1);
  EXPECT_GE(allocations_of([] { g_sink = std::make_shared<int>(1).get(); }), 1);
}

TEST(HeapCounter, SeesOtherThreads) {
  std::thread t;  // created outside the window: only the thread's own allocations are counted below
  int64_t n = 0;
  {
    HeapCounter c;
    t = std::thread([] {
      for (int i = 0; i < 100; ++i) {
        g_sink = new int(i);
        delete static_cast<int*>(g_sink);
      }
    });
    t.join();
    n = c.count();
  }
  EXPECT_GE(n, 100);
  // The CPU kernels' pool threads as well (the pool is started before the window); chunks of one item,
  // so that both threads take part when they get the CPU.
  auto allocate_in_chunks = [](int64_t begin, int64_t) {
    int* volatile p = new int((int)begin);
    delete p;
  };
  kernel::cpu::parallel_for(2, 1, 2, [](int64_t, int64_t) {});
  const int64_t pooled = allocations_anywhere_of([&] { kernel::cpu::parallel_for(8, 1, 2, allocate_in_chunks); });
  EXPECT_GE(pooled, 8);
}

}  // namespace
