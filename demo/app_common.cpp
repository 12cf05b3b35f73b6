#include "app_common.h"

#include <fcntl.h>
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <sys/stat.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "comm/mpi_world.h"
#include "op/kernels.h"

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>

#include "base/cuda_utils.h"
#endif

DEFINE_string(model, "", "model file: the project's .bin format (tools/export.py), a GGUF file (llama.cpp's) or a llama2.c checkpoint");
DEFINE_string(tokenizer, "", "tokenizer file (.model); default: the one embedded in --model");
DEFINE_string(device, "", "cpu or cuda (default: cuda when a GPU is visible)");
DEFINE_string(tp, "1", "tensor-parallel ranks (GPUs); llama_bench takes a comma list");
DEFINE_int32(pp, 1, "pipeline stages, one process per stage and tensor-parallel rank: under mpirun -np tp x pp");
DEFINE_double(comm_timeout, 60, "seconds a rank waits for the others before the run is declared hung");
DEFINE_string(allreduce, "auto", "all-reduce between GPUs with --tp: auto, custom (the one-shot peer kernel) or nccl");
DEFINE_int32(max_seq_len, 0, "context length to allocate the KV cache for (0 = the model's)");
DEFINE_bool(cuda_graph, true, "capture the decode step once as a CUDA graph and replay it (off: plain launches, for debugging)");
DEFINE_int32(threads, 0, "CPU threads (0: the cores this process may use, from its affinity mask)");
DEFINE_string(dtype, "", "activation and KV-cache dtype: fp32, fp16 or bf16 (default: fp32 on cpu, bf16 on cuda)");

namespace app {

namespace {
std::atomic<bool> g_interrupted{false};
const char* g_prog = "llama_infer";
ParsedArgs g_args;

pthread_t g_main_thread;

// Ctrl-C is for the main thread, the one that waits for input in ppoll(). The kernel may deliver it to
// any thread that does not block it (OpenBLAS's, a rank's), and then the main thread's wait would not
// end: such a thread passes the signal on to the main thread (pthread_kill is async-signal-safe), where
// it stays pending while the main thread blocks SIGINT and interrupts its next ppoll().
void on_sigint(int) {
  if (!pthread_equal(pthread_self(), g_main_thread)) {
    pthread_kill(g_main_thread, SIGINT);
    return;
  }
  if (g_interrupted.exchange(true)) _exit(130);  // second Ctrl-C: leave now
}

bool has_gpu() {
#ifdef KUIPER_WITH_CUDA
  return base::cuda_device_count() > 0;
#else
  return false;
#endif
}

std::string basename_of(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p.substr(p.find_last_of('/') + 1);
}

std::string dirname_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
}

bool is_file(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
}  // namespace

const char* prog_name() { return g_prog; }

int fail(int code, const std::string& message) {
  std::fflush(stdout);
  comm::MpiWorld& mpi = comm::MpiWorld::instance();
  if (mpi.size() <= 1) {
    std::fprintf(stderr, "%s: error: %s\n", g_prog, message.c_str());
    return code;
  }
  // Under mpirun: one line, then MPI_Abort ends every process of the job (those waiting for this one
  // in a collective are killed, not left to time out). When every rank fails for the same reason (a
  // bad flag), rank 0's line is the one printed: the others wait 2 s first, within which rank 0's
  // abort ends them; a rank that fails alone prints after those 2 s.
  if (mpi.rank() != 0) std::this_thread::sleep_for(std::chrono::seconds(2));
  const bool named = message.rfind("rank ", 0) == 0;  // communication errors name their rank already
  std::fprintf(stderr, "%s: error: %s%s\n", g_prog, named ? "" : ("rank " + std::to_string(mpi.rank()) + ": ").c_str(),
               message.c_str());
  mpi.abort_job(code);
}

ArgSpec with_common_aliases(std::vector<Alias> program, std::set<std::string> repeatable) {
  ArgSpec spec;
  spec.aliases = {{"-m", "model"}, {"-t", "threads"}};
  spec.aliases.insert(spec.aliases.end(), program.begin(), program.end());
  spec.repeatable = std::move(repeatable);
  return spec;
}

void init(int argc, char** argv, const char* usage, const ArgSpec& spec) {
  static const std::string prog = basename_of(argv[0]);
  g_prog = prog.c_str();
  // Under mpirun, MPI first: fail() needs it to end the whole job.
  if (base::Status s = comm::MpiWorld::instance().init(&argc, &argv); !s.ok()) std::exit(fail(2, s.message()));
  const std::string err = parse_args(argc, argv, spec, &g_args);
  if (!err.empty()) std::exit(fail(2, err));
  if (g_args.help) {
    std::fputs(help_text(g_prog, usage, spec).c_str(), stdout);
    std::exit(0);
  }
  if (g_args.version) {
    std::fputs(version_text(g_prog).c_str(), stdout);
    std::exit(0);
  }
  if (FLAGS_threads < 0) std::exit(fail(2, "--threads must be 0 (the usable cores) or more"));
  if (FLAGS_pp < 1) std::exit(fail(2, "--pp must be at least 1"));
  if (!(FLAGS_comm_timeout > 0 && FLAGS_comm_timeout <= 86400))
    std::exit(fail(2, "--comm_timeout must be a number of seconds in (0, 86400]"));
  FLAGS_logtostderr = true;
  FLAGS_minloglevel = 2;  // errors only: the library reports through Status
  google::InitGoogleLogging(g_prog);
  g_main_thread = pthread_self();
  std::signal(SIGINT, on_sigint);
  kernel::set_cpu_threads(FLAGS_threads);
}

const ParsedArgs& args() { return g_args; }

std::string refuse_if_given(std::initializer_list<const char*> flags, const std::string& why) {
  for (const char* f : flags)
    if (g_args.was_given(f)) return std::string("--") + f + " " + why;
  return "";
}

bool interrupted() { return g_interrupted.load(); }
void clear_interrupt() { g_interrupted = false; }

uint64_t clock_seed() {
  uint64_t seed = (uint64_t)std::chrono::high_resolution_clock::now().time_since_epoch().count();
  // Every process samples with rank 0's seed (each samples the same token from the same logits).
  if (base::Status s = comm::MpiWorld::instance().broadcast(&seed, sizeof seed, 0); !s.ok()) std::exit(fail(1, s.message()));
  return seed;
}

int process_count() { return comm::MpiWorld::instance().size(); }
bool is_output_rank() { return comm::MpiWorld::instance().rank() == 0; }

std::string share_text(std::string* text) {
  comm::MpiWorld& mpi = comm::MpiWorld::instance();
  if (mpi.size() <= 1) return "";
  uint64_t n = text->size();
  if (base::Status s = mpi.broadcast(&n, sizeof n, 0); !s.ok()) return s.message();
  text->resize(n);
  const base::Status s = mpi.broadcast(text->data(), n, 0);
  return s.ok() ? "" : s.message();
}

void print_stats(const runtime::GenerateStats& s, uint64_t seed) {
  std::fprintf(stderr,
               "[stats] prompt tokens %d, generated %d, time to first token %.1f ms, prefill %.1f tok/s, "
               "decode %.1f tok/s, stop: %s, seed %llu\n",
               s.prompt_tokens, s.generated_tokens, s.prefill_ms, s.prefill_tok_per_s(), s.decode_tok_per_s(),
               s.stop_reason.c_str(), (unsigned long long)seed);
}

std::string foreign_model_hint(const std::string& path) {
  const std::string convert = "python3 tools/export.py --hf ";
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return "";
  if (S_ISDIR(st.st_mode)) {
    if (!is_file(path + "/config.json")) return "";
    return path + " is a Hugging Face model folder; convert it first: " + convert + path + " " +
           basename_of(path) + ".bin";
  }
  char head[16] = {0};
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return "";
  const ssize_t got = ::read(fd, head, sizeof(head));
  ::close(fd);
  if (got < 9) return "";
  const std::string folder = dirname_of(path);
  const std::string from_folder = is_file(folder + "/config.json")
                                      ? "convert its Hugging Face folder: " + convert + folder + " " + basename_of(folder) + ".bin"
                                      : "convert the Hugging Face folder it came from (config.json, *.safetensors, "
                                        "tokenizer): " + convert + "FOLDER OUT.bin";
  // safetensors: a little-endian u64 header length, then the JSON header itself.
  if (head[8] == '{' && (head[7] == 0 && head[6] == 0))
    return path + " is a safetensors file; llama_infer reads its own format: " + from_folder;
  if (std::memcmp(head, "PK\x03\x04", 4) == 0)
    return path + " looks like a PyTorch checkpoint (a zip archive), which llama_infer does not read; " + from_folder;
  return "";
}

std::string open_model_file(std::unique_ptr<model::ModelFile>* file) {
  if (FLAGS_model.empty()) return "--model is required (see --help)";
  if (auto hint = foreign_model_hint(FLAGS_model); !hint.empty()) return hint;
  const base::Status s = model::ModelFile::open(FLAGS_model, file);
  return s.ok() ? "" : s.message();
}

bool uses_cpu() {
  if (FLAGS_device.empty()) return !has_gpu();
  return FLAGS_device == "cpu";
}

std::string device_options(model::ModelOptions* opts, const std::string& dtype_flag) {
  const std::string device = FLAGS_device.empty() ? (has_gpu() ? "cuda" : "cpu") : FLAGS_device;
  if (device == "cpu") {
    opts->device = base::DeviceType::kCPU;
  } else if (device == "cuda") {
#ifndef KUIPER_WITH_CUDA
    return "--device cuda: this build has no CUDA support (rebuild with -DKUIPER_WITH_CUDA=ON)";
#endif
    if (!has_gpu()) return "--device cuda: no CUDA GPU is visible";
    opts->device = base::DeviceType::kCUDA;
  } else {
    return "--device must be cpu or cuda (got '" + device + "')";
  }
  const bool cpu = opts->device == base::DeviceType::kCPU;
  if (cpu) {
    if (auto e = refuse_if_given({"cuda_graph", "allreduce"}, "does nothing on the CPU (it is for --device cuda)");
        !e.empty())
      return e;
  } else {
    if (auto e = refuse_if_given({"threads"}, "does nothing with --device cuda (it sets the CPU kernels' threads)"); !e.empty())
      return e;
  }
  const std::string dtype = dtype_flag.empty() ? (cpu ? "fp32" : "bf16") : dtype_flag;
  if (!base::parse_dtype(dtype, &opts->act_dtype) || opts->act_dtype == base::DType::kInt8 ||
      opts->act_dtype == base::DType::kInt32)
    return "--dtype must be fp32, fp16 or bf16 (got '" + dtype + "')";
  runtime::AllReduce ar;
  if (!runtime::parse_all_reduce(FLAGS_allreduce, &ar))
    return "--allreduce must be auto, custom or nccl (got '" + FLAGS_allreduce + "')";
  if (FLAGS_max_seq_len < 0) return "--max_seq_len must be positive";
  opts->max_seq_len = FLAGS_max_seq_len;
  opts->cuda_graph = FLAGS_cuda_graph;
  return "";
}

int tp_flag() {
  char* end = nullptr;
  const long v = std::strtol(FLAGS_tp.c_str(), &end, 10);
  return end != FLAGS_tp.c_str() && *end == '\0' && v >= 1 && v <= 4096 ? (int)v : 0;
}

runtime::TpOptions tp_options() {
  runtime::TpOptions tp;
  tp.world = tp_flag();
  tp.pp = FLAGS_pp;
  tp.timeout_ms = (int)(FLAGS_comm_timeout * 1000);
  runtime::parse_all_reduce(FLAGS_allreduce, &tp.all_reduce);  // checked by device_options()
  return tp;
}

std::string open_tokenizer(const model::ModelFile* file, std::unique_ptr<model::Tokenizer>* tok) {
  if (!FLAGS_tokenizer.empty()) {
    const base::Status s = model::load_tokenizer_file(FLAGS_tokenizer, tok);
    return s.ok() ? "" : s.message();
  }
  std::unique_ptr<model::ModelFile> opened;
  if (file == nullptr) {
    if (FLAGS_model.empty()) return "--tokenizer or --model is required";
    if (auto err = open_model_file(&opened); !err.empty()) return err;
    file = opened.get();
  }
  if (file->tokenizer_type() == model::TokenizerType::kNone)
    return file->path() + " has no embedded tokenizer: pass --tokenizer";
  const base::Status s = model::load_model_tokenizer(*file, tok);
  return s.ok() ? "" : s.message();
}

int open_engine(Engine* e, const std::function<std::string(const model::ModelConfig&, model::ModelOptions*)>& adjust) {
  model::ModelOptions opts;
  if (FLAGS_model.empty()) return fail(2, "--model is required (see --help)");
  if (auto err = device_options(&opts, FLAGS_dtype); !err.empty()) return fail(2, err);
  if (tp_flag() < 1) return fail(2, "--tp must be one number, at least 1 (got '" + FLAGS_tp + "')");
  if (auto err = open_model_file(&e->file); !err.empty()) return fail(1, err);
  if (auto err = open_tokenizer(e->file.get(), &e->tokenizer); !err.empty())
    return fail(e->file->tokenizer_type() == model::TokenizerType::kNone && FLAGS_tokenizer.empty() ? 2 : 1, err);
  if (e->tokenizer->vocab_size() != e->file->config().vocab_size)
    return fail(1, "tokenizer " + (FLAGS_tokenizer.empty() ? "embedded in " + FLAGS_model : FLAGS_tokenizer) + " has " +
                       std::to_string(e->tokenizer->vocab_size()) + " tokens but the model " + FLAGS_model +
                       " expects " + std::to_string(e->file->config().vocab_size));
  const bool show_progress = isatty(2) && e->file->file_size() > (256u << 20);
  if (show_progress) {
    opts.load_progress = [](uint64_t done, uint64_t all) {
      std::fprintf(stderr, "\rloading weights: %3d%% (%llu / %llu MiB)", (int)(100.0 * done / all),
                   (unsigned long long)(done >> 20), (unsigned long long)(all >> 20));
      if (done == all) std::fprintf(stderr, "\n");
    };
  }
  if (adjust)
    if (auto err = adjust(e->file->config(), &opts); !err.empty()) return fail(2, err);
  if (auto s = runtime::TpRunner::create(*e->file, opts, tp_options(), &e->runner); !s.ok()) return fail(1, s.message());
  return 0;
}

}  // namespace app
