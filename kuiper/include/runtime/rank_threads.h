// RankThreads: one persistent host thread per tensor-parallel rank.
//
// Thread r is started once, runs setup(r) first (on GPUs: cudaSetDevice(r), so every launch, stream
// and cuBLAS handle of that thread belongs to GPU r for the thread's whole life) and then runs the
// jobs it is handed: run(fn) calls fn(r) on every thread at once and waits for all of them. A rank
// that fails calls the failure hook at once, from its own thread, before anyone waits for it: that is
// where the tensor-parallel runner aborts the group so that the other ranks stop too.
//
// A job is passed by reference (RankFn: a pointer and a trampoline, never a copy), so handing out
// work allocates nothing.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "base/status.h"

namespace runtime {

// A non-owning reference to a callable base::Status(int rank); valid while the callable lives.
class RankFn {
 public:
  template <typename F, typename = std::enable_if_t<!std::is_same_v<std::decay_t<F>, RankFn>>>
  RankFn(F&& f)  // NOLINT: implicit, so run([&](int r) {...}) reads naturally
      : obj_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* o, int rank) -> base::Status { return (*static_cast<std::remove_reference_t<F>*>(o))(rank); }) {}
  base::Status operator()(int rank) const { return call_(obj_, rank); }

 private:
  void* obj_;
  base::Status (*call_)(void*, int);
};

class RankThreads {
 public:
  using Hook = std::function<void(int rank, const base::Status&)>;
  // Starts `world` threads and waits until each has run setup(rank); fails with the first failed setup.
  // `on_failure` is called on the failing rank's thread whenever a job of that rank fails.
  static base::Status start(int world, const std::function<base::Status(int)>& setup, Hook on_failure,
                            std::unique_ptr<RankThreads>* out);
  ~RankThreads();  // lets the threads finish and joins them
  RankThreads(const RankThreads&) = delete;
  RankThreads& operator=(const RankThreads&) = delete;

  int world_size() const { return (int)threads_.size(); }
  // fn(r) on thread r for every rank, at once; returns when all are done. status(r) is rank r's result.
  void run(RankFn fn);
  const base::Status& status(int rank) const { return status_[rank]; }

 private:
  RankThreads() = default;
  void loop(int rank, const std::function<base::Status(int)>* setup);
  base::Status call(int rank, const RankFn& fn);

  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  const RankFn* job_ = nullptr;
  uint64_t generation_ = 0;  // one more for every job handed out
  int remaining_ = 0;        // ranks still busy with the current job (or with setup)
  bool quit_ = false;
  Hook on_failure_;
  std::vector<base::Status> status_;
  std::vector<std::thread> threads_;
};

}  // namespace runtime
