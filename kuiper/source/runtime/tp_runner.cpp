#include "runtime/tp_runner.h"

#include <algorithm>
#include <atomic>
#include <mutex>

#include "comm/cpu_communicator.h"
#include "comm/host_barrier.h"
#include "comm/mpi_world.h"
#include "op/kernels.h"

#ifdef KUIPER_WITH_CUDA
#include "base/cuda_utils.h"
#include "comm/nccl_handler.h"
#include "comm/peer_communicator.h"
#endif

namespace runtime {

using base::Status;

bool parse_all_reduce(const std::string& s, AllReduce* out) {
  if (s == "auto") *out = AllReduce::kAuto;
  else if (s == "custom") *out = AllReduce::kCustom;
  else if (s == "nccl") *out = AllReduce::kNccl;
  else return false;
  return true;
}

const char* all_reduce_name(AllReduce a) {
  switch (a) {
    case AllReduce::kAuto: return "auto";
    case AllReduce::kCustom: return "custom";
    case AllReduce::kNccl: return "nccl";
  }
  return "?";
}

struct TpRunner::Impl {
  int world = 1;
  base::DeviceType device = base::DeviceType::kCPU;
  std::vector<int> devices;  // GPU of each rank
  const char* all_reduce = "none";
  std::unique_ptr<comm::CpuCommGroup> cpu_group;
#ifdef KUIPER_WITH_CUDA
  std::unique_ptr<comm::PeerCommGroup> peer_group;
#endif
  std::vector<comm::Communicator*> comms;  // one per rank (null with one rank)
  std::unique_ptr<ProcessGroup> process;   // under mpirun: this process's place in the job
#ifdef KUIPER_WITH_CUDA
  std::vector<std::unique_ptr<base::CudaStream>> streams;
#endif
  std::unique_ptr<comm::HostBarrier> barrier;  // generate(): rank 0's stop decision reaches every rank
  std::atomic<bool> stop{false};
  std::mutex mu;
  Status first_error;  // guarded by mu
  std::unique_ptr<RankThreads> threads;  // world > 1; declared last, so joined before the rest goes

  // Called on the failing rank's thread: the first failure is the run's answer, and every other rank
  // is stopped now (its collectives and waits fail) instead of waiting for a peer that will not come.
  void fail(int rank, const Status& s) {
    std::string why;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (first_error.ok())
        // Communication errors already say which rank saw what; others get the rank prepended.
        first_error = s.code() == base::StatusCode::kCommError
                          ? s
                          : Status(s.code(), "rank " + std::to_string(rank) + ": " + s.message());
      why = first_error.message();
    }
    if (comms[rank] != nullptr) comms[rank]->abort(why);
    barrier->abort(why);
  }
};

TpRunner::~TpRunner() {
  if (impl_) impl_->threads.reset();  // join the rank threads before their models go
}

comm::Communicator* TpRunner::comm(int rank) const { return impl_->comms.at(rank); }

const ProcessGroup* TpRunner::process() const { return impl_->process.get(); }

bool TpRunner::is_output_rank() const { return !impl_->process || impl_->process->layout().rank == 0; }

void TpRunner::set_timeout_ms(int ms) {
  impl_->barrier->set_timeout_ms(ms);
  if (impl_->process) {
    impl_->process->set_timeout_ms(ms);
    return;
  }
  if (impl_->cpu_group) impl_->cpu_group->set_timeout_ms(ms);
#ifdef KUIPER_WITH_CUDA
  if (impl_->peer_group) {
    impl_->peer_group->set_wait_timeout_ms(ms);
    impl_->peer_group->set_timeout_ms(std::min(ms, comm::PeerCommGroup::kDefaultPeerTimeoutMs));
  } else if (impl_->device == base::DeviceType::kCUDA && impl_->comms[0] != nullptr) {
    comm::NcclHandler::instance().set_timeout_ms(ms);
  }
#endif
}

const char* TpRunner::all_reduce_used() const { return impl_->all_reduce; }

namespace {
// The GPU of each rank, checked: tp.devices or 0..world-1.
Status resolve_devices(const TpOptions& tp, int device_id, std::vector<int>* devices) {
  if (!tp.devices.empty() && (int)tp.devices.size() != tp.world)
    return base::InvalidArgument("TpOptions::devices names " + std::to_string(tp.devices.size()) + " GPUs for " +
                                 std::to_string(tp.world) + " ranks");
  if (!tp.devices.empty()) *devices = tp.devices;
  else if (tp.world == 1) *devices = {device_id};
  else for (int r = 0; r < tp.world; ++r) devices->push_back(r);
#ifdef KUIPER_WITH_CUDA
  const int gpus = base::cuda_device_count();
  if (gpus == 0) return base::Unsupported("--device cuda: no CUDA GPU is visible");
  if (tp.devices.empty() && tp.world > gpus)
    return base::InvalidArgument("--tp " + std::to_string(tp.world) + " needs " + std::to_string(tp.world) +
                                 " GPUs; " + std::to_string(gpus) + " visible");
  for (int d : *devices)
    if (d < 0 || d >= gpus)
      return base::InvalidArgument("GPU " + std::to_string(d) + " does not exist (" + std::to_string(gpus) + " visible)");
  return Status::Ok();
#else
  return base::Unsupported("this build has no CUDA support");
#endif
}

bool distinct(std::vector<int> v) {
  std::sort(v.begin(), v.end());
  return std::adjacent_find(v.begin(), v.end()) == v.end();
}
}  // namespace

// Bytes of the peer all-reduce's one-shot slot: a 128-token prefill chunk of a dim-8192 model in bf16
// (the row-parallel overlap chunk) is one round; each rank holds 2 x world x this.
constexpr size_t kPeerCapacityBytes = size_t(2) << 20;

// The communicators of the ranks: a CPU group, NCCL, or the peer all-reduce.
Status TpRunner::make_comms(const model::ModelOptions& opts, const TpOptions& tp) {
  Impl& im = *impl_;
  im.comms.assign(tp.world, nullptr);
  if (tp.world == 1 && !opts.collectives_at_one_rank) return Status::Ok();
  if (opts.device == base::DeviceType::kCPU) {
    im.cpu_group = std::make_unique<comm::CpuCommGroup>(tp.world, tp.timeout_ms);
    for (int i = 0; i < tp.world; ++i) im.comms[i] = im.cpu_group->rank(i);
    im.all_reduce = "cpu";
    return Status::Ok();
  }
#ifdef KUIPER_WITH_CUDA
  const bool one_gpu_twice = !distinct(im.devices);
  if (one_gpu_twice && tp.all_reduce == AllReduce::kNccl)
    return base::InvalidArgument("NCCL cannot run two ranks on one GPU; use the peer all-reduce (--allreduce custom)");
  // The one-shot peer all-reduce when asked for, or where NCCL cannot run (ranks sharing a GPU).
  // `auto` stays on NCCL across distinct GPUs until the peer all-reduce has been verified on two GPUs
  // (so far it has run with ranks sharing one GPU only): see docs/tensor_parallel.md.
  const bool peer = tp.world > 1 && (tp.all_reduce == AllReduce::kCustom || one_gpu_twice);
  if (peer) {
    KP_RETURN_IF_ERROR(comm::PeerCommGroup::create(im.devices, kPeerCapacityBytes, &im.peer_group));
    for (int i = 0; i < tp.world; ++i) im.comms[i] = im.peer_group->rank(i);
    im.all_reduce = "custom";
    return Status::Ok();
  }
  for (int r = 0; r < tp.world; ++r)
    if (im.devices[r] != r) return base::InvalidArgument("with NCCL, rank r runs on GPU r");
  comm::NcclHandler& nccl = comm::NcclHandler::instance();
  KP_RETURN_IF_ERROR(nccl.init(tp.world));
  for (int i = 0; i < tp.world; ++i) im.comms[i] = nccl.communicator(i);
  im.all_reduce = "nccl";
  return Status::Ok();
#else
  return base::Unsupported("this build has no CUDA support");
#endif
}

// How long a process may wait for the others to finish loading their weights (a 405B model's share
// from a network file system can take minutes).
constexpr int kLoadTimeoutMs = 30 * 60 * 1000;

// One rank of one stage in this process; the other ranks are the other processes of the job.
Status TpRunner::create_process(const model::ModelFile& file, const model::ModelOptions& opts, const TpOptions& tp,
                                std::unique_ptr<TpRunner>* out) {
  if (!tp.devices.empty()) return base::InvalidArgument("under mpirun each process runs on its local rank's GPU");
  if (tp.all_reduce == AllReduce::kCustom)
    return base::InvalidArgument("--allreduce custom needs every GPU in one process; under mpirun the ranks use NCCL");
  std::unique_ptr<TpRunner> r(new TpRunner());
  r->impl_ = std::make_unique<Impl>();
  Impl& im = *r->impl_;
  im.device = opts.device;
  im.barrier = std::make_unique<comm::HostBarrier>(1, tp.timeout_ms);
  KP_RETURN_IF_ERROR(ProcessGroup::create(opts.device, tp.world, tp.pp, tp.timeout_ms, &im.process));
  const ProcessGroup& pg = *im.process;
  KP_RETURN_IF_ERROR(pg.check_same_model(file.config()));
  std::pair<int, int> layers;
  KP_RETURN_IF_ERROR(pg.layers(file.config().n_layers, &layers));
  im.comms = {pg.tensor_parallel()};
  im.all_reduce = pg.tensor_parallel() == nullptr ? "none" : opts.device == base::DeviceType::kCPU ? "mpi" : "nccl";
  model::ModelOptions o = opts;
  o.rank = pg.layout().tp_rank;
  o.world_size = pg.layout().tp;
  o.comm = pg.tensor_parallel();
  o.pipe = pg.pipeline();
  o.layer_begin = layers.first;
  o.layer_end = layers.second;
  if (pg.layout().rank != 0) o.load_progress = nullptr;
#ifdef KUIPER_WITH_CUDA
  if (opts.device == base::DeviceType::kCUDA) {
    o.device_id = pg.device_id();
    im.devices = {o.device_id};
    CUDA_CHECK(cudaSetDevice(o.device_id));
    im.streams.resize(1);
    im.streams[0] = std::make_unique<base::CudaStream>();
    KP_RETURN_IF_ERROR(im.streams[0]->create(o.device_id));
    o.stream = im.streams[0]->get();
  }
#endif
  r->models_.resize(1);
  const Status loaded = model::LlamaModel::create(file, o, &r->models_[0]);
  if (!loaded.ok()) return pg.abort(loaded);
  // Every process has its weights before any step: a host with a slower disk may take minutes longer
  // to load its share, which the first step's collectives must not mistake for a hang.
  comm::MpiWorld& mpi = comm::MpiWorld::instance();
  mpi.set_timeout_ms(std::max(tp.timeout_ms, kLoadTimeoutMs));
  const Status all_loaded = mpi.barrier();
  mpi.set_timeout_ms(tp.timeout_ms);
  KP_RETURN_IF_ERROR(all_loaded);
  *out = std::move(r);
  return Status::Ok();
}

Status TpRunner::create(const model::ModelFile& file, const model::ModelOptions& opts, const TpOptions& tp,
                        std::unique_ptr<TpRunner>* out) {
  const int world = tp.world;
  if (world < 1) return base::InvalidArgument("--tp must be at least 1");
  if (tp.pp < 1) return base::InvalidArgument("--pp must be at least 1");
  if (comm::MpiWorld::instance().size() > 1) return create_process(file, opts, tp, out);
  if (tp.pp > 1)
    return base::InvalidArgument("--pp " + std::to_string(tp.pp) + " runs one process per stage and tensor-parallel rank: "
                                 "start it with mpirun -np " + std::to_string(tp.pp * world));
  std::unique_ptr<TpRunner> r(new TpRunner());
  r->impl_ = std::make_unique<Impl>();
  Impl& im = *r->impl_;
  im.world = world;
  im.device = opts.device;
  im.barrier = std::make_unique<comm::HostBarrier>(world, tp.timeout_ms);
  if (opts.device == base::DeviceType::kCUDA) KP_RETURN_IF_ERROR(resolve_devices(tp, opts.device_id, &im.devices));
#ifdef KUIPER_WITH_CUDA
  im.streams.resize(world);
#endif
  KP_RETURN_IF_ERROR(r->make_comms(opts, tp));
  r->set_timeout_ms(tp.timeout_ms);  // the barriers and whichever communicator make_comms chose

  // Rank threads: each binds its GPU once, for good.
  if (world > 1) {
    // CPU ranks share the process's thread budget: each rank's kernels get an equal part of it.
    const int cpu_share = std::max(1, kernel::cpu_threads() / world);
    auto bind = [&](int rank) -> Status {
#ifdef KUIPER_WITH_CUDA
      if (opts.device == base::DeviceType::kCUDA) CUDA_CHECK(cudaSetDevice(im.devices[rank]));
#endif
      if (opts.device == base::DeviceType::kCPU) kernel::set_cpu_threads_this_thread(cpu_share);
      (void)rank;
      return Status::Ok();
    };
    KP_RETURN_IF_ERROR(RankThreads::start(world, bind, [&im](int rank, const Status& s) { im.fail(rank, s); },
                                          &im.threads));
  }
  r->models_.resize(world);
  KP_RETURN_IF_ERROR(r->run([&](int rank) -> Status {
    model::ModelOptions o = opts;
    o.rank = rank;
    o.world_size = world;
    o.comm = im.comms[rank];
    if (rank != 0) o.load_progress = nullptr;
#ifdef KUIPER_WITH_CUDA
    if (opts.device == base::DeviceType::kCUDA) {
      o.device_id = im.devices[rank];
      im.streams[rank] = std::make_unique<base::CudaStream>();
      KP_RETURN_IF_ERROR(im.streams[rank]->create(o.device_id));
      o.stream = im.streams[rank]->get();
    }
#endif
    return model::LlamaModel::create(file, o, &r->models_[rank]);
  }));
  *out = std::move(r);
  return Status::Ok();
}

Status TpRunner::run(RankFn fn) {
  Impl& im = *impl_;
  if (im.world == 1) {
#ifdef KUIPER_WITH_CUDA
    if (im.device == base::DeviceType::kCUDA) CUDA_CHECK(cudaSetDevice(im.devices[0]));
#endif
    Status s = fn(0);
    if (!s.ok() && im.process) return im.process->abort(s);  // the other processes stop too, at once
    return s;
  }
  {
    std::lock_guard<std::mutex> lock(im.mu);
    if (!im.first_error.ok()) return im.first_error;  // spent by an earlier failure
  }
  im.threads->run(fn);
  // Every rank refused for the same reason (a --tp that does not divide the model, say): that is the
  // run's error as it is, naming no rank.
  const base::Status& s0 = im.threads->status(0);
  bool same = !s0.ok() && s0.code() != base::StatusCode::kCommError;
  for (int r = 1; r < im.world && same; ++r) same = im.threads->status(r).message() == s0.message();
  std::lock_guard<std::mutex> lock(im.mu);
  if (same) im.first_error = s0;
  return im.first_error;  // else set by Impl::fail from the first rank that failed
}

Status TpRunner::step(const model::BatchSeq* seqs, int32_t n_seqs, const model::StepOutput& out) {
  return run([&](int rank) -> Status { return models_[rank]->step(seqs, n_seqs, rank == 0 ? out : model::StepOutput{}); });
}

Status TpRunner::generate(const sampler::SamplerConfig& sc, const std::vector<int32_t>& prompt, int32_t pos,
                          const GenerateOptions& opts, const TokenCallback& on_token, GenerateStats* stats) {
  const int world = world_size();
  Impl& im = *impl_;
  im.stop = false;
  std::vector<GenerateStats> st(world);
  if (im.process) {
    // One rank here, the others in their processes: world rank 0 decides, every process learns it.
    return run([&](int) -> Status {
      const bool talks = is_output_rank();
      sampler::Sampler smp;
      KP_RETURN_IF_ERROR(sampler::Sampler::create(sc, config().vocab_size, &smp, max_seq_len()));
      std::vector<float> logits(config().vocab_size);
      Status shared;
      auto cb = [&](int32_t tok) {
        bool stop = talks && !on_token(tok);
        shared = im.process->share_stop(&stop);
        return shared.ok() && !stop;
      };
      Status s = runtime::generate(*models_[0], smp, prompt, pos, opts, logits.data(), cb, stats);
      return s.ok() ? shared : s;
    });
  }
  return run([&](int rank) -> Status {
    sampler::Sampler smp;
    KP_RETURN_IF_ERROR(sampler::Sampler::create(sc, config().vocab_size, &smp, max_seq_len()));
    std::vector<float> logits(config().vocab_size);
    Status barrier_status;
    auto cb = [&](int32_t tok) {
      if (world == 1) return on_token(tok);
      if (rank == 0 && !on_token(tok)) im.stop = true;
      // Rank 0's answer for this token is visible to all after the first wait; everyone has read it
      // before a later token may change it after the second.
      barrier_status = im.barrier->wait(rank);
      const bool stop = im.stop.load();
      if (barrier_status.ok()) barrier_status = im.barrier->wait(rank);
      return barrier_status.ok() && !stop;
    };
    Status s = runtime::generate(*models_[rank], smp, prompt, pos, opts, logits.data(), cb, &st[rank]);
    if (rank == 0) *stats = st[0];
    return s.ok() ? barrier_status : s;
  });
}

}  // namespace runtime
