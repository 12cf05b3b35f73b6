// Compiled by test/compile_fail/check.cmake once per CASE: case 0 (reading the weights) must compile,
// and every other case, each a different way to write to a weight, must not. Nothing here is run.
#include "base/buffer.h"
#include "model/weights.h"
#include "tensor/tensor.h"

float touch(model::LlamaWeights& w, const std::shared_ptr<const base::Buffer>& mapping) {
  float sum = w.norm.ptr<float>()[0] + w.layers[0].wq.weight().ptr<float>()[0];  // reading is fine
  sum += static_cast<const float*>(mapping->data())[0];
#if CASE == 1
  w.norm.ptr<float>()[0] = 1.f;  // write through a weight's typed pointer
#elif CASE == 2
  static_cast<float*>(w.tok_embeddings.data())[0] = 1.f;  // through its untyped pointer
#elif CASE == 3
  tensor::Tensor t = w.layers[0].attention_norm;  // a writable tensor over a weight
  t.ptr<float>()[0] = 1.f;
#elif CASE == 4
  w.layers[0].wq.weight().ptr_u16()[0] = 0;  // a matmul layer's weight, fp16 words
#elif CASE == 5
  static_cast<float*>(mapping->data())[0] = 1.f;  // the read-only mapping of the model file itself
#elif CASE == 6
  tensor::Tensor t = tensor::Tensor::from_buffer(mapping, 0, base::DType::kFp32, {1});  // writable view of it
  t.ptr<float>()[0] = 1.f;
#elif CASE == 7
  std::shared_ptr<base::Buffer> writable = w.norm.buffer();  // the buffer behind a weight, writable
  (void)writable;
#endif
  return sum;
}
