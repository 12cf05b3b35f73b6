// HostBarrier: the meeting point of the rank threads of one process, made so that it cannot hang.
//
// wait() returns once all n threads have arrived. It fails instead when the barrier is aborted (a rank
// failed: abort() wakes every waiter at once and makes every later wait fail), or when the others have
// not all arrived within the timeout (a rank hung): the waiter that times out aborts the barrier, so
// the verdict reaches every rank.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>

#include "base/status.h"
#include "comm/communicator.h"

namespace comm {

class HostBarrier {
 public:
  explicit HostBarrier(int n, int timeout_ms = kDefaultTimeoutMs) : n_(n), timeout_ms_(timeout_ms) {}
  HostBarrier(const HostBarrier&) = delete;
  HostBarrier& operator=(const HostBarrier&) = delete;

  // `rank` names the caller in the timeout message.
  base::Status wait(int rank);
  void abort(const std::string& why);
  bool aborted() const { return aborted_.load(std::memory_order_acquire); }
  // The Status every call fails with once aborted (the first reason given).
  base::Status abort_status() const;
  void set_timeout_ms(int ms) { timeout_ms_ = ms; }
  int timeout_ms() const { return timeout_ms_; }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  const int n_;
  int timeout_ms_;
  int waiting_ = 0;
  uint64_t generation_ = 0;
  std::atomic<bool> aborted_{false};
  std::string why_;  // guarded by mu_
};

}  // namespace comm
