// The allocation counter of heap_counter.h. Two implementations, chosen at compile time:
//  - without AddressSanitizer: this file defines malloc, free, calloc, realloc, ... in the test
//    executable. glibc supports replacing its allocator this way (every library of the process, glibc
//    itself included, then calls these), and these forward to glibc's own allocator, which glibc
//    exports as __libc_malloc & co. Nothing here may allocate.
//  - with AddressSanitizer: ASan already replaces malloc; defining it again would bypass ASan. ASan
//    offers hooks called on every allocation of its allocator instead; one is installed at start-up.
#include "heap_counter.h"

#include <atomic>
#include <cerrno>
#include <cstddef>

#if defined(__SANITIZE_ADDRESS__)
#define KP_HEAP_COUNTER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KP_HEAP_COUNTER_ASAN 1
#endif
#endif

namespace {
// Constant-initialised, so it is ready before the first allocation of the process.
std::atomic<int64_t> g_allocations{0};
// The same for the calling thread alone (constant-initialised thread-local storage: no allocation).
thread_local int64_t t_allocations = 0;
inline void count_one() {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  ++t_allocations;
}
}  // namespace

#ifdef KP_HEAP_COUNTER_ASAN

extern "C" int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void*, size_t),
                                                          void (*free_hook)(const volatile void*));

namespace {
void on_malloc(const volatile void*, size_t) { count_one(); }
void on_free(const volatile void*) {}
// Installed during static initialisation, before main() starts any thread (as ASan requires).
[[maybe_unused]] const int g_installed = __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
}  // namespace

#else  // replace glibc's malloc family

extern "C" {
void* __libc_malloc(size_t size);
void __libc_free(void* ptr);
void* __libc_calloc(size_t n, size_t size);
void* __libc_realloc(void* ptr, size_t size);
void* __libc_memalign(size_t alignment, size_t size);
void* __libc_valloc(size_t size);
void* __libc_pvalloc(size_t size);

// The declarations in <stdlib.h> / <malloc.h> are noexcept in C++ (glibc's __THROW); these match them.
void* malloc(size_t size) noexcept {
  count_one();
  return __libc_malloc(size);
}
void free(void* ptr) noexcept { __libc_free(ptr); }
void* calloc(size_t n, size_t size) noexcept {
  count_one();
  return __libc_calloc(n, size);
}
// Counted even when it can grow in place: a decode loop that reallocates is not allocation-free.
void* realloc(void* ptr, size_t size) noexcept {
  count_one();
  return __libc_realloc(ptr, size);
}
void* reallocarray(void* ptr, size_t n, size_t size) noexcept {
  size_t bytes;
  if (__builtin_mul_overflow(n, size, &bytes)) {
    errno = ENOMEM;
    return nullptr;
  }
  return realloc(ptr, bytes);
}
void* memalign(size_t alignment, size_t size) noexcept {
  count_one();
  return __libc_memalign(alignment, size);
}
void* aligned_alloc(size_t alignment, size_t size) noexcept {
  count_one();
  return __libc_memalign(alignment, size);
}
int posix_memalign(void** out, size_t alignment, size_t size) noexcept {
  // POSIX: a power of two and a multiple of sizeof(void*), else EINVAL.
  if (alignment < sizeof(void*) || (alignment & (alignment - 1)) != 0) return EINVAL;
  count_one();
  void* p = __libc_memalign(alignment, size);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
void* valloc(size_t size) noexcept {
  count_one();
  return __libc_valloc(size);
}
void* pvalloc(size_t size) noexcept {
  count_one();
  return __libc_pvalloc(size);
}
}  // extern "C"

#endif

namespace testutil {

int64_t heap_allocations() { return g_allocations.load(std::memory_order_relaxed); }

int64_t heap_allocations_this_thread() { return t_allocations; }

bool heap_counter_works() {
  // Called through a volatile pointer: the compiler cannot see (and so cannot drop) the allocation.
  void* (*volatile alloc)(size_t) = &::operator new;
  void (*volatile release)(void*) = &::operator delete;
  const int64_t before = heap_allocations();
  release(alloc(24));
  return heap_allocations() == before + 1;
}

}  // namespace testutil
