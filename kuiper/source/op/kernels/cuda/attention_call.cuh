// One attention call as the CUDA launchers see it, after kernel::attention (or its paged / batched
// forms) has checked the tensors: raw pointers, the cache layout (kv_rows.cuh) and the sizes. Two
// families of kernels take it:
//  - flash_attention.cu: tensor cores (mma.sync), fp16 / bf16 activations, head_dim 64 or 128;
//  - attention_simt.cu: CUDA cores, any activation dtype, head_dim 8 .. 128 (the fallback).
// attention.cu picks one per call.
#pragma once

#include <cuda_runtime.h>

#include "base/dtype.h"
#include "base/status.h"
#include "kernels/cuda/kv_rows.cuh"

namespace kernel::cuda {

struct AttentionCall {
  base::DType dtype;    // of q, the caches and out
  const void* q;        // [batch * n, n_heads * head_dim]
  const void* k_cache;  // [rows, n_kv_heads * head_dim]: contiguous [max_len, ...] or paged [n_pages * page_size, ...]
  const void* v_cache;  // same layout as k_cache
  KvRows rows;          // where token t of sequence b lives
  SeqStarts starts;     // where each sequence's first query sits
  int n;                // queries per sequence (n > 1 only with batch == 1: a prefill chunk)
  int batch;            // sequences, one query each when > 1
  int n_heads, n_kv_heads, head_dim;
  float* scratch;          // fp32 workspace
  int64_t scratch_floats;  // its size
  void* out;               // [batch * n, n_heads * head_dim]
};

// Tensor-core kernels (flash_attention.cu).
bool flash_attention_supports(base::DType dtype, int head_dim);
// Prefill (n > 1): one launch, no scratch.
base::Status flash_prefill(const AttentionCall& a, cudaStream_t stream);
// Decode (n == 1, any batch): split-K over the keys, plus a combine launch when there are splits.
base::Status flash_decode(const AttentionCall& a, cudaStream_t stream);
// fp32 scratch elements flash_decode needs for `batch` sequences of up to max_len rows.
int64_t flash_decode_scratch_floats(int64_t batch, int n_heads, int head_dim, int64_t max_len);

// CUDA-core kernels (attention_simt.cu): prefill and a single-launch cluster decode; no scratch.
base::Status simt_attention(const AttentionCall& a, cudaStream_t stream);

}  // namespace kernel::cuda
