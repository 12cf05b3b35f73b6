#include "runtime/rank_threads.h"

#include <exception>
#include <string>

namespace runtime {

base::Status RankThreads::start(int world, const std::function<base::Status(int)>& setup, Hook on_failure,
                                std::unique_ptr<RankThreads>* out) {
  std::unique_ptr<RankThreads> t(new RankThreads());
  t->on_failure_ = std::move(on_failure);
  t->status_.assign(world, base::Status::Ok());
  t->remaining_ = world;
  for (int r = 0; r < world; ++r) t->threads_.emplace_back(&RankThreads::loop, t.get(), r, &setup);
  {
    std::unique_lock<std::mutex> lock(t->mu_);
    t->done_cv_.wait(lock, [&] { return t->remaining_ == 0; });
  }
  for (int r = 0; r < world; ++r)
    if (!t->status_[r].ok()) return t->status_[r];  // ~RankThreads joins the threads
  *out = std::move(t);
  return base::Status::Ok();
}

RankThreads::~RankThreads() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    quit_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

// A job's result; an exception thrown inside the job becomes an error of that rank.
base::Status RankThreads::call(int rank, const RankFn& fn) {
  try {
    return fn(rank);
  } catch (const std::exception& e) {
    return base::Internal(std::string("exception: ") + e.what());
  } catch (...) {
    return base::Internal("unknown exception");
  }
}

void RankThreads::loop(int rank, const std::function<base::Status(int)>* setup) {
  base::Status s = call(rank, RankFn(*setup));  // `setup` lives until start() has seen every result
  uint64_t seen = 0;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      status_[rank] = std::move(s);
      if (--remaining_ == 0) done_cv_.notify_all();
    }
    const RankFn* job = nullptr;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return quit_ || generation_ != seen; });
      if (quit_) return;
      seen = generation_;
      job = job_;
    }
    s = call(rank, *job);
    if (!s.ok() && on_failure_) on_failure_(rank, s);
  }
}

void RankThreads::run(RankFn fn) {
  std::unique_lock<std::mutex> lock(mu_);
  job_ = &fn;
  remaining_ = (int)threads_.size();
  ++generation_;
  work_cv_.notify_all();
  done_cv_.wait(lock, [&] { return remaining_ == 0; });
  job_ = nullptr;
}

}  // namespace runtime
