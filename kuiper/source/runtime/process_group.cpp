#include "runtime/process_group.h"

#include <cstring>
#include <string>
#include <vector>

#include "comm/mpi_world.h"

#ifdef KUIPER_WITH_CUDA
#include "base/cuda_utils.h"
#include "comm/nccl_handler.h"
#endif

namespace runtime {

using base::Status;

ProcessGroup::~ProcessGroup() = default;

Status ProcessGroup::create(base::DeviceType device, int tp, int pp, int timeout_ms, std::unique_ptr<ProcessGroup>* out) {
  comm::MpiWorld& w = comm::MpiWorld::instance();
  if (!w.active()) return base::InvalidArgument("a multi-process run needs a process started by mpirun");
  if (tp < 1 || pp < 1 || tp * pp != w.size())
    return base::InvalidArgument("mpirun started " + std::to_string(w.size()) + " processes, but --tp " +
                                 std::to_string(tp) + " x --pp " + std::to_string(pp) + " is " +
                                 std::to_string(tp * pp) + ": give --tp and --pp with tp x pp = " +
                                 std::to_string(w.size()));
  std::unique_ptr<ProcessGroup> g(new ProcessGroup());
  ProcessLayout& l = g->layout_;
  l.world = w.size();
  l.rank = w.rank();
  l.tp = tp;
  l.pp = pp;
  l.stage = l.rank / tp;
  l.tp_rank = l.rank % tp;
  g->device_ = device;
  w.set_timeout_ms(timeout_ms);
  if (device == base::DeviceType::kCPU) {
    // Collective over every process: each takes part in both splits, groups of one included.
    KP_RETURN_IF_ERROR(w.split(l.stage, l.tp_rank, &g->mpi_tp_));
    KP_RETURN_IF_ERROR(w.split(l.tp_rank, l.stage, &g->mpi_pipe_));
    if (tp > 1) g->tp_ = g->mpi_tp_.get();
    if (pp > 1) g->pipe_ = g->mpi_pipe_.get();
    *out = std::move(g);
    return Status::Ok();
  }
#ifdef KUIPER_WITH_CUDA
  const int gpus = base::cuda_device_count();
  if (w.local_size() > gpus)
    return base::InvalidArgument("mpirun started " + std::to_string(w.local_size()) + " processes on this host, which has " +
                                 std::to_string(gpus) + " GPU(s) visible: one process per GPU");
  g->device_id_ = w.local_rank();
  comm::NcclHandler& nccl = comm::NcclHandler::instance();
  nccl.set_timeout_ms(timeout_ms);
  nccl.set_external_abort([](std::string* why) {
    comm::MpiWorld& mpi = comm::MpiWorld::instance();
    if (!mpi.aborted()) return false;
    *why = mpi.abort_status().message();
    return true;
  });
  KP_RETURN_IF_ERROR(nccl.init_process(l.world, l.rank, g->device_id_, tp,
                                       [&w](void* bytes, size_t n) { return w.broadcast(bytes, n, 0); }));
  if (tp > 1) g->tp_ = nccl.tensor_parallel();
  if (pp > 1) g->pipe_ = nccl.pipeline();
  *out = std::move(g);
  return Status::Ok();
#else
  return base::Unsupported("this build has no CUDA support");
#endif
}

Status ProcessGroup::layers(int n_layers, std::pair<int, int>* range) const {
  const int pp = layout_.pp, s = layout_.stage;
  if (n_layers < pp)
    return base::InvalidArgument("--pp " + std::to_string(pp) + " needs at least one layer per stage; the model has " +
                                 std::to_string(n_layers));
  *range = {(int)((int64_t)s * n_layers / pp), (int)((int64_t)(s + 1) * n_layers / pp)};
  return Status::Ok();
}

Status ProcessGroup::check_same_model(const model::ModelConfig& c) const {
  constexpr size_t kText = 256;
  comm::MpiWorld& w = comm::MpiWorld::instance();
  char mine[kText] = {0};
  std::strncpy(mine, c.summary().c_str(), kText - 1);
  std::vector<char> all(kText * layout_.world);
  KP_RETURN_IF_ERROR(w.all_gather(mine, all.data(), kText));
  for (int r = 1; r < layout_.world; ++r)
    if (std::strncmp(all.data(), all.data() + r * kText, kText) != 0)
      return base::InvalidArgument("rank " + std::to_string(r) + "'s model (" + std::string(all.data() + r * kText) +
                                   ") is not rank 0's (" + std::string(all.data()) + "): every process must load one model");
  return Status::Ok();
}

Status ProcessGroup::share_stop(bool* stop) const {
  int32_t flag = *stop ? 1 : 0;
  KP_RETURN_IF_ERROR(comm::MpiWorld::instance().broadcast(&flag, sizeof flag, 0));
  *stop = flag != 0;
  return Status::Ok();
}

Status ProcessGroup::abort(const Status& s) const {
  // Communication errors already name the rank that saw them (and have aborted the world).
  const std::string why = s.code() == base::StatusCode::kCommError ? s.message()
                                                                    : "rank " + std::to_string(layout_.rank) + ": " + s.message();
  comm::MpiWorld::instance().abort(why);
#ifdef KUIPER_WITH_CUDA
  if (device_ == base::DeviceType::kCUDA) comm::NcclHandler::instance().abort(why);
#endif
  return Status(s.code(), why);
}

void ProcessGroup::set_timeout_ms(int ms) {
  comm::MpiWorld::instance().set_timeout_ms(ms);
#ifdef KUIPER_WITH_CUDA
  if (device_ == base::DeviceType::kCUDA) comm::NcclHandler::instance().set_timeout_ms(ms);
#endif
}

}  // namespace runtime
