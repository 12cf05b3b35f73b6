// The CPU kernels' one thread pool: parallel_for over chunks that the threads claim from a shared
// counter, the calling thread included.
//
// Why not OpenMP's `parallel for`: its join waits for every thread of the team, so when the machine is
// busy (other processes on the same 2 cores) and one of our threads is off the CPU, each of the ~60
// parallel regions of a decode step waits a scheduler time slice for it: measured 130 tok/s instead of
// 750 single-threaded on storyteller. Here a thread that is not running claims nothing, the others
// (the caller at least) take its chunks, and the caller waits only for chunks already started. On an
// idle machine both reach the same speed.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

namespace kernel::cpu {

// A non-owning reference to a callable void(int64_t begin, int64_t end): no allocation per call.
class RangeFn {
 public:
  template <class F>
  RangeFn(const F& f) : obj_(&f), call_(&trampoline<F>) {}  // NOLINT: implicit on purpose
  void operator()(int64_t begin, int64_t end) const { call_(obj_, begin, end); }

 private:
  template <class F>
  static void trampoline(const void* obj, int64_t begin, int64_t end) {
    (*static_cast<const F*>(obj))(begin, end);
  }
  const void* obj_;
  void (*call_)(const void*, int64_t, int64_t);
};

// Runs fn(begin, end) over [0, n) cut into chunks of `grain` items (the last may be shorter), on at
// most `threads` threads counting the caller; returns when every chunk is done. threads <= 1 or a
// single chunk runs inline. Each chunk runs on one thread, start to end.
void parallel_for(int64_t n, int64_t grain, int threads, RangeFn fn);

// The same with the chunk size chosen for `threads`: a few chunks per thread, so that a thread that
// gets the CPU late leaves its share to the others.
inline void parallel_for(int64_t n, int threads, RangeFn fn) {
  const int64_t chunks = threads <= 1 ? 1 : (int64_t)threads * 4;
  const int64_t grain = n <= chunks ? 1 : (n + chunks - 1) / chunks;
  parallel_for(n, grain, threads, fn);
}

}  // namespace kernel::cpu
