#include "model/tp_runner.h"

#include <algorithm>
#include <atomic>
#include <thread>

#include "op/kernels.h"

#ifdef KUIPER_WITH_CUDA
#include "base/cuda_utils.h"
#include "base/nccl_handler.h"
#endif

namespace model {

struct TpRunner::Impl {
  std::unique_ptr<base::CpuCommGroup> cpu_group;
  std::vector<base::Communicator*> comms;  // one per rank (null with one rank)
#ifdef KUIPER_WITH_CUDA
  std::vector<std::unique_ptr<base::CudaStream>> streams;
#endif
  std::unique_ptr<base::HostBarrier> barrier;
  std::atomic<bool> stop{false};
};

TpRunner::~TpRunner() = default;

base::Communicator* TpRunner::comm(int rank) const { return impl_->comms.at(rank); }

base::Status TpRunner::create(const ModelFile& file, const ModelOptions& opts, int world,
                              std::unique_ptr<TpRunner>* out) {
  if (world < 1) return base::InvalidArgument("--tp must be at least 1");
  std::unique_ptr<TpRunner> r(new TpRunner());
  r->impl_ = std::make_unique<Impl>();
  Impl& im = *r->impl_;
  im.barrier = std::make_unique<base::HostBarrier>(world);
  im.comms.assign(world, nullptr);
  if (opts.device == base::DeviceType::kCPU) {
    if (world > 1 || opts.collectives_at_one_rank) {
      im.cpu_group = std::make_unique<base::CpuCommGroup>(world);
      for (int i = 0; i < world; ++i) im.comms[i] = im.cpu_group->rank(i);
    }
  } else {
#ifdef KUIPER_WITH_CUDA
    const int gpus = base::cuda_device_count();
    if (world > gpus)
      return base::InvalidArgument("--tp " + std::to_string(world) + " needs " + std::to_string(world) +
                                   " GPUs; " + std::to_string(gpus) + " visible");
    const bool nccl = world > 1 || opts.collectives_at_one_rank;
    if (nccl) KP_RETURN_IF_ERROR(base::NcclHandler::instance().init(world));
    for (int i = 0; i < world; ++i) {
      if (nccl) im.comms[i] = base::NcclHandler::instance().communicator(i);
      im.streams.push_back(std::make_unique<base::CudaStream>());
      KP_RETURN_IF_ERROR(im.streams.back()->create(i));
    }
#else
    return base::Unsupported("this build has no CUDA support");
#endif
  }
  r->models_.resize(world);
  KP_RETURN_IF_ERROR(r->run([&](int rank) {
    ModelOptions o = opts;
    o.rank = rank;
    o.world_size = world;
    o.comm = im.comms[rank];
    if (rank != 0) o.load_progress = nullptr;
#ifdef KUIPER_WITH_CUDA
    if (opts.device == base::DeviceType::kCUDA) {
      o.device_id = world > 1 ? rank : opts.device_id;
      o.stream = im.streams[rank]->get();
    }
#endif
    return LlamaModel::create(file, o, &r->models_[rank]);
  }));
  *out = std::move(r);
  return base::Status::Ok();
}

base::Status TpRunner::run(const std::function<base::Status(int rank)>& fn) {
  const int world = (int)impl_->comms.size();
  if (world == 1) return fn(0);
  // CPU ranks share the process's thread budget: each rank's kernels get an equal part of it.
  const int share = std::max(1, kernel::cpu_threads() / world);
  auto rank_fn = [&](int rank) {
    kernel::set_cpu_threads_this_thread(share);
    base::Status s = fn(rank);
    kernel::set_cpu_threads_this_thread(0);
    return s;
  };
  std::vector<base::Status> status(world);
  std::vector<std::thread> threads;
  for (int i = 1; i < world; ++i) threads.emplace_back([&, i] { status[i] = rank_fn(i); });
  status[0] = rank_fn(0);
  for (auto& t : threads) t.join();
  for (const auto& s : status)
    if (!s.ok()) return s;
  return base::Status::Ok();
}

base::Status TpRunner::generate(const sampler::SamplerConfig& sc, const std::vector<int32_t>& prompt, int32_t pos,
                                const GenerateOptions& opts, const TokenCallback& on_token, GenerateStats* stats) {
  const int world = world_size();
  std::vector<GenerateStats> st(world);
  Impl& im = *impl_;
  im.stop = false;
  return run([&](int rank) -> base::Status {
    sampler::Sampler smp;
    KP_RETURN_IF_ERROR(sampler::Sampler::create(sc, config().vocab_size, &smp, max_seq_len()));
    std::vector<float> logits(config().vocab_size);
    auto cb = [&](int32_t tok) {
      if (world == 1) return on_token(tok);
      if (rank == 0 && !on_token(tok)) im.stop = true;
      im.barrier->wait();  // rank 0's answer for this token is visible to all
      const bool stop = im.stop.load();
      im.barrier->wait();  // everyone has read it before a later token may change it
      return !stop;
    };
    base::Status s = model::generate(*models_[rank], smp, prompt, pos, opts, logits.data(), cb, &st[rank]);
    if (rank == 0) *stats = st[0];
    return s;
  });
}

}  // namespace model
