// Tensor parallelism over several GPUs with NCCL (label multi_gpu; skipped with a message where fewer
// than 2 GPUs are visible): greedy tokens of --tp 2 and --tp 4 identical to --tp 1.
#include <gtest/gtest.h>

#include "runtime/generator.h"
#include "model/model_file.h"
#include "runtime/tp_runner.h"
#include "model_test_util.h"
#include "test_util.h"

namespace {

const std::vector<int32_t> kPrompt = {1, 403, 407, 261, 378};  // "Once upon a time" in tok512

std::vector<int32_t> tp_greedy(const model::ModelFile& f, base::DType act, int tp, int n) {
  model::ModelOptions o;
  o.device = base::DeviceType::kCUDA;
  o.act_dtype = act;
  std::unique_ptr<runtime::TpRunner> r;
  const base::Status s = runtime::TpRunner::create(f, o, tp, &r);
  EXPECT_TRUE(s.ok()) << s.message();
  if (!s.ok()) return {};
  return testutil::greedy(*r, kPrompt, n);
}

TEST(MultiGpu, TensorParallelMatchesOneGpu) {
  const int gpus = testutil::gpu_count();
  if (gpus < 2) GTEST_SKIP() << "needs 2 or more GPUs; " << gpus << " visible";
  if (testutil::models_dir().empty()) GTEST_SKIP() << "needs ../shared/models beside the checkout; it is absent";
  std::unique_ptr<model::ModelFile> f;
  ASSERT_TRUE(model::ModelFile::open(testutil::models_dir() + "/stories260K/stories260K.bin", &f).ok());
  const auto ref = tp_greedy(*f, base::DType::kFp32, 1, 100);
  for (int tp : {2, 4}) {
    if (tp > gpus) continue;
    EXPECT_EQ(tp_greedy(*f, base::DType::kFp32, tp, 100), ref) << "tp " << tp;
  }
}

}  // namespace
