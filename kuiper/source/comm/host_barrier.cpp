#include "comm/host_barrier.h"

#include <chrono>

namespace comm {

base::Status HostBarrier::wait(int rank) {
  std::unique_lock<std::mutex> lock(mu_);
  if (aborted()) return base::Status(base::StatusCode::kCommError, why_);
  const uint64_t gen = generation_;
  if (++waiting_ == n_) {  // the last to arrive releases the others
    waiting_ = 0;
    ++generation_;
    cv_.notify_all();
    return base::Status::Ok();
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms_);
  const bool released = cv_.wait_until(lock, deadline, [&] { return generation_ != gen || aborted(); });
  if (generation_ != gen) return base::Status::Ok();
  if (!released) {  // timed out: nobody else will come, tell everyone
    why_ = "rank " + std::to_string(rank) + ": the other ranks did not reach a collective within " +
           seconds_text(timeout_ms_) + " (a rank failed or hung)";
    aborted_.store(true, std::memory_order_release);
    cv_.notify_all();
  }
  return base::Status(base::StatusCode::kCommError, why_);
}

void HostBarrier::abort(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (aborted()) return;  // the first reason stands
  why_ = why;
  aborted_.store(true, std::memory_order_release);
  cv_.notify_all();
}

base::Status HostBarrier::abort_status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return base::Status(base::StatusCode::kCommError, why_);
}

}  // namespace comm
