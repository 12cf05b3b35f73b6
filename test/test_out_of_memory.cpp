// Out of memory: a KV cache or weights that do not fit end with one line saying how much they need,
// how much the device has, and what to change. The failure is faked with an allocator limit
// (DeviceAllocator::set_limit), which fails exactly where a full device would, before any memory is
// touched; so the GPU messages are checked here without a GPU (the limit refuses before cudaMalloc).
// Every expected size below is worked out by hand from the shapes, not taken from the code.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "base/buffer.h"
#include "model/kv_cache.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "model/weights.h"
#include "test_util.h"

namespace {

constexpr uint64_t kMiB = 1ull << 20, kGiB = 1ull << 30;

// Sets a limit on a process-wide allocator for the scope of a test.
class LimitGuard {
 public:
  LimitGuard(base::DeviceAllocator* a, uint64_t limit) : a_(a), old_(a->limit()) { a->set_limit(limit); }
  ~LimitGuard() { a_->set_limit(old_); }

 private:
  base::DeviceAllocator* a_;
  uint64_t old_;
};

std::unique_ptr<model::ModelFile> storyteller() {
  std::unique_ptr<model::ModelFile> f;
  EXPECT_TRUE(model::ModelFile::open(testutil::source_dir() + "/models/storyteller.bin", &f).ok());
  return f;
}

// A Llama-3-8B-sized cache at 128k context in bf16: 32 x 2 x 131072 x 8 x 128 x 2 bytes = 16 GiB,
// 128 KiB a position, so 8192 positions fit in the 1 GiB left.
TEST(OutOfMemory, KvCacheOnGpuSaysNeedsHasAndWhatToChange) {
  base::CUDAAllocator gpu(0);  // its own instance: nothing else has used it
  gpu.set_limit(kGiB);
  model::KVCacheManager kv;
  const base::Status s = kv.init({32, 131072, 8, 128, base::DType::kBf16}, &gpu);
  EXPECT_EQ(s.code(), base::StatusCode::kOutOfMemory);
  EXPECT_EQ(s.message(),
            "the KV cache (32 layers x 131072 positions) needs 16.00 GiB on GPU 0, which has 1.00 GiB free of "
            "1.00 GiB; lower --max_seq_len (at most 8192 positions fit) or use more --tp ranks");
  EXPECT_EQ(gpu.allocations(), 0);
  EXPECT_EQ(gpu.bytes_in_use(), 0);
}

// On the host the advice is the context length alone: CPU ranks share one memory. 2 layers x 2 x 4096
// positions x 4 x 64 x 4 bytes = 16 MiB, 4 KiB a position; with 5 MiB of a 6 MiB limit taken, 256 fit.
TEST(OutOfMemory, KvCacheOnHostCountsWhatIsAlreadyTaken) {
  base::CPUAllocator host;
  host.set_limit(6 * kMiB);
  std::shared_ptr<base::Buffer> taken;
  ASSERT_TRUE(base::Buffer::create(&host, 5 * kMiB, &taken).ok());
  model::KVCacheManager kv;
  const base::Status s = kv.init({2, 4096, 4, 64, base::DType::kFp32}, &host);
  EXPECT_EQ(s.code(), base::StatusCode::kOutOfMemory);
  EXPECT_EQ(s.message(),
            "the KV cache (2 layers x 4096 positions) needs 16.00 MiB in host memory, which has 1.00 MiB free of "
            "6.00 MiB; lower --max_seq_len (at most 256 positions fit)");
  EXPECT_EQ(host.allocations(), 1);  // only the 5 MiB
  EXPECT_EQ(host.bytes_in_use(), (int64_t)(5 * kMiB));
}

// Rank 1 of --tp 2 on GPU 1 loads storyteller (dim 192, hidden 512, 8 layers, 6 heads, 2 KV heads,
// head_dim 32, vocab 1024, fp16, tied): per layer 2 fp32 norms (2 x 768 B), wqkv 160 x 192, wo 192 x 96,
// w13 512 x 192, w2 192 x 256 in fp16 (61440 + 36864 + 196608 + 98304 B); plus the embedding table
// 1024 x 192 fp16 (393216 B) and the final norm (768 B): 8 x 394752 + 393984 = 3552000 B = 3.39 MiB.
TEST(OutOfMemory, WeightsOnAGpuRankSayTheirShare) {
  auto f = storyteller();
  ASSERT_TRUE(f);
  LimitGuard limit(base::CUDAAllocator::get(1), kMiB);
  model::LlamaWeights w;
  const base::Status s = model::LlamaWeights::load(*f, {base::DeviceType::kCUDA, 1, 1, 2, nullptr}, &w);
  EXPECT_EQ(s.code(), base::StatusCode::kOutOfMemory);
  EXPECT_EQ(s.message(),
            "rank 1's share (1/2) of the model weights needs 3.39 MiB on GPU 1, which has 1.00 MiB free of 1.00 MiB; "
            "use more --tp ranks or an int8 export");
}

// The whole model on the CPU, through LlamaModel::create as llama_infer calls it. The CPU keeps the
// fp16 weights in fp16 and uses every single tensor in place from the mapped file; only the stacks
// decode multiplies as one matrix are copied, into one block: per layer wqkv (192 + 64 + 64) x 192 and
// w13 (512 + 512) x 192 in fp16 (122880 + 393216 B): 8 x 516096 = 4128768 B = 3.94 MiB.
TEST(OutOfMemory, ModelWeightsOnTheHost) {
  auto f = storyteller();
  ASSERT_TRUE(f);
  auto* host = base::CPUAllocator::get();
  LimitGuard limit(host, (uint64_t)host->bytes_in_use() + kMiB);
  std::unique_ptr<model::LlamaModel> m;
  const base::Status s = model::LlamaModel::create(*f, {}, &m);
  EXPECT_EQ(s.code(), base::StatusCode::kOutOfMemory);
  const std::string want = "the model weights need 3.94 MiB in host memory, which has 1.00 MiB free of ";
  EXPECT_EQ(s.message().substr(0, want.size()), want) << s.message();
  EXPECT_NE(s.message().find(" MiB; use an int8 export"), std::string::npos) << s.message();
}

// Weights fit, the cache does not: storyteller's cache is 8 layers x 2 x 512 positions x 2 KV heads x 32
// x 4 bytes = 2 MiB (4 KiB a position). With the weights' 4128768 B plus 1.25 MiB allowed, 1.25 MiB is
// left: 320 positions.
TEST(OutOfMemory, ModelKvCacheOnTheHost) {
  auto f = storyteller();
  ASSERT_TRUE(f);
  auto* host = base::CPUAllocator::get();
  LimitGuard limit(host, (uint64_t)host->bytes_in_use() + 4128768 + 5 * kMiB / 4);
  std::unique_ptr<model::LlamaModel> m;
  const base::Status s = model::LlamaModel::create(*f, {}, &m);
  EXPECT_EQ(s.code(), base::StatusCode::kOutOfMemory);
  const std::string want = "the KV cache (8 layers x 512 positions) needs 2.00 MiB in host memory, which has 1.25 MiB free of ";
  EXPECT_EQ(s.message().substr(0, want.size()), want) << s.message();
  EXPECT_NE(s.message().find(" MiB; lower --max_seq_len (at most 320 positions fit)"), std::string::npos)
      << s.message();
  // The same model loads once the limit is lifted: the failure was the limit's.
  host->set_limit(0);
  EXPECT_TRUE(model::LlamaModel::create(*f, {}, &m).ok());
}

TEST(OutOfMemory, FormatSize) {
  EXPECT_EQ(base::format_size(16 * kGiB), "16.00 GiB");
  EXPECT_EQ(base::format_size(kGiB + kGiB / 2), "1.50 GiB");
  EXPECT_EQ(base::format_size(kGiB - kMiB), "1023.00 MiB");
  EXPECT_EQ(base::format_size(3552000), "3.39 MiB");
}

}  // namespace
