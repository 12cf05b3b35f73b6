// The kernel API: one function per op, dispatched on the device of its tensors to the CPU kernels
// (source/op/kernels/cpu) or the CUDA kernels (source/op/kernels/cuda).
//
// Conventions shared by every op:
//  - Every op has a token axis: activations are [n_tokens, features], row-major, contiguous.
//    Prefill is one call with n_tokens = prompt length; decode is the n_tokens == 1 case.
//  - Activations are fp32 on the CPU; on the GPU fp32, fp16 or bf16 (all activation tensors of one
//    call share a dtype). Weights may differ from the activations (see matmul).
//  - The start position of the tokens lives in a device tensor `pos` (int32 [1]) so that a CUDA graph
//    captured once can be replayed at every step; CPU kernels read it from host memory.
//  - `stream` is a cudaStream_t on the GPU (never the legacy default stream) and ignored on the CPU.
//  - Preconditions (shapes, dtypes, devices) are checked and reported as InvalidArgument.
#pragma once

#include "base/status.h"
#include "tensor/tensor.h"

namespace kernel {

using base::Status;
using tensor::ConstTensor;  // weights: read-only (a Tensor converts to one)
using tensor::Tensor;
using Stream = void*;  // cudaStream_t on CUDA; nullptr on CPU

// CPU threads. The CPU kernels share one thread pool for the whole process (not OpenMP's: see
// source/op/kernels/cpu/thread_pool.h); OpenBLAS is kept single-threaded and called from inside the
// pool's jobs, so there are never two pools on the same cores (OpenBLAS's threads spinning against
// OpenMP's made decode 25-45x slower on 2 cores).
// Each kernel uses at most the budget, and fewer threads when its work is too small to pay for a team.
//
// The process budget; n <= 0 means usable_cpu_cores(). Also switches OpenBLAS to one thread.
void set_cpu_threads(int n);
// The calling thread's budget: its own share (set_cpu_threads_this_thread) or the process budget.
int cpu_threads();
// A share of the budget for the calling thread only (0: back to the process budget). TpRunner gives
// each of its CPU rank threads budget / ranks, so that the ranks together use the budget.
void set_cpu_threads_this_thread(int n);
// The cores this process may run on: its affinity mask (taskset, cgroup cpusets), not the machine's.
int usable_cpu_cores();

// out[i, :] = table[tokens[i], :]
// tokens: int32 [n]; table: [vocab, dim] in fp32/fp16/bf16 or a block type (the row dequantized);
// out: [n, dim] activation dtype.
// Token ids outside [0, vocab) are an error on the CPU; on the GPU they are clamped (checked on host first).
Status embedding(const Tensor& tokens, const ConstTensor& table, Tensor& out, Stream stream);

// out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * weight
// x, out: [n, dim]; weight: fp32 [dim]. Sum of squares accumulated in fp32.
Status rmsnorm(const Tensor& x, const ConstTensor& weight, float eps, Tensor& out, Stream stream);

// Fused residual add + RMSNorm: residual += delta; out = rmsnorm(residual, weight, eps).
// residual, delta, out: [n, dim]; weight: fp32 [dim].
Status add_rmsnorm(Tensor& residual, const Tensor& delta, const ConstTensor& weight, float eps, Tensor& out,
                   Stream stream);

// y[i, o] = sum_k x[i, k] * W[o, k]   (y = x W^T; W stored [out, in] like nn.Linear)
// x: [n, in]; y: [n, out]; activation dtype.
// W: fp32 / fp16 / bf16 [out, in], or int8 [out, in] with `scales` fp32 [out, in / group_size]:
//    W[o, k] = q[o, k] * scales[o, k / group_size]  (symmetric, group-wise along the input axis).
// W of a block type (q8_0, q4_0, q4_k, q6_k; base/dtype.h) [out, in], in a whole number of blocks:
//    dequantized inside the product, never widened in memory as a whole.
// `scales` is empty (ConstTensor()) for float and block-type weights. Accumulation in fp32.
Status matmul(const Tensor& x, const ConstTensor& weight, const ConstTensor& scales, int group_size, Tensor& y,
              Stream stream);

// out = swiglu(x W1^T, x W3^T) for the stacked w13 = [W1; W3]: [2 hidden, in] (weights and scales as in
// matmul); x: [n, in]; out: [n, hidden]; gu: [n, 2 hidden] scratch of the activation dtype.
// On the GPU with n <= 4 one GEMV computes the gate and up of each feature together and writes only
// out (gu untouched); otherwise matmul into gu, then swiglu of its halves, row by row.
Status matmul_swiglu(const Tensor& x, const ConstTensor& w13, const ConstTensor& scales, int group_size, Tensor& gu,
                     Tensor& out, Stream stream);
// out = W as fp32, exactly as the reference dequantizer of each type computes it (kernels/quant_blocks.h).
// weight: fp32 / fp16 / bf16 / block type [rows, cols]; out: fp32 [rows, cols] on the same device.
Status dequantize(const ConstTensor& weight, Tensor& out, Stream stream);

// Rotary position embedding, applied in place to q and k, interleaved pairs (x[2j], x[2j+1]) of each
// head (Meta / llama2.c layout; Hugging Face checkpoints are un-permuted by the exporter):
//   (a, b) -> (a cos t - b sin t, a sin t + b cos t),  t = (pos + i) * inv_freq[j]
// q: [n, n_heads * head_dim]; k: [n, n_kv_heads * head_dim];
// cos_sin: fp32 [max_seq_len, head_dim / 2, 2] holding (cos t, sin t), precomputed by the model with
// the frequency scaling of its family, so this kernel is the same for Llama 2 and Llama 3.1.
Status rope(Tensor& q, Tensor& k, const Tensor& pos, const Tensor& cos_sin, int head_dim, Stream stream);

// Appends n rows at positions [pos, pos + n) to one layer's cache.
// k, v: [n, n_kv_heads * head_dim]; k_cache, v_cache: [max_seq_len, n_kv_heads * head_dim] (cache dtype).
Status kv_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& pos,
                 Stream stream);

// rope() of q and k, then kv_append() of the rotated k and of v, with the arguments of both: one kernel
// on the GPU (decode runs it every layer), the two calls on the CPU. k is rotated in place too.
Status rope_kv_append(Tensor& q, Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& pos,
                      const Tensor& cos_sin, int head_dim, Stream stream);

// Causal grouped-query attention of n queries at positions pos..pos+n-1 over the cache rows
// [0, pos + i] (query i sees its own and earlier positions):
//   out[i, h] = sum_t softmax_t(q[i, h] . k[t, h / group] / sqrt(head_dim)) v[t, h / group]
// q, out: [n, n_heads * head_dim]; k_cache, v_cache: [max_seq_len, n_kv_heads * head_dim];
// group = n_heads / n_kv_heads. Softmax in fp32 with the running-max trick.
// `scratch` is workspace the implementation may use (fp32, at least attention_scratch_floats()).
Status attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& pos,
                 int n_heads, int n_kv_heads, int head_dim, Tensor& scratch, Tensor& out, Stream stream);
// fp32 elements of `scratch` that attention() needs for calls of up to n_tokens queries on `device`
// (on the GPU: the split-K partials of one decode query; prefill needs none).
int64_t attention_scratch_floats(int64_t n_tokens, int n_heads, int head_dim, int64_t max_seq_len,
                                 base::DeviceType device);

// fp32 elements of `scratch` that paged_decode_attention() of `batch` sequences of up to max_len
// tokens needs on `device` to take the split-K tensor-core kernel (with less it takes the CUDA-core one).
int64_t attention_batch_scratch_floats(int64_t batch, int n_heads, int head_dim, int64_t max_len,
                                       base::DeviceType device);
// ---------------------------------------------------------------------------------------------------
// The paged KV cache (model/kv_cache.h). One layer's k_cache / v_cache is [n_pages, page_size, kv_dim]
// of the cache dtype, passed as the 2-D view [n_pages * page_size, kv_dim]: token t of a sequence lives
// in page page_table[t / page_size], row t % page_size, i.e. at slot page_table[t / page_size] *
// page_size + t % page_size. A contiguous single-sequence cache is the identity table (0, 1, 2, ...).
// Page tables, lengths, positions and slots are int32 tensors on the device of q (read on the device,
// so that one captured CUDA graph serves every step). The arithmetic of each query row is that of
// attention() above, whatever else is in the batch (on the CPU bitwise: a sequence gives the same
// result batched or alone).

// Rotary embedding as rope(), at explicit positions: row i of q and k is rotated for positions[i].
// positions: int32 [n].
Status rope_at(Tensor& q, Tensor& k, const Tensor& positions, const Tensor& cos_sin, int head_dim, Stream stream);

// Writes row i of k and v to cache slot slots[i]; a negative slot writes nothing (the padding rows of a
// batch captured for a larger bucket). k, v: [n, kv_dim]; slots: int32 [n].
Status kv_append_paged(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, const Tensor& slots,
                       Stream stream);

// Decode attention of B sequences, one query row each: row b attends to positions [0, seq_lens[b]) of
// its sequence through page_tables[b]. A row with seq_lens[b] == 0 is padding.
// q, out: [B, n_heads * head_dim]; page_tables: int32 [>= B, max_pages]; seq_lens: int32 [>= B].
// `scratch` as for attention() with max_seq_len = max_pages * page_size; on the GPU the split-K
// tensor-core kernel (fp16/bf16, head_dim 64 or 128) runs when it holds attention_batch_scratch_floats(B, ...)
// floats. A padding row's output is unspecified (finite when the cache holds finite values).
Status paged_decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& page_tables,
                              const Tensor& seq_lens, int page_size, int n_heads, int n_kv_heads, int head_dim,
                              Tensor& scratch, Tensor& out, Stream stream);

// Causal attention of one sequence's chunk of n tokens at positions [pos, pos + n) (chunked prefill):
// query i attends to positions [0, pos + i] through page_table. Their K/V must be in the cache already
// (kv_append_paged first). q, out: [n, n_heads * head_dim]; page_table: int32 [max_pages]; pos: int32 [1].
Status paged_prefill_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                               const Tensor& page_table, const Tensor& pos, int page_size, int n_heads,
                               int n_kv_heads, int head_dim, Tensor& scratch, Tensor& out, Stream stream);

// out = silu(gate) * up, silu(x) = x / (1 + exp(-x)). gate, up, out: [n, hidden].
Status swiglu(const Tensor& gate, const Tensor& up, Tensor& out, Stream stream);

// out = a + b (same shape and dtype). out may alias a.
Status add(const Tensor& a, const Tensor& b, Tensor& out, Stream stream);

// In-place softmax over the last axis of x: fp32 [rows, cols].
Status softmax(Tensor& x, Stream stream);

// out[i] = index of the largest element of row i of x ([rows, cols]; lowest index on ties). out: int32 [rows].
Status argmax(const Tensor& x, Tensor& out, Stream stream);

// Converts between activation dtypes (fp32 <-> fp16/bf16), same shape.
Status convert(const Tensor& in, Tensor& out, Stream stream);

// Fills a float tensor with uniform values in [-scale, scale), or an int8 tensor with uniform integers in
// [-127, 127], from a counter-based hash of (seed, index): the same values on every device, with no state.
// For synthetic models (llama_bench) whose weights are made on the GPU without a file.
Status fill_random(Tensor& t, uint64_t seed, float scale, Stream stream);

// Hash of (seed, i) as a uniform float in [-1, 1): splitmix64 finaliser, top 24 bits. One definition for
// the CPU kernel and the CUDA kernel (compiled for both by nvcc), so both make the same values.
#ifdef __CUDACC__
__host__ __device__
#endif
inline float hash_uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

}  // namespace kernel
