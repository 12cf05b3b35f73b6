// Counts every heap allocation the process makes, on every thread: malloc, calloc, realloc,
// aligned_alloc, posix_memalign, memalign, valloc, and through them operator new (libstdc++'s new
// calls malloc), whoever calls them: the project, the C++ runtime, OpenMP, OpenBLAS, the CUDA runtime.
//
// Link the object library `kuiper_heap_counter` into a test executable to turn it on there:
//  - normal builds replace the malloc family of glibc in that executable (forwarding to glibc's
//    __libc_malloc & co.), so every call in the process goes through the counter;
//  - AddressSanitizer builds (tools/sanitize.sh), where ASan owns malloc, install ASan's own
//    allocation hook (__sanitizer_install_malloc_and_free_hooks) instead; it sees the same calls.
// Frees are not counted: the claim checked is "allocates nothing", and a free without an
// allocation is impossible.
#pragma once

#include <cstdint>
#include <functional>

namespace testutil {

// Allocations since the process started (all threads).
int64_t heap_allocations();

// Whether the counter sees allocations in this executable: makes one allocation the optimiser cannot
// remove and checks that it was counted. A test relying on the counter asserts this first, so a zero
// never comes from a hook that is not there.
bool heap_counter_works();

// Heap allocations made so far by the calling thread alone.
int64_t heap_allocations_this_thread();

// Allocations made between construction and count().
class HeapCounter {
 public:
  HeapCounter() : start_(heap_allocations()) {}
  int64_t count() const { return heap_allocations() - start_; }

 private:
  int64_t start_;
};

// Counts the heap allocations of `steps` decode steps of a generation, after its first decoded token,
// from the generation's token callback (runtime::generate, TpRunner::generate: anything that calls back
// once per token before decoding the next). Token 0 comes from the prefill; the window opens when
// token 1 arrives (the first decode step is behind) and closes when token steps + 1 arrives, so it
// holds exactly `steps` decode steps, each with its sampling. Generate total_tokens() tokens without
// stopping at EOS and call on_token() first thing in the callback.
//
// `probe`, when given, runs as the window opens (before the count starts) and as it closes (after the
// count ends), e.g. to read the GPU's free memory; whatever it allocates is outside the window.
class DecodeWindow {
 public:
  explicit DecodeWindow(int steps, std::function<void()> probe = nullptr) : steps_(steps), probe_(std::move(probe)) {}
  int total_tokens() const { return steps_ + 2; }
  void on_token() {
    if (seen_ == 1) {
      if (probe_) probe_();
      start_ = heap_allocations();
      start_thread_ = heap_allocations_this_thread();
    } else if (seen_ == steps_ + 1) {
      end_ = heap_allocations();
      end_thread_ = heap_allocations_this_thread();
      if (probe_) probe_();
    }
    ++seen_;
  }
  // All total_tokens() tokens were seen (the window really spanned `steps` decode steps).
  bool complete() const { return seen_ == total_tokens(); }
  int64_t allocations() const { return end_ - start_; }
  // Those of the thread that called on_token() (the thread running the decode loop, with one rank).
  int64_t allocations_this_thread() const { return end_thread_ - start_thread_; }

 private:
  int steps_;
  std::function<void()> probe_;
  int seen_ = 0;
  int64_t start_ = 0, end_ = 0, start_thread_ = 0, end_thread_ = 0;
};

}  // namespace testutil
