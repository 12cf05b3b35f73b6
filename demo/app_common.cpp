#include "app_common.h"

#include <gflags/gflags.h>
#include <glog/logging.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>

#include "op/kernels.h"

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>

#include "base/cuda_utils.h"
#endif

DEFINE_string(model, "", "model file: the project's .bin format (tools/export.py) or a llama2.c checkpoint");
DEFINE_string(tokenizer, "", "tokenizer file (.model); default: the one embedded in --model");
DEFINE_string(device, "", "cpu or cuda (default: cuda when a GPU is visible)");
DEFINE_int32(tp, 1, "tensor-parallel ranks (GPUs)");
DEFINE_int32(max_seq_len, 0, "context length to allocate the KV cache for (0 = the model's)");
DEFINE_bool(cuda_graph, true, "capture the decode step once as a CUDA graph and replay it (off: plain launches, for debugging)");
DEFINE_int32(threads, 0, "CPU threads (0: the cores this process may use, from its affinity mask)");
DEFINE_string(dtype, "", "activation and KV-cache dtype: fp32, fp16 or bf16 (default: fp32 on cpu, bf16 on cuda)");

DECLARE_bool(help);
DECLARE_bool(helpshort);

namespace app {

namespace {
std::atomic<bool> g_interrupted{false};
const char* g_prog = "llama_infer";

void on_sigint(int) {
  if (g_interrupted.exchange(true)) _exit(130);  // second Ctrl-C: leave now
}

bool has_gpu() {
#ifdef KUIPER_WITH_CUDA
  return base::cuda_device_count() > 0;
#else
  return false;
#endif
}
}  // namespace

int fail(int code, const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "%s: error: %s\n", g_prog, message.c_str());
  return code;
}

void init(int* argc, char*** argv, const char* usage) {
  static const std::string prog = [&] {
    const std::string p = (*argv)[0];
    return p.substr(p.find_last_of('/') + 1);
  }();
  g_prog = prog.c_str();
  gflags::SetUsageMessage(usage);
  gflags::ParseCommandLineNonHelpFlags(argc, argv, true);
  if (FLAGS_help || FLAGS_helpshort) {
    // Only our own flags, not those of the libraries.
    std::printf("%s: %s\n\nflags:\n", g_prog, usage);
    std::vector<gflags::CommandLineFlagInfo> flags;
    gflags::GetAllFlags(&flags);
    for (const auto& f : flags) {
      if (f.filename.find("demo/") == std::string::npos) continue;
      std::string def = f.default_value.empty() ? "\"\"" : f.default_value;
      if (f.type == "double") {  // gflags prints 0.80000000000000004
        char buf[32];
        std::snprintf(buf, sizeof(buf), "%g", std::stod(def));
        def = buf;
      }
      std::printf("  --%s (%s) default: %s\n      %s\n", f.name.c_str(), f.type.c_str(), def.c_str(),
                  f.description.c_str());
    }
    std::exit(0);
  }
  if (*argc > 1) std::exit(fail(2, std::string("unexpected argument '") + (*argv)[1] + "' (flags take the form --name=value or --name value)"));
  FLAGS_logtostderr = true;
  FLAGS_minloglevel = 2;  // errors only: the library reports through Status
  google::InitGoogleLogging(g_prog);
  std::signal(SIGINT, on_sigint);
  kernel::set_cpu_threads(FLAGS_threads);
}

bool interrupted() { return g_interrupted.load(); }

uint64_t clock_seed() {
  return (uint64_t)std::chrono::high_resolution_clock::now().time_since_epoch().count();
}

void print_stats(const model::GenerateStats& s) {
  std::fprintf(stderr,
               "[stats] prompt tokens %d, generated %d, time to first token %.1f ms, prefill %.1f tok/s, "
               "decode %.1f tok/s, stop: %s\n",
               s.prompt_tokens, s.generated_tokens, s.prefill_ms, s.prefill_tok_per_s(), s.decode_tok_per_s(),
               s.stop_reason.c_str());
}

std::string open_model_file(std::unique_ptr<model::ModelFile>* file) {
  if (FLAGS_model.empty()) return "--model is required (see --help)";
  const base::Status s = model::ModelFile::open(FLAGS_model, file);
  return s.ok() ? "" : s.message();
}

std::string device_options(model::ModelOptions* opts) {
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
  const std::string dtype = FLAGS_dtype.empty() ? (opts->device == base::DeviceType::kCPU ? "fp32" : "bf16") : FLAGS_dtype;
  if (!base::parse_dtype(dtype, &opts->act_dtype) || opts->act_dtype == base::DType::kInt8 ||
      opts->act_dtype == base::DType::kInt32)
    return "--dtype must be fp32, fp16 or bf16 (got '" + dtype + "')";
  if (FLAGS_tp < 1) return "--tp must be at least 1";
  if (FLAGS_max_seq_len < 0) return "--max_seq_len must be positive";
  opts->max_seq_len = FLAGS_max_seq_len;
  opts->cuda_graph = FLAGS_cuda_graph;
  return "";
}

int tp_flag() { return FLAGS_tp; }

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
  const base::Status s = model::load_tokenizer_blob(file->tokenizer_type(), file->tokenizer_blob(), file->path(), tok);
  return s.ok() ? "" : s.message();
}

int open_engine(Engine* e) {
  model::ModelOptions opts;
  if (FLAGS_model.empty()) return fail(2, "--model is required (see --help)");
  if (auto err = device_options(&opts); !err.empty()) return fail(2, err);
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
  if (auto s = model::TpRunner::create(*e->file, opts, FLAGS_tp, &e->runner); !s.ok()) return fail(1, s.message());
  return 0;
}

}  // namespace app
