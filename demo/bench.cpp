// llama_bench: prefill and decode speed of a model file, or of a synthetic model of a named shape
// whose random weights are made on the device (no file needed), next to the bandwidth limit.
//
//   llama_bench --shape llama2-7b --weights fp16 --prompt_len 16 --gen 128 --reps 3
//
// Batch-1 decode reads every weight (and the KV cache up to the current position) once per token, so
// its limit is  tokens/s <= copy bandwidth / bytes read per token.  The copy bandwidth is measured
// here, on this device, with a large device-to-device copy (bytes read + bytes written).
#include <gflags/gflags.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "app_common.h"
#include "model/model_file.h"
#include "runtime/comm_timing.h"
#include "runtime/tp_runner.h"
#include "op/kernels.h"

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>
#endif

DEFINE_string(shape, "", "synthetic model: llama2-7b, llama2-13b, llama3-8b, llama3-70b, tiny (instead of --model)");
DEFINE_string(weights, "fp16", "weight dtype of a synthetic model: fp32, fp16, bf16 or int8");
DEFINE_int32(group_size, 64, "int8 group size of a synthetic model");
DEFINE_int32(prompt_len, 16, "prompt tokens (prefill)");
DEFINE_int32(gen, 128, "generated tokens (decode)");
DEFINE_int32(reps, 3, "repetitions; the median is reported");
DECLARE_bool(cuda_graph);

namespace {

using Clock = std::chrono::steady_clock;
double ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

bool named_shape(const std::string& name, model::ModelConfig* c) {
  struct S { int dim, hidden, layers, heads, kv, vocab, ctx; float theta; model::Family fam; };
  static const std::map<std::string, S> shapes = {
      {"tiny", {64, 172, 5, 8, 4, 512, 512, 10000.f, model::Family::kLlama2}},
      {"llama2-7b", {4096, 11008, 32, 32, 32, 32000, 4096, 10000.f, model::Family::kLlama2}},
      {"llama2-13b", {5120, 13824, 40, 40, 40, 32000, 4096, 10000.f, model::Family::kLlama2}},
      {"llama3-8b", {4096, 14336, 32, 32, 8, 128256, 8192, 500000.f, model::Family::kLlama3}},
      {"llama3-70b", {8192, 28672, 80, 64, 8, 128256, 8192, 500000.f, model::Family::kLlama3}},
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
  c->bos_id = 1;
  c->eos_ids = {2};
  return true;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Device-to-device copy bandwidth in GB/s, counting bytes read plus written (0 on the CPU).
double copy_bandwidth_gbs(bool cuda) {
#ifdef KUIPER_WITH_CUDA
  if (!cuda) return 0;
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
  (void)cuda;
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

int run() {
  if (FLAGS_prompt_len < 1 || FLAGS_gen < 1 || FLAGS_reps < 1)
    return app::fail(2, "--prompt_len, --gen and --reps must be at least 1");
  model::ModelConfig cfg;
  std::unique_ptr<model::ModelFile> file;
  if (!FLAGS_shape.empty()) {
    if (!named_shape(FLAGS_shape, &cfg))
      return app::fail(2, "unknown --shape '" + FLAGS_shape + "' (llama2-7b, llama2-13b, llama3-8b, llama3-70b, tiny)");
    if (!base::parse_dtype(FLAGS_weights, &cfg.weight_dtype) || cfg.weight_dtype == base::DType::kInt32)
      return app::fail(2, "--weights must be fp32, fp16, bf16 or int8");
    cfg.group_size = cfg.weight_dtype == base::DType::kInt8 ? FLAGS_group_size : 0;
    if (auto s = model::ModelFile::synthetic(cfg, &file); !s.ok()) return app::fail(2, s.message());
  } else if (auto s = app::open_model_file(&file); !s.empty()) {
    return app::fail(1, s);
  }
  cfg = file->config();

  model::ModelOptions opts;
  if (auto err = app::device_options(&opts); !err.empty()) return app::fail(2, err);
  opts.max_batch_tokens = std::max(FLAGS_prompt_len, 1);
  const bool cuda = opts.device == base::DeviceType::kCUDA;
  const int32_t ctx = FLAGS_prompt_len + FLAGS_gen;
  if (ctx > cfg.max_seq_len)
    return app::fail(2, "--prompt_len + --gen (" + std::to_string(ctx) + ") exceeds the model's context of " +
                            std::to_string(cfg.max_seq_len));
  opts.max_seq_len = ctx;

  const double bw = copy_bandwidth_gbs(cuda);
  const size_t used0 = device_used_bytes(cuda);
  std::unique_ptr<runtime::TpRunner> runner;
  const auto t_load = Clock::now();
  if (auto s = runtime::TpRunner::create(*file, opts, app::tp_options(), &runner); !s.ok()) return app::fail(1, s.message());
  const double load_ms = ms(t_load, Clock::now());
  const size_t used1 = device_used_bytes(cuda);

  std::mt19937 rng(1234);
  std::vector<int32_t> prompt(FLAGS_prompt_len);
  for (auto& t : prompt) t = (int32_t)(rng() % cfg.vocab_size);

  // One full run to warm up (graph capture, cuBLAS handles), then the timed repetitions.
  std::vector<double> prefill_ms, decode_ms;
  for (int rep = 0; rep <= FLAGS_reps; ++rep) {
    std::vector<double> p(runner->world_size()), d(runner->world_size());
    auto s = runner->run([&](int rank) -> base::Status {
      model::LlamaModel& m = runner->model(rank);
      std::vector<float> logits(cfg.vocab_size);
      auto t0 = Clock::now();
      KP_RETURN_IF_ERROR(m.prefill(prompt, 0, logits.data()));
      auto t1 = Clock::now();
      int32_t tok = prompt.back();
      for (int i = 0; i < FLAGS_gen; ++i) KP_RETURN_IF_ERROR(m.decode_greedy(tok, FLAGS_prompt_len + i, &tok));
      auto t2 = Clock::now();
      p[rank] = ms(t0, t1);
      d[rank] = ms(t1, t2);
      return base::Status::Ok();
    });
    if (!s.ok()) return app::fail(1, s.message());
    if (rep > 0) {
      prefill_ms.push_back(*std::max_element(p.begin(), p.end()));
      decode_ms.push_back(*std::max_element(d.begin(), d.end()));
    }
  }
  const double pf = median(prefill_ms), dc = median(decode_ms);

  // Communication per decode token, timed on its own with the decode step's message sizes (decode time
  // minus this is the compute share: batch-1 decode cannot overlap the two), and the latency of one
  // all-reduce of 8 KB and 16 KB (the [1, dim] vector of a 7B/8B and a 70B model in 16 bits) inside a
  // CUDA graph, as the decode graph issues it.
  double comm_ms = -1, ar8_us = -1, ar16_us = -1;
  if (runner->comm(0) != nullptr) {
    const base::DType dt = opts.act_dtype;
    const int64_t esz = (int64_t)base::dtype_size(dt);
    base::Status s = runtime::time_decode_comm_ms(*runner, &comm_ms);
    if (s.ok()) s = runtime::time_all_reduce_us(*runner, 8192 / esz, dt, &ar8_us);
    if (s.ok()) s = runtime::time_all_reduce_us(*runner, 16384 / esz, dt, &ar16_us);
    if (!s.ok()) return app::fail(1, s.message());
  }
  const double prefill_tps = FLAGS_prompt_len * 1e3 / pf, decode_tps = FLAGS_gen * 1e3 / dc;

  // Bytes read per decode token: every weight once, plus the KV cache up to the mean position.
  uint64_t weight_bytes = 0;
  for (int r = 0; r < runner->world_size(); ++r) weight_bytes += runner->model(r).weights().bytes;
  const double mean_pos = FLAGS_prompt_len + (FLAGS_gen - 1) / 2.0;
  const double kv_bytes = 2.0 * cfg.n_layers * mean_pos * cfg.kv_dim() * base::dtype_size(opts.act_dtype);
  const double bytes_per_token = (double)weight_bytes + kv_bytes;
  const double achieved = bytes_per_token * decode_tps / 1e9;
  uint64_t kv_block = 0, ws = 0;
  for (int r = 0; r < runner->world_size(); ++r) {
    kv_block += runner->model(r).kv_cache().bytes();
    ws += runner->model(r).workspace().bytes;
  }

  std::printf("model       %s\n", FLAGS_shape.empty() ? file->path().c_str() : (FLAGS_shape + " (synthetic)").c_str());
  std::printf("config      %s\n", cfg.summary().c_str());
  std::printf("device      %s x%d, activations %s, cuda_graph %s, all-reduce %s\n", cuda ? "cuda" : "cpu",
              runner->world_size(), base::dtype_name(opts.act_dtype), cuda && FLAGS_cuda_graph ? "on" : "off",
              runner->all_reduce_used());
  std::printf("load        %.0f ms\n", load_ms);
  std::printf("memory      weights %.2f GiB, KV cache %.3f GiB, workspace %.3f GiB (%.1f%% of weights)",
              weight_bytes / 1073741824.0, kv_block / 1073741824.0, ws / 1073741824.0, 100.0 * ws / weight_bytes);
  if (cuda) std::printf(", device memory in use by the model %.2f GiB", (used1 - used0) / 1073741824.0);
  std::printf("\n");
  std::printf("prefill     %d tokens: %.2f ms median of %d = %.1f tokens/s\n", FLAGS_prompt_len, pf, FLAGS_reps,
              prefill_tps);
  std::printf("decode      %d tokens: %.2f ms/token = %.1f tokens/s\n", FLAGS_gen, dc / FLAGS_gen, decode_tps);
  if (comm_ms >= 0)
    std::printf("split       communication %.3f ms/token (%d all-reduces of [1, %d] + 1 all-gather, timed alone), "
                "compute %.3f ms/token\n",
                comm_ms, 2 * cfg.n_layers, cfg.dim, std::max(0.0, dc / FLAGS_gen - comm_ms));
  if (ar8_us >= 0)
    std::printf("all-reduce  one of 8 KB: %.1f us, one of 16 KB: %.1f us (%s, %s)\n", ar8_us, ar16_us,
                base::dtype_name(opts.act_dtype), cuda ? "inside a CUDA graph" : "plain calls on the CPU");
  std::printf("bandwidth   %.3f GB read per token -> %.0f GB/s achieved", bytes_per_token / 1e9, achieved);
  if (bw > 0)
    std::printf(" of %.0f GB/s measured copy bandwidth = %.1f%% (limit %.1f tokens/s)", bw, 100.0 * achieved / bw,
                bw * 1e9 / bytes_per_token);
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  app::init(&argc, &argv,
            "prefill and decode speed of a model file or a synthetic model\n"
            "  llama_bench (--model MODEL.bin | --shape llama2-7b) [--weights fp16] [--dtype bf16] [--prompt_len 16] "
            "[--gen 128] [--reps 3] [--tp N]");
  return run();
}
