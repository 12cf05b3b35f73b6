// llama_bench: prefill and decode speed of a model file, or of a synthetic model of a named shape
// whose random weights are made on the device (no file needed), next to the bandwidth limit.
//
//   llama_bench --shape llama2-7b --weights fp16 --prompt_len 16 --gen 128 --reps 3
//   llama_bench -m x.bin -p 16,128 -n 64,256 -o md        (every combination of the lists, a table)
//
// Batch-1 decode reads every weight (and the KV cache up to the current position) once per token, so
// its limit is  tokens/s <= copy bandwidth / bytes read per token.  The copy bandwidth is measured
// here, on this device: a large device-to-device copy on a GPU, a memcpy larger than the last-level
// cache on the CPU (by as many threads as the kernels use), counting bytes read + bytes written.
//
// Lists (comma-separated) for --weights, --dtype, --tp, --prompt_len and --gen run every combination:
// the model is loaded once per (weights, dtype, tp) and every (prompt_len, gen) runs on it. Results
// go to stdout as text, a Markdown table, JSON or CSV (-o); progress goes to stderr.
//
// Under mpirun (--tp T --pp P, -np T x P) every process runs its rank and rank 0 prints: times are the
// slowest process's, weights / KV cache / workspace the sum over processes, and with --pp a `stages`
// line gives the latency of handing the hidden state from one stage to the next.
#include <gflags/gflags.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "app_common.h"
#include "comm/mpi_world.h"
#include "model/model_file.h"
#include "runtime/comm_timing.h"
#include "runtime/tp_runner.h"
#include "op/kernels.h"

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>
#endif

DEFINE_string(shape, "", "synthetic model: llama2-7b, llama2-13b, llama3-8b, llama3.1-8b, llama3-70b, tiny (instead of --model)");
DEFINE_string(weights, "fp16", "weight dtype of a synthetic model: fp32, fp16, bf16 or int8 (comma list)");
DEFINE_int32(group_size, 64, "int8 group size of a synthetic model");
DEFINE_string(prompt_len, "16", "prompt tokens (prefill) (comma list)");
DEFINE_string(gen, "128", "generated tokens (decode) (comma list)");
DEFINE_int32(reps, 3, "repetitions; the median is reported");
DEFINE_string(output, "text", "output format: text, md, json or csv");
DECLARE_bool(cuda_graph);
DECLARE_string(dtype);
DECLARE_string(tp);
DECLARE_string(model);

namespace {

using Clock = std::chrono::steady_clock;
double ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }
constexpr double kGiB = 1073741824.0;

const app::ArgSpec& spec() {
  static const app::ArgSpec s = app::with_common_aliases({{"-p", "prompt_len"},
                                                          {"--n-prompt", "prompt_len"},
                                                          {"-n", "gen"},
                                                          {"--n-gen", "gen"},
                                                          {"-r", "reps"},
                                                          {"--repetitions", "reps"},
                                                          {"-o", "output"}});
  return s;
}

bool named_shape(const std::string& name, model::ModelConfig* c) {
  // rope_factor > 0: Llama 3.1's RoPE frequency scaling (factor 8 over an original context of 8192),
  // for long-context runs (e.g. --prompt_len 32640 --gen 128).
  struct S { int dim, hidden, layers, heads, kv, vocab, ctx; float theta; model::Family fam; float rope_factor = 0.f; };
  static const std::map<std::string, S> shapes = {
      {"tiny", {64, 172, 5, 8, 4, 512, 512, 10000.f, model::Family::kLlama2}},
      {"llama2-7b", {4096, 11008, 32, 32, 32, 32000, 4096, 10000.f, model::Family::kLlama2}},
      {"llama2-13b", {5120, 13824, 40, 40, 40, 32000, 4096, 10000.f, model::Family::kLlama2}},
      {"llama3-8b", {4096, 14336, 32, 32, 8, 128256, 8192, 500000.f, model::Family::kLlama3}},
      {"llama3-70b", {8192, 28672, 80, 64, 8, 128256, 8192, 500000.f, model::Family::kLlama3}},
      {"llama3.1-8b", {4096, 14336, 32, 32, 8, 128256, 131072, 500000.f, model::Family::kLlama3, 8.f}},
  };
  auto it = shapes.find(name);
  if (it == shapes.end()) return false;
  const S& s = it->second;
  c->family = s.fam;
  c->dim = s.dim;
  c->hidden_dim = s.hidden;
  c->n_layers = s.layers;
  c->n_heads = s.heads;
  c->n_kv_heads = s.kv;
  c->head_dim = s.dim / s.heads;
  c->vocab_size = s.vocab;
  c->max_seq_len = s.ctx;
  c->rope_theta = s.theta;
  if (s.rope_factor > 0.f) {
    c->rope_scaling.enabled = true;
    c->rope_scaling.factor = s.rope_factor;
    c->rope_scaling.low_freq_factor = 1.f;
    c->rope_scaling.high_freq_factor = 4.f;
    c->rope_scaling.original_max_position = 8192;
  }
  c->bos_id = 1;
  c->eos_ids = {2};
  return true;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

// A comma list of integers >= 1 ("16,128"); "" or the error.
std::string int_list(const std::string& flag, const std::string& text, std::vector<int>* out) {
  for (const std::string& item : split_list(text)) {
    char* end = nullptr;
    const long v = std::strtol(item.c_str(), &end, 10);
    if (*end != '\0' || v < 1 || v > 1 << 24) return "--" + flag + " takes integers >= 1, comma-separated (got '" + text + "')";
    out->push_back((int)v);
  }
  if (out->empty()) return "--" + flag + " needs at least one value";
  return "";
}

// Copy bandwidth in GB/s, counting bytes read plus written.
// GPU: a 1 GiB device-to-device copy. CPU: memcpy of 512 MiB (more than the last-level cache) split
// over `threads` threads, the best of three after a warm-up.
double copy_bandwidth_gbs(bool cuda, int threads) {
  if (!cuda) {
    const size_t bytes = size_t(512) << 20;
    std::vector<char> a(bytes, 1), b(bytes, 0);  // written once: the pages exist before the timing
    auto copy = [&] {
      std::vector<std::thread> team;
      for (int t = 0; t < threads; ++t)
        team.emplace_back([&, t] {
          const size_t b0 = bytes * t / threads, b1 = bytes * (t + 1) / threads;
          std::memcpy(b.data() + b0, a.data() + b0, b1 - b0);
        });
      for (auto& th : team) th.join();
    };
    copy();
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t0 = Clock::now();
      copy();
      best = std::min(best, ms(t0, Clock::now()));
    }
    return 2.0 * bytes / (best * 1e-3) / 1e9;
  }
#ifdef KUIPER_WITH_CUDA
  const size_t bytes = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
    cudaGetLastError();
    if (a) cudaFree(a);
    return 0;
  }
  cudaMemset(a, 1, bytes);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);  // warm-up
  cudaEventRecord(e0);
  const int reps = 10;
  for (int i = 0; i < reps; ++i) cudaMemcpy(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice);
  cudaEventRecord(e1);
  cudaEventSynchronize(e1);
  float t = 0;
  cudaEventElapsedTime(&t, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes * reps / (t * 1e-3) / 1e9;
#else
  return 0;
#endif
}

size_t device_used_bytes(bool cuda) {
#ifdef KUIPER_WITH_CUDA
  if (!cuda) return 0;
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  return total_b - free_b;
#else
  (void)cuda;
  return 0;
#endif
}

// This process's resident memory (VmRSS): weights, KV cache, workspace, and the program itself.
size_t process_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return (size_t)std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
  return 0;
}

// The communication of a decode token, timed on its own: its milliseconds (2 x n_layers all-reduces of
// [1, dim] and one all-gather of the logits; decode time minus this is the compute share, since batch-1
// decode cannot overlap the two), and the latency of one all-reduce of 8 KB and of 16 KB (the [1, dim]
// vector of a 7B/8B and of a 70B model in 16 bits) inside a CUDA graph, as the decode graph issues
// them. All -1 without a communicator (one rank).
base::Status measure_comm(runtime::TpRunner& runner, base::DType act, double* comm_ms, double* ar8_us,
                          double* ar16_us) {
  *comm_ms = *ar8_us = *ar16_us = -1;
  if (runner.comm(0) == nullptr) return base::Status::Ok();
  const int64_t esz = (int64_t)base::dtype_size(act);
  KP_RETURN_IF_ERROR(runtime::time_decode_comm_ms(runner, comm_ms));
  KP_RETURN_IF_ERROR(runtime::time_all_reduce_us(runner, 8192 / esz, act, ar8_us));
  return runtime::time_all_reduce_us(runner, 16384 / esz, act, ar16_us);
}

// Median prefill and decode times (ms) over --reps runs after one warm-up run (graph capture, cuBLAS
// handles): a random prompt of `prompt_len` tokens, then `gen` greedy tokens.
base::Status time_run(runtime::TpRunner& runner, const model::ModelConfig& cfg, int prompt_len, int gen,
                      double* prefill_ms, double* decode_ms) {
  std::mt19937 rng(1234);
  std::vector<int32_t> prompt(prompt_len);
  for (auto& t : prompt) t = (int32_t)(rng() % cfg.vocab_size);
  std::vector<double> pf, dc;
  for (int rep = 0; rep <= FLAGS_reps; ++rep) {
    std::vector<double> p(runner.world_size()), d(runner.world_size());
    KP_RETURN_IF_ERROR(runner.run([&](int rank) -> base::Status {
      model::LlamaModel& m = runner.model(rank);
      std::vector<float> logits(cfg.vocab_size);
      auto t0 = Clock::now();
      KP_RETURN_IF_ERROR(m.prefill(prompt, 0, logits.data()));
      auto t1 = Clock::now();
      int32_t tok = prompt.back();
      for (int i = 0; i < gen; ++i) KP_RETURN_IF_ERROR(m.decode_greedy(tok, prompt_len + i, &tok));
      auto t2 = Clock::now();
      p[rank] = ms(t0, t1);
      d[rank] = ms(t1, t2);
      return base::Status::Ok();
    }));
    if (rep > 0) {
      double pm = *std::max_element(p.begin(), p.end()), dm = *std::max_element(d.begin(), d.end());
      KP_RETURN_IF_ERROR(comm::MpiWorld::instance().max(&pm));  // under mpirun: the slowest process
      KP_RETURN_IF_ERROR(comm::MpiWorld::instance().max(&dm));
      pf.push_back(pm);
      dc.push_back(dm);
    }
  }
  *prefill_ms = median(pf);
  *decode_ms = median(dc);
  return base::Status::Ok();
}

// One result: a (weights, dtype, tp, prompt_len, gen) combination.
struct Row {
  std::string model, config, weights, act, device;
  int tp = 1, pp = 1, threads = 0, prompt_len = 0, gen = 0;
  int n_layers = 0, dim = 0;  // for the split line
  bool cuda_graph = false;
  double load_ms = 0, prefill_ms = 0, decode_ms = 0;
  double gb_per_token = 0, achieved_gbs = 0, copy_gbs = 0;
  // memory: device memory in use by the model (GPU), or this process's resident memory after the run (CPU)
  double weights_gib = 0, kv_gib = 0, ws_gib = 0, memory_gib = 0;
  double comm_ms = -1, ar8_us = -1, ar16_us = -1;  // measure_comm()
  double p2p8_us = -1, p2p16_us = -1;               // stage to stage, under mpirun with --pp
  std::string all_reduce;                            // TpRunner::all_reduce_used()
  double prefill_tps() const { return prompt_len * 1e3 / prefill_ms; }
  double decode_tps() const { return gen * 1e3 / decode_ms; }
  double pct_of_copy() const { return copy_gbs > 0 ? 100.0 * achieved_gbs / copy_gbs : 0; }
};

void print_text(const Row& r, bool first) {
  if (!first) std::printf("\n");
  std::printf("model       %s\n", r.model.c_str());
  std::printf("config      %s\n", r.config.c_str());
  std::printf("device      %s x%d%s, activations %s, %s, all-reduce %s\n", r.device.c_str(), r.tp,
              r.pp > 1 ? (" x pp " + std::to_string(r.pp) + " (processes)").c_str() : "", r.act.c_str(),
              r.device == "cpu" ? ("threads " + std::to_string(r.threads)).c_str()
                                : (std::string("cuda_graph ") + (r.cuda_graph ? "on" : "off")).c_str(),
              r.all_reduce.c_str());
  std::printf("load        %.0f ms\n", r.load_ms);
  std::printf("memory      weights %.2f GiB, KV cache %.3f GiB, workspace %.3f GiB (%.1f%% of weights), %s %.2f GiB\n",
              r.weights_gib, r.kv_gib, r.ws_gib, 100.0 * r.ws_gib / r.weights_gib,
              r.device == "cpu" ? "resident memory added by the model (RSS)" : "device memory in use by the model",
              r.memory_gib);
  std::printf("prefill     %d tokens: %.2f ms median of %d = %.1f tokens/s\n", r.prompt_len, r.prefill_ms, FLAGS_reps,
              r.prefill_tps());
  std::printf("decode      %d tokens: %.2f ms/token = %.1f tokens/s\n", r.gen, r.decode_ms / r.gen, r.decode_tps());
  if (r.comm_ms >= 0)
    std::printf("split       communication %.3f ms/token (%d all-reduces of [1, %d] + 1 all-gather, timed alone), "
                "compute %.3f ms/token\n",
                r.comm_ms, 2 * r.n_layers, r.dim, std::max(0.0, r.decode_ms / r.gen - r.comm_ms));
  if (r.ar8_us >= 0)
    std::printf("all-reduce  one of 8 KB: %.1f us, one of 16 KB: %.1f us (%s, %s)\n", r.ar8_us, r.ar16_us, r.act.c_str(),
                r.device == "cuda" ? "inside a CUDA graph" : "plain calls on the CPU");
  if (r.p2p8_us >= 0)
    std::printf("stages      one transfer to the next stage of 8 KB: %.1f us, of 16 KB: %.1f us (%s, one way)\n",
                r.p2p8_us, r.p2p16_us, r.device == "cuda" ? "NCCL send / recv inside a CUDA graph" : "MPI");
  std::printf("bandwidth   %.3f GB read per token -> %.1f GB/s achieved", r.gb_per_token, r.achieved_gbs);
  if (r.copy_gbs > 0)
    std::printf(" of %.1f GB/s measured copy bandwidth = %.1f%% (limit %.1f tokens/s)", r.copy_gbs, r.pct_of_copy(),
                r.copy_gbs / r.gb_per_token);
  std::printf("\n");
}

const std::vector<std::string> kColumns = {
    "model", "weights", "dtype", "device", "tp", "threads", "prompt_len", "gen", "prefill_tok_s", "decode_tok_s",
    "ms_per_token", "gb_per_token", "achieved_gb_s", "copy_gb_s", "pct_of_copy", "weights_gib", "kv_gib",
    "workspace_gib", "memory_gib", "comm_ms_per_token", "all_reduce", "all_reduce_8kb_us", "all_reduce_16kb_us",
    "pp", "stage_transfer_8kb_us", "stage_transfer_16kb_us"};

std::vector<std::string> cells(const Row& r) {
  auto f = [](double v, int digits) {
    char b[64];
    std::snprintf(b, sizeof(b), "%.*f", digits, v);
    return std::string(b);
  };
  return {r.model, r.weights, r.act, r.device, std::to_string(r.tp), std::to_string(r.threads),
          std::to_string(r.prompt_len), std::to_string(r.gen), f(r.prefill_tps(), 1), f(r.decode_tps(), 1),
          f(r.decode_ms / r.gen, 3), f(r.gb_per_token, 4), f(r.achieved_gbs, 2), f(r.copy_gbs, 1),
          f(r.pct_of_copy(), 1), f(r.weights_gib, 3), f(r.kv_gib, 4), f(r.ws_gib, 4), f(r.memory_gib, 3),
          r.comm_ms >= 0 ? f(r.comm_ms, 4) : "", r.all_reduce, r.ar8_us >= 0 ? f(r.ar8_us, 2) : "",
          r.ar16_us >= 0 ? f(r.ar16_us, 2) : "", std::to_string(r.pp), r.p2p8_us >= 0 ? f(r.p2p8_us, 2) : "",
          r.p2p16_us >= 0 ? f(r.p2p16_us, 2) : ""};
}

std::string json_string(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if ((unsigned char)c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof(b), "\\u%04x", c);
      o += b;
    } else o += c;
  }
  return o + "\"";
}

std::string csv_cell(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string o = "\"";
  for (char c : s) o += c == '"' ? std::string("\"\"") : std::string(1, c);
  return o + "\"";
}

void print_rows(const std::vector<Row>& rows) {
  if (FLAGS_output == "text") {
    for (size_t i = 0; i < rows.size(); ++i) print_text(rows[i], i == 0);
    return;
  }
  if (FLAGS_output == "json") {
    std::printf("[\n");
    for (size_t i = 0; i < rows.size(); ++i) {
      const std::vector<std::string> c = cells(rows[i]);
      std::printf("  {");
      for (size_t j = 0; j < kColumns.size(); ++j) {
        const bool text = j < 4 || kColumns[j] == "all_reduce";  // model, weights, dtype, device, all_reduce
        const std::string v = text ? json_string(c[j]) : (c[j].empty() ? "null" : c[j]);
        std::printf("%s\"%s\": %s", j ? ", " : "", kColumns[j].c_str(), v.c_str());
      }
      std::printf("}%s\n", i + 1 < rows.size() ? "," : "");
    }
    std::printf("]\n");
    return;
  }
  const bool md = FLAGS_output == "md";
  auto line = [&](const std::vector<std::string>& v) {
    std::string s = md ? "| " : "";
    for (size_t j = 0; j < v.size(); ++j) s += (j ? (md ? " | " : ",") : "") + (md ? v[j] : csv_cell(v[j]));
    std::printf("%s%s\n", s.c_str(), md ? " |" : "");
  };
  line(kColumns);
  if (md) line(std::vector<std::string>(kColumns.size(), "---"));
  for (const Row& r : rows) line(cells(r));
}

// A line on stderr while the weights are made or loaded: updated in place on a terminal, else one
// line when it starts and one when it is done.
std::function<void(uint64_t, uint64_t)> progress_line(const std::string& what) {
  const bool tty = isatty(2);
  auto t0 = std::make_shared<Clock::time_point>(Clock::now());
  auto started = std::make_shared<bool>(false);
  return [=](uint64_t done, uint64_t all) {
    const double s = ms(*t0, Clock::now()) / 1e3;
    if (tty) {
      std::fprintf(stderr, "\r%s: %3d%% (%.2f / %.2f GiB, %.0f s)", what.c_str(), (int)(100.0 * done / all),
                   done / kGiB, all / kGiB, s);
      if (done == all) std::fprintf(stderr, "\n");
    } else if (!*started) {
      std::fprintf(stderr, "%s (%.2f GiB) ...\n", what.c_str(), all / kGiB);
    }
    if (!tty && done == all) std::fprintf(stderr, "%s: done in %.1f s\n", what.c_str(), s);
    *started = true;
  };
}

// Refusals and the lists; "" or the error.
std::string check_flags(std::vector<std::string>* weights, std::vector<std::string>* dtypes, std::vector<int>* tps,
                        std::vector<int>* prompts, std::vector<int>* gens) {
  const bool synthetic = !FLAGS_shape.empty();
  if (synthetic && app::args().was_given("model"))
    return "--shape and --model exclude each other (a synthetic model, or a file)";
  if (!synthetic && FLAGS_model.empty()) return "--model or --shape is required (see --help)";
  if (!synthetic) {
    if (auto e = app::refuse_if_given({"weights", "group_size"},
                                      "describes a synthetic model (--shape); with --model the file's weights are used");
        !e.empty())
      return e;
  }
  if (auto e = app::refuse_if_given({"max_seq_len"}, "does nothing in llama_bench (the context is the largest "
                                                     "--prompt_len + --gen)"); !e.empty())
    return e;
  if (auto e = app::refuse_if_given({"tokenizer"}, "does nothing in llama_bench (token ids are random)"); !e.empty())
    return e;
  if (FLAGS_output != "text" && FLAGS_output != "md" && FLAGS_output != "json" && FLAGS_output != "csv")
    return "-o/--output must be text, md, json or csv (got '" + FLAGS_output + "')";
  if (FLAGS_reps < 1) return "--reps must be at least 1";
  if (auto e = int_list("prompt_len", FLAGS_prompt_len, prompts); !e.empty()) return e;
  if (auto e = int_list("gen", FLAGS_gen, gens); !e.empty()) return e;
  if (auto e = int_list("tp", FLAGS_tp, tps); !e.empty()) return e;
  if (app::process_count() > 1 && tps->size() != 1)
    return "--tp takes one value under mpirun (the processes are --tp x --pp, fixed by -np)";
  *weights = synthetic ? split_list(FLAGS_weights) : std::vector<std::string>{""};
  *dtypes = split_list(FLAGS_dtype);
  if (dtypes->empty()) dtypes->push_back("");  // the device's default
  for (const std::string& w : *weights) {
    base::DType t;
    if (synthetic && (!base::parse_dtype(w, &t) || t == base::DType::kInt32))
      return "--weights must be fp32, fp16, bf16 or int8, comma-separated (got '" + FLAGS_weights + "')";
  }
  if (weights->empty()) return "--weights needs at least one value";
  return "";
}

int run() {
  std::vector<std::string> weights, dtypes;
  std::vector<int> tps, prompts, gens;
  if (auto e = check_flags(&weights, &dtypes, &tps, &prompts, &gens); !e.empty()) return app::fail(2, e);
  const int max_prompt = *std::max_element(prompts.begin(), prompts.end());
  const int ctx = max_prompt + *std::max_element(gens.begin(), gens.end());

  std::map<bool, double> copy_bw;  // measured once per device kind
  std::vector<Row> rows;
  for (const std::string& w : weights) {
    std::unique_ptr<model::ModelFile> file;
    model::ModelConfig cfg;
    if (!FLAGS_shape.empty()) {
      if (!named_shape(FLAGS_shape, &cfg))
        return app::fail(2, "unknown --shape '" + FLAGS_shape + "' (llama2-7b, llama2-13b, llama3-8b, llama3.1-8b, llama3-70b, tiny)");
      base::parse_dtype(w, &cfg.weight_dtype);
      cfg.group_size = cfg.weight_dtype == base::DType::kInt8 ? FLAGS_group_size : 0;
      if (auto s = model::ModelFile::synthetic(cfg, &file); !s.ok()) return app::fail(2, s.message());
    } else if (auto s = app::open_model_file(&file); !s.empty()) {
      return app::fail(1, s);
    }
    cfg = file->config();
    if (ctx > cfg.max_seq_len)
      return app::fail(2, "--prompt_len + --gen (" + std::to_string(ctx) + ") exceeds the model's context of " +
                              std::to_string(cfg.max_seq_len));
    for (const std::string& dt : dtypes) {
      for (int tp : tps) {
        model::ModelOptions opts;
        if (auto err = app::device_options(&opts, dt); !err.empty()) return app::fail(2, err);
        opts.max_batch_tokens = max_prompt;
        opts.max_seq_len = ctx;
        const bool cuda = opts.device == base::DeviceType::kCUDA;
        if (!copy_bw.count(cuda)) copy_bw[cuda] = app::is_output_rank() ? copy_bandwidth_gbs(cuda, kernel::cpu_threads()) : 0;
        const std::string name = FLAGS_shape.empty() ? file->path() : FLAGS_shape + " (synthetic)";
        const std::string wname = base::dtype_name(cfg.weight_dtype);
        opts.load_progress = progress_line((FLAGS_shape.empty() ? "loading weights of " : "making weights of ") +
                                           name + " (" + wname + ") on " + (cuda ? "cuda" : "cpu"));
        const size_t used0 = device_used_bytes(cuda), rss0 = process_rss_bytes();
        std::unique_ptr<runtime::TpRunner> runner;
        const auto t_load = Clock::now();
        runtime::TpOptions tpo = app::tp_options();  // --allreduce
        tpo.world = tp;
        if (auto s = runtime::TpRunner::create(*file, opts, tpo, &runner); !s.ok()) return app::fail(1, s.message());
        Row base_row;
        base_row.load_ms = ms(t_load, Clock::now());
        base_row.model = name;
        base_row.config = cfg.summary();
        base_row.n_layers = cfg.n_layers;
        base_row.dim = cfg.dim;
        base_row.weights = wname;
        base_row.act = base::dtype_name(opts.act_dtype);
        base_row.device = cuda ? "cuda" : "cpu";
        base_row.tp = runner->process() ? runner->process()->layout().tp : runner->world_size();
        base_row.pp = runner->process() ? runner->process()->layout().pp : 1;
        base_row.threads = cuda ? 0 : kernel::cpu_threads();
        base_row.cuda_graph = cuda && FLAGS_cuda_graph;
        base_row.copy_gbs = copy_bw[cuda];
        uint64_t weight_bytes = 0, kv_block = 0, ws = 0;
        for (int r = 0; r < runner->world_size(); ++r) {
          weight_bytes += runner->model(r).weights().bytes;
          kv_block += runner->model(r).kv_cache().bytes();
          ws += runner->model(r).workspace().bytes;
        }
        double sums[3] = {(double)weight_bytes, (double)kv_block, (double)ws};  // over the processes of mpirun
        for (double& v : sums)
          if (auto s = comm::MpiWorld::instance().sum(&v); !s.ok()) return app::fail(1, s.message());
        weight_bytes = (uint64_t)sums[0];
        base_row.weights_gib = sums[0] / kGiB;
        base_row.kv_gib = sums[1] / kGiB;
        base_row.ws_gib = sums[2] / kGiB;
        base_row.memory_gib = cuda ? (device_used_bytes(cuda) - used0) / kGiB : 0;
        base_row.all_reduce = runner->all_reduce_used();
        if (auto s = measure_comm(*runner, opts.act_dtype, &base_row.comm_ms, &base_row.ar8_us, &base_row.ar16_us);
            !s.ok())
          return app::fail(1, s.message());
        if (runner->process() && runner->process()->pipeline()) {
          const int64_t esz = (int64_t)base::dtype_size(opts.act_dtype);
          for (auto [bytes, us] : {std::pair<int64_t, double*>{8192, &base_row.p2p8_us}, {16384, &base_row.p2p16_us}})
            if (auto s = runtime::time_stage_transfer_us(*runner, bytes / esz, opts.act_dtype, us); !s.ok())
              return app::fail(1, s.message());
        }
        for (int p : prompts) {
          for (int g : gens) {
            Row r = base_row;
            r.prompt_len = p;
            r.gen = g;
            if (auto s = time_run(*runner, cfg, p, g, &r.prefill_ms, &r.decode_ms); !s.ok())
              return app::fail(1, s.message());
            // On the CPU after the runs, when every weight page has been read (mapped tensors become
            // resident as they are first used), as growth over the resident memory before loading, so
            // that what the program itself maps (the CUDA libraries of a CUDA build, say) is not counted.
            if (!cuda) {
              const size_t rss = process_rss_bytes();
              r.memory_gib = (double)(rss - std::min(rss0, rss)) / kGiB;
            }
            // Bytes read per decode token: every weight once, plus the KV cache up to the mean position.
            const double mean_pos = p + (g - 1) / 2.0;
            const double kv_bytes = 2.0 * cfg.n_layers * mean_pos * cfg.kv_dim() * base::dtype_size(opts.act_dtype);
            r.gb_per_token = ((double)weight_bytes + kv_bytes) / 1e9;
            r.achieved_gbs = r.gb_per_token * r.decode_tps();
            rows.push_back(r);
            if (FLAGS_output == "text" && app::is_output_rank()) {  // as they come: a long sweep shows its progress
              print_text(r, rows.size() == 1);
              std::fflush(stdout);
            }
          }
        }
      }
    }
  }
  if (FLAGS_output != "text" && app::is_output_rank()) print_rows(rows);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  app::init(argc, argv,
            "prefill and decode speed of a model file or a synthetic model\n"
            "  llama_bench (-m MODEL.bin | --shape llama2-7b) [--weights fp16,int8] [--dtype bf16] [-p 16,512] "
            "[-n 128] [-r 3] [--tp 1,2] [-o text|md|json|csv]",
            spec());
  return run();
}
