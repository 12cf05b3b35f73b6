// Token embedding lookup: copies (and widens to fp32) one table row per token.
#include <cstring>

#include "cpu_kernels.h"
#include "thread_pool.h"

namespace kernel::cpu {

// tokens: int32 [n] (checked in [0, vocab) by the dispatcher); table: fp32/fp16/bf16 or a block type
// [vocab, dim] (the row dequantized exactly); out: fp32 [n, dim].
void embedding(const Tensor& tokens, const ConstTensor& table, Tensor& out) {
  const int64_t n = tokens.numel(), dim = table.dim(1);
  const int32_t* ids = tokens.ptr<int32_t>();
  float* o = out.ptr<float>();
  parallel_for(n, n > 1 ? threads_for(n * dim) : 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float* dst = o + i * dim;
      const int64_t row = (int64_t)ids[i] * dim;
      if (base::is_block_type(table.dtype())) {
        const uint64_t row_bytes = base::dtype_bytes(table.dtype(), dim);
        dequantize_row(table.dtype(), static_cast<const uint8_t*>(table.data()) + ids[i] * row_bytes, dim, dst);
        continue;
      }
      switch (table.dtype()) {
        case base::DType::kFp32:
          std::memcpy(dst, table.ptr<float>() + row, dim * sizeof(float));
          break;
        case base::DType::kFp16: {
          const uint16_t* src = table.ptr_u16() + row;
          for (int64_t j = 0; j < dim; ++j) dst[j] = base::half_to_float(src[j]);
          break;
        }
        default: {  // bf16 (the dispatcher admits only float tables)
          const uint16_t* src = table.ptr_u16() + row;
          for (int64_t j = 0; j < dim; ++j) dst[j] = base::bf16_to_float(src[j]);
          break;
        }
      }
    }
  });
}

}  // namespace kernel::cpu
