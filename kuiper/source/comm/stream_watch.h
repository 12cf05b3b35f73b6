// The host-side watchdog of the GPU communicators (NcclHandler::wait, PeerCommGroup::wait): waits for
// a rank's stream without ever waiting for ever.
//
//   loop: query the stream; check() (the group aborted? the transport reported an error?) -> its Status;
//         done -> Ok; a CUDA error or the timeout -> fail(why), which aborts the group;
//         spin for the first 20 ms (a decode step is ~1-20 ms and the token is wanted at once), then
//         poll every 100 us.
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <string>
#include <thread>

#include "base/cuda_utils.h"
#include "base/status.h"
#include "comm/communicator.h"

namespace comm {

// check(): base::Status, non-ok to stop at once with it. fail(why): aborts the group with `why` and
// returns the Status wait() should answer with.
template <typename Check, typename Fail>
base::Status watch_stream(int rank, cudaStream_t stream, int timeout_ms, Check&& check, Fail&& fail) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    const cudaError_t q = cudaStreamQuery(stream);
    // After the query: a peer kernel that gave up records why before it completes.
    if (base::Status s = check(); !s.ok()) return s;
    if (q == cudaSuccess) return base::Status::Ok();
    if (q != cudaErrorNotReady) {
      const base::Status err = base::cuda_error(q, "cudaStreamQuery (waiting for the stream)", __FILE__, __LINE__);
      fail("rank " + std::to_string(rank) + ": " + err.message());
      return err;
    }
    const auto now = Clock::now();
    if (now > deadline)
      return fail("rank " + std::to_string(rank) + ": the GPU work of a step did not finish within " +
                  seconds_text(timeout_ms) + " (a rank failed or hung)");
    if (now - t0 < std::chrono::milliseconds(20)) std::this_thread::yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

}  // namespace comm
