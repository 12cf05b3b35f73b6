#include "runtime/comm_timing.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

#include "comm/mpi_world.h"
#include "op/kernels.h"

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>

#include "base/cuda_utils.h"
#endif

namespace runtime {

using base::Status;
using Clock = std::chrono::steady_clock;

namespace {
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// A [1, n] tensor of `dtype` on rank `rank`'s device, filled with seeded random values.
Status random_row(TpRunner& r, int rank, base::DType dtype, int64_t n, uint64_t seed, tensor::Tensor* t) {
  KP_RETURN_IF_ERROR(tensor::Tensor::create(dtype, {1, n}, r.model(rank).allocator(), t));
  return kernel::fill_random(*t, seed, 1.f, r.model(rank).stream());
}
}  // namespace

Status time_all_reduce_us(TpRunner& r, int64_t count, base::DType dtype, double* us) {
  if (r.comm(0) == nullptr) return base::InvalidArgument("timing an all-reduce needs a communicator (--tp 2 or more)");
  constexpr int kPerGraph = 100, kReplays = 20;
  std::vector<double> per_rank(r.world_size());
  KP_RETURN_IF_ERROR(r.run([&](int rank) -> Status {
    comm::Communicator* c = r.comm(rank);
    model::LlamaModel& m = r.model(rank);
    tensor::Tensor x;  // [1, count]
    KP_RETURN_IF_ERROR(random_row(r, rank, dtype, count, 1, &x));
    auto burst = [&]() -> Status {
      for (int i = 0; i < kPerGraph; ++i) KP_RETURN_IF_ERROR(c->all_reduce_sum(x, m.stream()));
      return Status::Ok();
    };
    KP_RETURN_IF_ERROR(burst());  // warm-up outside the graph
    KP_RETURN_IF_ERROR(m.synchronize());
#ifdef KUIPER_WITH_CUDA
    if (x.device_type() == base::DeviceType::kCUDA) {
      const auto stream = static_cast<cudaStream_t>(m.stream());
      base::CudaGraph graph;
      KP_RETURN_IF_ERROR(graph.capture(stream, burst));
      KP_RETURN_IF_ERROR(graph.launch(stream));
      KP_RETURN_IF_ERROR(m.synchronize());
      const auto t0 = Clock::now();
      for (int i = 0; i < kReplays; ++i) KP_RETURN_IF_ERROR(graph.launch(stream));
      KP_RETURN_IF_ERROR(m.synchronize());
      per_rank[rank] = ms_since(t0) * 1e3 / (kReplays * kPerGraph);
      return Status::Ok();
    }
#endif
    const auto t0 = Clock::now();
    for (int i = 0; i < kReplays; ++i) KP_RETURN_IF_ERROR(burst());
    per_rank[rank] = ms_since(t0) * 1e3 / (kReplays * kPerGraph);
    return Status::Ok();
  }));
  *us = *std::max_element(per_rank.begin(), per_rank.end());
  return comm::MpiWorld::instance().max(us);  // under mpirun: the slowest process's (else a no-op)
}

Status time_stage_transfer_us(TpRunner& r, int64_t count, base::DType dtype, double* us) {
  const ProcessGroup* pg = r.process();
  if (pg == nullptr || pg->pipeline() == nullptr)
    return base::InvalidArgument("timing a stage transfer needs pipeline stages (--pp 2 or more under mpirun)");
  constexpr int kRoundTrips = 100, kReps = 5;
  comm::Communicator* pipe = pg->pipeline();
  const int stage = pipe->rank();
  model::LlamaModel& m = r.model(0);
  double mine = 0;
  if (stage < 2) {
    tensor::Tensor x;  // [1, count]
    KP_RETURN_IF_ERROR(random_row(r, 0, dtype, count, 3, &x));
    auto burst = [&]() -> Status {
      for (int i = 0; i < kRoundTrips; ++i) {
        if (stage == 0) {
          KP_RETURN_IF_ERROR(pipe->send(x, 1, m.stream()));
          KP_RETURN_IF_ERROR(pipe->recv(x, 1, m.stream()));
        } else {
          KP_RETURN_IF_ERROR(pipe->recv(x, 0, m.stream()));
          KP_RETURN_IF_ERROR(pipe->send(x, 0, m.stream()));
        }
      }
      return Status::Ok();
    };
    KP_RETURN_IF_ERROR(burst());  // warm-up outside the graph
    KP_RETURN_IF_ERROR(m.synchronize());
    int replays = kReps;
    std::function<Status()> go = burst;
#ifdef KUIPER_WITH_CUDA
    base::CudaGraph graph;
    if (x.device_type() == base::DeviceType::kCUDA) {
      const auto stream = static_cast<cudaStream_t>(m.stream());
      KP_RETURN_IF_ERROR(graph.capture(stream, burst));
      go = [&] { return graph.launch(stream); };
      KP_RETURN_IF_ERROR(go());
      KP_RETURN_IF_ERROR(m.synchronize());
    }
#endif
    const auto t0 = Clock::now();
    for (int i = 0; i < replays; ++i) KP_RETURN_IF_ERROR(go());
    KP_RETURN_IF_ERROR(m.synchronize());
    mine = ms_since(t0) * 1e3 / (replays * kRoundTrips * 2.0);
  }
  KP_RETURN_IF_ERROR(comm::MpiWorld::instance().max(&mine));
  *us = mine;
  return Status::Ok();
}

Status time_decode_comm_ms(TpRunner& r, double* ms) {
  if (r.comm(0) == nullptr) return base::InvalidArgument("timing the communication needs a communicator");
  const model::ModelConfig& cfg = r.config();
  const int iters = 20;
  std::vector<double> per_rank(r.world_size());
  KP_RETURN_IF_ERROR(r.run([&](int rank) -> Status {
    comm::Communicator* c = r.comm(rank);
    model::LlamaModel& m = r.model(rank);
    const base::DType dt = m.workspace().x.dtype();
    tensor::Tensor x, part, all;  // [1, dim], [1, vocab / world], [1, vocab]
    KP_RETURN_IF_ERROR(random_row(r, rank, dt, cfg.dim, 1, &x));
    KP_RETURN_IF_ERROR(random_row(r, rank, dt, cfg.vocab_size / c->world_size(), 2, &part));
    KP_RETURN_IF_ERROR(tensor::Tensor::create(dt, {1, (int64_t)cfg.vocab_size}, m.allocator(), &all));
    auto step = [&]() -> Status {
      for (int l = 0; l < 2 * cfg.n_layers; ++l) KP_RETURN_IF_ERROR(c->all_reduce_sum(x, m.stream()));
      return c->all_gather(part, all, m.stream());
    };
    KP_RETURN_IF_ERROR(step());  // warm-up
    KP_RETURN_IF_ERROR(m.synchronize());
    const auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) KP_RETURN_IF_ERROR(step());
    KP_RETURN_IF_ERROR(m.synchronize());
    per_rank[rank] = ms_since(t0) / iters;
    return Status::Ok();
  }));
  *ms = *std::max_element(per_rank.begin(), per_rank.end());
  return comm::MpiWorld::instance().max(ms);
}

}  // namespace runtime
