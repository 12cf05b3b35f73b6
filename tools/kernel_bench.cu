// kernel_bench: per-kernel times of the decode-path kernels (GEMV, decode attention) and of the W8A16
// prefill GEMM, through the kernel:: API of libkuiper_core.so, so the same binary times any build of the
// library (LD_LIBRARY_PATH picks it). Not part of the CMake build; compile against a shared build:
//
//   nvcc -std=c++17 -O2 -arch=sm_90 -DKUIPER_WITH_CUDA -Ikuiper/include tools/kernel_bench.cu \
//        -Lbuild-gpu/kuiper -lkuiper_core -lglog -o kernel_bench
//
// Each case captures kCalls back-to-back calls of one op in a CUDA graph (as the decode step is), over
// enough rotating copies of its operands that they do not stay in the 50 MB L2, replays it, and
// reports the median over kReps replays of time per call and the bytes the call must read (weights,
// or K/V rows [0, pos]) over that time. Inputs are random (fill_random), never zeros.
//
// Cases: `gemv`, `quant` (the GGUF block types' GEMV; `quant3`: Llama-3-8B's shapes), `attention` (decode, the issue-6 shapes), `prefill` (int8 GEMMs), `flash` (prefill
// attention in TFLOPS, and decode attention up to a 32K context in GB/s of K/V rows), `paged` (the
// batched paged decode and a paged prefill chunk), or `all`. Attention takes the tensor-core kernels for
// fp16 / bf16 at head_dim 64 / 128; KUIPER_ATTENTION=simt runs the same cases on the CUDA-core ones, so
//   ./kernel_bench flash; KUIPER_ATTENTION=simt ./kernel_bench flash
// times old against new in one build.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "base/buffer.h"
#include "base/cuda_utils.h"
#include "op/kernels.h"

namespace {

using base::DType;
using tensor::Tensor;

constexpr int kCalls = 20;  // calls per graph
constexpr int kReps = 15;   // graph replays timed; the median is reported
constexpr size_t kRotateBytes = size_t(200) << 20;  // operands rotated over at least this many bytes

#define CHECK_OK(expr)                                                                     \
  do {                                                                                     \
    const base::Status st_ = (expr);                                                       \
    if (!st_.ok()) {                                                                       \
      std::fprintf(stderr, "%s failed: %s\n", #expr, st_.message().c_str());               \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)
#define CHECK_CUDA(expr)                                                                   \
  do {                                                                                     \
    const cudaError_t e_ = (expr);                                                         \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s failed: %s\n", #expr, cudaGetErrorString(e_));              \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

Tensor make(DType dt, std::vector<int64_t> shape, uint64_t seed, float scale, cudaStream_t s) {
  Tensor t;
  CHECK_OK(Tensor::create(dt, std::move(shape), base::CUDAAllocator::get(0), &t));
  CHECK_OK(kernel::fill_random(t, seed, scale, s));
  return t;
}

int copies_for(size_t bytes) { return (int)std::max<size_t>(2, (kRotateBytes + bytes - 1) / bytes); }

// Median microseconds per call of record(i), i = 0 .. kCalls - 1, captured as one graph.
template <typename F> double time_graph(cudaStream_t s, F&& record) {
  for (int i = 0; i < kCalls; ++i) CHECK_OK(record(i));  // warm-up, outside the graph
  CHECK_CUDA(cudaStreamSynchronize(s));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kCalls; ++i) CHECK_OK(record(i));
  CHECK_CUDA(cudaStreamEndCapture(s, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  CHECK_CUDA(cudaGraphLaunch(exec, s));
  std::vector<double> us;
  for (int r = 0; r < kReps; ++r) {
    CHECK_CUDA(cudaEventRecord(a, s));
    CHECK_CUDA(cudaGraphLaunch(exec, s));
    CHECK_CUDA(cudaEventRecord(b, s));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    us.push_back(ms * 1000.0 / kCalls);
  }
  CHECK_CUDA(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

void report(const std::string& name, double us, double bytes) {
  std::printf("%-44s %9.2f us  %7.0f GB/s\n", name.c_str(), us, bytes / (us * 1e-6) / 1e9);
  std::fflush(stdout);
}

// y[n, out] = x[n, in] W^T; W of wdt (int8: group 64), activations of adt.
void bench_matmul(cudaStream_t s, const char* tag, DType adt, DType wdt, int64_t n, int64_t out, int64_t in) {
  const bool int8 = wdt == DType::kInt8;
  const size_t wbytes = (size_t)out * in * base::dtype_size(wdt) + (int8 ? (size_t)out * (in / 64) * 4 : 0);
  const int nb = copies_for(wbytes);
  std::vector<Tensor> ws, ss;
  for (int i = 0; i < nb; ++i) {
    ws.push_back(make(wdt, {out, in}, 10 + i, 0.02f, s));
    ss.push_back(int8 ? make(DType::kFp32, {out, in / 64}, 50 + i, 0.001f, s) : Tensor());
  }
  Tensor x = make(adt, {n, in}, 3, 1.f, s);
  Tensor y = make(adt, {n, out}, 4, 1.f, s);
  const double us = time_graph(s, [&](int i) { return kernel::matmul(x, ws[i % nb], ss[i % nb], 64, y, s); });
  char name[128];
  std::snprintf(name, sizeof name, "%s n=%lld %lldx%lld %s", tag, (long long)n, (long long)out, (long long)in,
                base::dtype_name(wdt));
  report(name, us, (double)wbytes);
}

// y[n, out] = x[n, in] W^T for a GGUF block type: random bytes with every fp16 scale field set to
// ~0.001 (random bits there could be inf / NaN), made on the host and copied up.
void bench_quant(cudaStream_t s, DType adt, DType wdt, int64_t n, int64_t out, int64_t in) {
  const size_t row = base::dtype_bytes(wdt, in), wbytes = row * out;
  const int block = wdt == DType::kQ8_0 ? 34 : (wdt == DType::kQ4_K ? 144 : 210);
  std::vector<int> scale_at = wdt == DType::kQ4_K ? std::vector<int>{0, 2} : (wdt == DType::kQ6_K ? std::vector<int>{208} : std::vector<int>{0});
  std::vector<uint8_t> host(wbytes);
  uint64_t st = 0x9E3779B97F4A7C15ull;
  for (auto& b : host) st = st * 6364136223846793005ull + 1442695040888963407ull, b = (uint8_t)(st >> 56);
  for (int64_t r = 0; r < out; ++r)
    for (size_t o = 0; o + block <= row; o += block)
      for (int f : scale_at) host[r * row + o + f] = 0x00, host[r * row + o + f + 1] = 0x14;
  const int nb = copies_for(wbytes);
  std::vector<Tensor> ws;
  for (int i = 0; i < nb; ++i) {
    Tensor w;  // one row longer, as the model loader pads tensors (the GEMV reads up to 15 bytes past)
    CHECK_OK(Tensor::create(wdt, {out + 1, in}, base::CUDAAllocator::get(0), &w));
    CHECK_CUDA(cudaMemcpy(w.data(), host.data(), wbytes, cudaMemcpyHostToDevice));
    ws.push_back(Tensor::from_buffer(w.buffer(), 0, wdt, {out, in}));
  }
  Tensor x = make(adt, {n, in}, 3, 1.f, s);
  Tensor y = make(adt, {n, out}, 4, 1.f, s);
  const double us = time_graph(s, [&](int i) { return kernel::matmul(x, ws[i % nb], Tensor(), 0, y, s); });
  char name[128];
  std::snprintf(name, sizeof name, "gemv n=%lld %lldx%lld %s %s", (long long)n, (long long)out, (long long)in,
                base::dtype_name(wdt), base::dtype_name(adt));
  report(name, us, (double)wbytes);
}

// Decode attention of one token at position pos over layers' caches of max_seq rows.
void bench_attention(cudaStream_t s, DType dt, int n_heads, int n_kv, int hd, int max_seq, int pos) {
  const int64_t kv_dim = (int64_t)n_kv * hd;
  const size_t cache_bytes = 2 * (size_t)max_seq * kv_dim * base::dtype_size(dt);
  const int nb = copies_for(cache_bytes);
  std::vector<Tensor> kc, vc;
  for (int i = 0; i < nb; ++i) {
    kc.push_back(make(dt, {max_seq, kv_dim}, 100 + i, 1.f, s));
    vc.push_back(make(dt, {max_seq, kv_dim}, 200 + i, 1.f, s));
  }
  Tensor q = make(dt, {1, (int64_t)n_heads * hd}, 5, 3.f, s);
  Tensor out = make(dt, {1, (int64_t)n_heads * hd}, 6, 1.f, s);
  const int64_t sn = std::max<int64_t>(
      1, kernel::attention_scratch_floats(1, n_heads, hd, max_seq, base::DeviceType::kCUDA));
  Tensor scratch = make(DType::kFp32, {sn}, 7, 1.f, s);
  Tensor hpos;
  CHECK_OK(Tensor::create(DType::kInt32, {1}, base::CPUAllocator::get(), &hpos));
  *hpos.ptr<int32_t>() = pos;
  Tensor dpos;
  CHECK_OK(Tensor::create(DType::kInt32, {1}, base::CUDAAllocator::get(0), &dpos));
  CHECK_OK(hpos.copy_to(dpos));
  CHECK_CUDA(cudaDeviceSynchronize());
  const double us = time_graph(s, [&](int i) {
    return kernel::attention(q, kc[i % nb], vc[i % nb], dpos, n_heads, n_kv, hd, scratch, out, s);
  });
  char name[128];
  std::snprintf(name, sizeof name, "attention %s %d/%d hd%d pos %d", base::dtype_name(dt), n_heads, n_kv, hd, pos);
  report(name, us, 2.0 * (pos + 1) * kv_dim * base::dtype_size(dt));
}

Tensor device_ints(const std::vector<int32_t>& v) {
  Tensor h, d;
  CHECK_OK(Tensor::create(DType::kInt32, {(int64_t)v.size()}, base::CPUAllocator::get(), &h));
  std::copy(v.begin(), v.end(), h.ptr<int32_t>());
  CHECK_OK(Tensor::create(DType::kInt32, {(int64_t)v.size()}, base::CUDAAllocator::get(0), &d));
  CHECK_OK(h.copy_to(d));
  CHECK_CUDA(cudaDeviceSynchronize());
  return d;
}

// Prefill attention: n queries at positions pos .. pos + n - 1 (one cache; this is compute-bound, so
// no rotation). Reports TFLOPS of the causal work: 4 head_dim flops per (query, head, visible key).
void bench_prefill_attention(cudaStream_t s, DType dt, int n_heads, int n_kv, int hd, int n, int pos) {
  const int64_t kv_dim = (int64_t)n_kv * hd, max_seq = pos + n;
  Tensor kc = make(dt, {max_seq, kv_dim}, 300, 1.f, s), vc = make(dt, {max_seq, kv_dim}, 301, 1.f, s);
  Tensor q = make(dt, {n, (int64_t)n_heads * hd}, 302, 3.f, s), out = make(dt, {n, (int64_t)n_heads * hd}, 303, 1.f, s);
  const int64_t sn = std::max<int64_t>(1, kernel::attention_scratch_floats(n, n_heads, hd, max_seq, base::DeviceType::kCUDA));
  Tensor scratch = make(DType::kFp32, {sn}, 304, 1.f, s);
  Tensor dpos = device_ints({pos});
  const double us = time_graph(s, [&](int) {
    return kernel::attention(q, kc, vc, dpos, n_heads, n_kv, hd, scratch, out, s);
  });
  const double keys = (double)n * pos + (double)n * (n + 1) / 2;  // sum over queries of visible keys
  const double flops = 4.0 * hd * n_heads * keys;
  char name[128];
  std::snprintf(name, sizeof name, "prefill attention %s %d/%d hd%d n %d pos %d", base::dtype_name(dt), n_heads, n_kv,
                hd, n, pos);
  std::printf("%-44s %9.2f us  %7.1f TFLOPS\n", name, us, flops / (us * 1e-6) / 1e12);
  std::fflush(stdout);
}

// Batched paged decode: `batch` sequences of `len` tokens each in pages of `page` rows (ids scattered
// over the pool), one query each. Reports GB/s of the K/V rows read.
void bench_decode_batch(cudaStream_t s, DType dt, int n_heads, int n_kv, int hd, int batch, int len, int page) {
  const int64_t kv_dim = (int64_t)n_kv * hd, pages_per_seq = (len + page - 1) / page;
  const int64_t n_pages = batch * pages_per_seq;
  const size_t cache_bytes = 2 * (size_t)n_pages * page * kv_dim * base::dtype_size(dt);
  const int nb = copies_for(cache_bytes);
  std::vector<Tensor> kc, vc;
  for (int i = 0; i < nb; ++i) {
    kc.push_back(make(dt, {n_pages, page, kv_dim}, 400 + i, 1.f, s));
    vc.push_back(make(dt, {n_pages, page, kv_dim}, 500 + i, 1.f, s));
  }
  std::vector<int32_t> ids(n_pages);
  for (int64_t i = 0; i < n_pages; ++i) ids[i] = (int32_t)((i * 7919) % n_pages);  // a fixed scatter
  Tensor table = device_ints(ids);
  Tensor tables = table.view({batch, pages_per_seq});
  Tensor lens = device_ints(std::vector<int32_t>(batch, len));
  Tensor q = make(dt, {batch, (int64_t)n_heads * hd}, 501, 3.f, s), out = make(dt, {batch, (int64_t)n_heads * hd}, 502, 1.f, s);
  const int64_t sn = std::max<int64_t>(
      1, kernel::attention_batch_scratch_floats(batch, n_heads, hd, pages_per_seq * page, base::DeviceType::kCUDA));
  Tensor scratch = make(DType::kFp32, {sn}, 503, 1.f, s);
  const double us = time_graph(s, [&](int i) {
    Tensor& kp = kc[i % nb];
    Tensor& vp = vc[i % nb];
    return kernel::paged_decode_attention(q, kp.view({kp.dim(0) * kp.dim(1), kp.dim(2)}),
                                          vp.view({vp.dim(0) * vp.dim(1), vp.dim(2)}), tables, lens, page, n_heads,
                                          n_kv, hd, scratch, out, s);
  });
  char name[128];
  std::snprintf(name, sizeof name, "decode batch %s %d/%d hd%d B %d len %d page %d", base::dtype_name(dt), n_heads,
                n_kv, hd, batch, len, page);
  report(name, us, 2.0 * batch * len * kv_dim * base::dtype_size(dt));
}

}  // namespace

int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "all";
  base::CudaStream stream;
  CHECK_OK(stream.create(0));
  const cudaStream_t s = stream.get();
  const bool all = what == "all";
  if (all || what == "gemv") {
    for (DType w : {DType::kFp16, DType::kInt8}) {
      bench_matmul(s, "gemv", DType::kFp16, w, 1, 12288, 4096);  // llama2-7b wqkv
      bench_matmul(s, "gemv", DType::kFp16, w, 1, 4096, 4096);   // wo
      bench_matmul(s, "gemv", DType::kFp16, w, 1, 22016, 4096);  // w13
      bench_matmul(s, "gemv", DType::kFp16, w, 1, 4096, 11008);  // w2
    }
    bench_matmul(s, "gemv", DType::kFp16, DType::kInt8, 1, 32000, 4096);   // llama2-7b classifier
    bench_matmul(s, "gemv", DType::kBf16, DType::kInt8, 1, 10240, 8192);   // llama3-70b wqkv
    bench_matmul(s, "gemv", DType::kBf16, DType::kInt8, 1, 8192, 8192);    // wo
    bench_matmul(s, "gemv", DType::kBf16, DType::kInt8, 1, 57344, 8192);   // w13
    bench_matmul(s, "gemv", DType::kBf16, DType::kInt8, 1, 8192, 28672);   // w2
    bench_matmul(s, "gemv", DType::kBf16, DType::kBf16, 1, 6144, 4096);   // llama3-8b wqkv
    bench_matmul(s, "gemv", DType::kBf16, DType::kBf16, 1, 28672, 4096);  // w13
    bench_matmul(s, "gemv", DType::kBf16, DType::kBf16, 1, 4096, 14336);  // w2
  }
  if (all || what == "quant") {  // llama2-7b's shapes in the GGUF block types (KUIPER_QUANT_GEMV=vec: the old kernel)
    for (DType w : {DType::kQ4_K, DType::kQ6_K, DType::kQ8_0}) {
      bench_quant(s, DType::kFp16, w, 1, 12288, 4096);
      bench_quant(s, DType::kFp16, w, 1, 4096, 4096);
      bench_quant(s, DType::kFp16, w, 1, 22016, 4096);
      bench_quant(s, DType::kFp16, w, 1, 4096, 11008);
    }
    bench_quant(s, DType::kFp16, DType::kQ6_K, 1, 32000, 4096);
    bench_quant(s, DType::kBf16, DType::kQ4_K, 1, 28672, 4096);  // llama3-8b w13, bf16
    bench_quant(s, DType::kFp16, DType::kQ4_K, 4, 22016, 4096);
  }
  if (all || what == "quant3") {  // llama3-8b's decode shapes as a Q4_K_M / Q8_0 file has them, bf16 activations
    for (DType w : {DType::kQ4_K, DType::kQ6_K, DType::kQ8_0}) {
      bench_quant(s, DType::kBf16, w, 1, 6144, 4096);   // wqkv (stacked when q, k, v share a type)
      bench_quant(s, DType::kBf16, w, 1, 4096, 4096);   // wo
      bench_quant(s, DType::kBf16, w, 1, 1024, 4096);   // wv alone (a type of its own, Q4_K_M)
      bench_quant(s, DType::kBf16, w, 1, 28672, 4096);  // w13
      bench_quant(s, DType::kBf16, w, 1, 4096, 14336);  // w2
    }
    bench_quant(s, DType::kBf16, DType::kQ6_K, 1, 128256, 4096);  // classifier
    bench_quant(s, DType::kBf16, DType::kQ8_0, 1, 128256, 4096);
  }
  if (all || what == "attention") {
    for (int pos : {100, 1000, 3000, 4000}) bench_attention(s, DType::kFp16, 32, 32, 128, 4096, pos);
    for (int pos : {100, 3000, 8000}) bench_attention(s, DType::kBf16, 32, 8, 128, 8192, pos);
  }
  if (all || what == "flash") {
    for (int n : {512, 2048}) bench_prefill_attention(s, DType::kFp16, 32, 32, 128, n, 0);  // llama2-7b
    bench_prefill_attention(s, DType::kFp16, 32, 32, 128, 512, 1536);                       // a later chunk
    bench_prefill_attention(s, DType::kBf16, 32, 8, 128, 2048, 0);                           // llama3-8b
    for (int pos : {16, 1024, 8192, 32767}) bench_attention(s, DType::kBf16, 32, 8, 128, 32768, pos);
    for (int pos : {16, 4000}) bench_attention(s, DType::kFp16, 32, 32, 128, 4096, pos);
    for (int pos : {4000, 32767}) bench_attention(s, DType::kBf16, 64, 8, 128, 32768, pos);  // 70B, one GPU
  }
  if (all || what == "paged") {
    for (int b : {8, 32}) bench_decode_batch(s, DType::kBf16, 32, 8, 128, b, 1024, 16);
    bench_decode_batch(s, DType::kBf16, 32, 8, 128, 8, 4096, 16);
    bench_decode_batch(s, DType::kFp16, 32, 32, 128, 8, 1024, 16);
  }
  if (all || what == "prefill") {
    for (int64_t n : {16, 512}) {
      bench_matmul(s, "gemm", DType::kFp16, DType::kInt8, n, 4096, 4096);
      bench_matmul(s, "gemm", DType::kFp16, DType::kInt8, n, 11008, 4096);
      bench_matmul(s, "gemm", DType::kFp16, DType::kInt8, n, 4096, 11008);
    }
  }
  return 0;
}
