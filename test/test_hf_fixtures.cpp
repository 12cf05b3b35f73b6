// Hugging Face golden fixtures through the C++ engine. test/fixtures/hf/<name>/expected.json holds
// what transformers computed (fp32, eager attention) for 12 prompt ids: the logits at every position
// and a 16-token greedy continuation. test/export_hf_fixtures.py (CTest fixture hf_exports) exports
// each model as fp32, fp16, bf16 and int8; here every export is run
//   - one position at a time (forward n = 1 at pos i), comparing the logits of all 12 positions,
//   - as one batched prefill of the 12 ids, comparing the last position's logits,
//   - greedily for 16 tokens (stop_at_eos off), comparing the ids,
// on the CPU, and on a GPU in a separate case. Error = ||ours - hf||_2 / ||hf||_2 over the vocabulary,
// per position; "worst" is the largest over the 12 positions of the one-at-a-time run.
//
// Measured on the CPU (fp32 compute, x86-64 g++ -O3, Release). fp32 differs from transformers only in
// summation order; for fp16/bf16/int8 the error is the weights' rounding. cpu_bound() allows 2.4-3x
// the worst figure of each of these dtypes. Greedy: how many leading ids of the 16 equal HF's.
//
//   fixture       dtype (group)  worst step  mean      prefill   greedy   HF top-2 gap: pos 11, generated
//   llama2_mha    fp32           6.9e-07     5.0e-07   4.7e-07   16/16    0.45, 0.13
//                 fp16           1.1e-03     7.1e-04   6.8e-04   16/16
//                 bf16           9.3e-03     5.6e-03   4.0e-03   16/16
//                 int8 (4)       1.1e-02     8.3e-03   8.2e-03   16/16
//   llama3_gqa    fp32           9.2e-07     7.0e-07   8.9e-07   16/16    0.064, 0.019
//                 fp16           1.0e-03     7.4e-04   7.0e-04   16/16
//                 bf16           8.0e-03     5.8e-03   5.1e-03    6/16
//                 int8 (64)      2.0e-02     1.6e-02   1.7e-02    2/16
//   llama32_tied  fp32           1.0e-06     6.3e-07   5.9e-07   16/16    0.20, 0.13
//                 fp16           1.4e-03     9.9e-04   1.1e-03   16/16
//                 bf16           1.1e-02     7.9e-03   9.1e-03   16/16
//                 int8 (64)      3.3e-02     2.6e-02   2.9e-02   16/16
//   odd_sizes     fp32           8.4e-07     6.4e-07   4.8e-07   16/16    0.42, 0.018
//                 fp16           1.1e-03     7.2e-04   6.8e-04   16/16
//                 bf16           7.7e-03     5.7e-03   6.3e-03   16/16
//                 int8 (8)       1.8e-02     1.3e-02   1.3e-02   16/16
// (group: the largest of 64/32/16/8/4 dividing dim, hidden_dim and q_dim; llama2_mha's hidden_dim
// 172 = 4 * 43 allows only 4.) A greedy run can only be expected to follow HF while its logit errors
// stay under half the top-2 gaps: llama3_gqa's gap at pos 11 is 0.064, and bf16 and int8 miss by up
// to 0.064 and 0.25 there (fp16 0.009), so those two diverge; in the others the luck held.
//
// On an H100 (CudaMatchesTransformers; activations fp32, fp16, bf16, bf16 for int8 weights), worst
// step over the four fixtures: fp32 1.1e-06 (greedy 16/16 everywhere, decoded by the CUDA graph),
// fp16 2.1e-03, bf16 1.8e-02, int8 3.6e-02; bf16 follows HF for 3 tokens on llama3_gqa and odd_sizes.
//
// int8 group size on llama3_gqa (CpuInt8GroupSizes), mean relative logit error over the 12 positions:
//   group           4        8        16       32       64       128
//   logits          8.6e-03  1.1e-02  1.3e-02  1.5e-02  1.6e-02  (not allowed: 128 does not divide 192)
//   weights         0.31%    0.40%    0.47%    0.53%    0.59%    0.64%  ||W - deq(W)|| / ||W||, numpy,
//                                                                      the 14 matrices with in % 128 == 0
//   scale bytes     1.0      0.5      0.25     0.125    0.0625   0.031  per weight (fp32 scale / group)
// Halving the group buys 10-25% less error for twice the scale bytes; at 64 the scales add 6% to
// the int8 weights and the logit error is 1.6%; 128 would save 3% more bytes for ~8% more weight
// error. Hence export.py's default of 64. (Gaussian weights: trained ones with outliers gain more
// from small groups, so this is the case least favourable to them.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "runtime/generator.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "sampler/sampler.h"
#include "test_util.h"

#ifdef KUIPER_WITH_CUDA
#include "base/cuda_utils.h"
#endif

namespace {

const char* const kFixtures[] = {"llama2_mha", "llama3_gqa", "llama32_tied", "odd_sizes"};
const char* const kDtypes[] = {"fp32", "fp16", "bf16", "int8"};
// The extra int8 exports of test/export_hf_fixtures.py (SWEEP_FIXTURE, every other allowed group).
const char* const kSweepFixture = "llama3_gqa";
const int kSweepGroups[] = {4, 8, 16, 32};

// Bound on the relative logit error (worst position) per weight dtype on the CPU; the measured
// figures are in the table above.
double cpu_bound(const std::string& dtype) {
  if (dtype == "fp32") return 1e-4;  // measured <= 1.0e-6: summation order only
  if (dtype == "fp16") return 4e-3;  // measured <= 1.4e-3: fp16 keeps 11 significant bits
  if (dtype == "bf16") return 3e-2;  // measured <= 1.1e-2: bf16 keeps 8
  return 8e-2;                       // int8, measured <= 3.3e-2 (llama32_tied, group 64)
}

// The same on a GPU, where activations and the KV cache are rounded too (fp16 / bf16 as the
// weights; bf16 for int8) and the kernels sum in other orders. Measured once, on an H100 (the
// worst over the four fixtures, see the table above): each bound is ~3x that figure.
double gpu_bound(const std::string& dtype) {
  if (dtype == "fp32") return 1e-4;  // measured <= 1.1e-6: fp32 activations, cuBLAS without TF32
  if (dtype == "fp16") return 6e-3;  // measured <= 2.1e-3 (CPU, weights alone: 1.4e-3)
  if (dtype == "bf16") return 5e-2;  // measured <= 1.8e-2 (CPU 1.1e-2)
  return 1e-1;                       // int8 weights, bf16 activations: measured <= 3.6e-2 (CPU 3.3e-2)
}

struct Expected {
  std::vector<int32_t> input_ids;          // 12 prompt ids, BOS first
  std::vector<std::vector<float>> logits;  // fp32 [12][vocab]: transformers' logits at every position
  std::vector<int32_t> greedy_ids;         // 16 greedy continuation ids
  double min_top2_gap = 0;                 // smallest top-1 minus top-2 logit, prompt and continuation
};

void load_expected(const std::string& name, Expected* e) {
  const std::string path = testutil::source_dir() + "/test/fixtures/hf/" + name + "/expected.json";
  std::ifstream f(path);
  ASSERT_TRUE(f.good()) << "cannot read " << path;
  const nlohmann::json j = nlohmann::json::parse(f);
  e->input_ids = j["input_ids"].get<std::vector<int32_t>>();
  e->logits = j["logits"].get<std::vector<std::vector<float>>>();
  e->greedy_ids = j["greedy_ids"].get<std::vector<int32_t>>();
  e->min_top2_gap = j["min_top2_gap"].get<double>();
  ASSERT_EQ(e->logits.size(), e->input_ids.size()) << path;
}

// $KUIPER_HF_EXPORTS (set by CTest), else the build tree's hf_exports; "" when nothing is there.
std::string exports_dir() {
  const char* env = std::getenv("KUIPER_HF_EXPORTS");
  const std::string d = env != nullptr && *env != '\0' ? env : KUIPER_HF_EXPORTS_DIR;
  struct stat st;
  return stat(d.c_str(), &st) == 0 && S_ISDIR(st.st_mode) ? d : "";
}

#define SKIP_WITHOUT_EXPORTS()                                                                      \
  do {                                                                                              \
    if (exports_dir().empty())                                                                      \
      GTEST_SKIP() << "needs the exports of test/export_hf_fixtures.py in " << KUIPER_HF_EXPORTS_DIR \
                   << " (CTest fixture hf_exports; it needs ../shared/models for the tokenizer)";   \
  } while (0)

// ||got - ref||_2 / ||ref||_2, in double.
double rel_error(const std::vector<float>& got, const std::vector<float>& ref) {
  double d = 0, r = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    d += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
    r += (double)ref[i] * ref[i];
  }
  return std::sqrt(d / r);
}

double max_abs_error(const std::vector<float>& got, const std::vector<float>& ref) {
  double m = 0;
  for (size_t i = 0; i < ref.size(); ++i) m = std::max(m, std::fabs((double)got[i] - ref[i]));
  return m;
}

double top2_gap(std::vector<float> row) {
  std::partial_sort(row.begin(), row.begin() + 2, row.end(), std::greater<float>());
  return (double)row[0] - row[1];
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

struct Measured {
  std::vector<double> step_rel;  // per position, one token at a time
  double worst_step = 0;
  int worst_pos = 0;
  double mean_step = 0;          // mean of step_rel
  double prefill_rel = 0;        // last position of one batched prefill
  double last_max_abs = 0;       // max |ours - hf| at the last prompt position (it picks token 1)
  std::vector<int32_t> greedy;   // 16 ids
  int32_t group_size = 0;
};

// Runs one exported model on `opts.device` and measures it against transformers.
void measure(const std::string& path, const model::ModelOptions& opts, const Expected& e, Measured* out) {
  std::unique_ptr<model::ModelFile> file;
  base::Status s = model::ModelFile::open(path, &file);
  ASSERT_TRUE(s.ok()) << s.message();
  std::unique_ptr<model::LlamaModel> m;
  s = model::LlamaModel::create(*file, opts, &m);
  ASSERT_TRUE(s.ok()) << s.message();
  out->group_size = file->config().group_size;
  const int32_t V = m->config().vocab_size;
  const int32_t n = (int32_t)e.input_ids.size();
  ASSERT_EQ((size_t)V, e.logits[0].size());

  std::vector<float> logits(V);
  for (int32_t i = 0; i < n; ++i) {
    s = m->forward(&e.input_ids[i], 1, i, logits.data());
    ASSERT_TRUE(s.ok()) << "position " << i << ": " << s.message();
    out->step_rel.push_back(rel_error(logits, e.logits[i]));
    if (out->step_rel.back() > out->worst_step) out->worst_step = out->step_rel.back(), out->worst_pos = i;
    out->mean_step += out->step_rel.back() / n;
  }
  // The batched prefill overwrites the same cache positions [0, n).
  s = m->forward(e.input_ids.data(), n, 0, logits.data());
  ASSERT_TRUE(s.ok()) << s.message();
  out->prefill_rel = rel_error(logits, e.logits[n - 1]);
  out->last_max_abs = max_abs_error(logits, e.logits[n - 1]);

  sampler::Sampler greedy;  // temperature 0
  ASSERT_TRUE(sampler::Sampler::create({}, V, &greedy).ok());
  runtime::GenerateOptions go;
  go.max_new_tokens = (int32_t)e.greedy_ids.size();
  go.stop_at_eos = false;
  runtime::GenerateStats st;
  s = runtime::generate(*m, greedy, e.input_ids, 0, go, logits.data(), [&](int32_t t) {
    out->greedy.push_back(t);
    return true;
  }, &st);
  ASSERT_TRUE(s.ok()) << s.message();
}

void print_header(const char* device) {
  std::printf("[%s] %-13s %-10s %-17s %-9s %-9s %-12s %s\n", device, "fixture", "dtype", "worst step (pos)",
              "mean", "prefill", "max|d| last", "greedy = HF");
}

void print_row(const char* device, const std::string& fixture, const std::string& label, const Measured& r,
               const Expected& e) {
  std::printf("[%s] %-13s %-10s %.2e (%2d)       %.2e  %.2e  %.2e     first %zu/%zu\n", device, fixture.c_str(),
              label.c_str(), r.worst_step, r.worst_pos, r.mean_step, r.prefill_rel, r.last_max_abs,
              common_prefix(r.greedy, e.greedy_ids), e.greedy_ids.size());
}

// The checks shared by both devices. fp32 weights with fp32 compute must reproduce HF's greedy ids
// exactly; otherwise the first generated token is asserted only where it is decided with a margin:
// HF's top-1/top-2 gap at the last prompt position exceeds twice our largest logit error there.
void check(const Measured& r, const Expected& e, double bound, bool exact_greedy) {
  EXPECT_LE(r.worst_step, bound) << "one token at a time, worst at position " << r.worst_pos;
  EXPECT_LE(r.prefill_rel, bound) << "batched prefill, last position";
  ASSERT_EQ(r.greedy.size(), e.greedy_ids.size());
  if (exact_greedy) {
    EXPECT_EQ(r.greedy, e.greedy_ids);
    return;
  }
  const double gap = top2_gap(e.logits.back());
  if (gap > 2 * r.last_max_abs) {
    EXPECT_EQ(r.greedy[0], e.greedy_ids[0]) << "top-2 gap " << gap << ", logit error " << r.last_max_abs;
  } else {
    std::printf("  first token not asserted: top-2 gap %.3g <= 2 x logit error %.3g\n", gap, r.last_max_abs);
  }
}

std::string export_path(const std::string& fixture, const std::string& tag) {
  return exports_dir() + "/" + fixture + "." + tag + ".bin";
}

TEST(HfFixtures, CpuMatchesTransformers) {
  SKIP_WITHOUT_EXPORTS();
  print_header("cpu");
  for (const char* fixture : kFixtures) {
    Expected e;
    ASSERT_NO_FATAL_FAILURE(load_expected(fixture, &e));
    for (const std::string dtype : kDtypes) {
      SCOPED_TRACE(std::string(fixture) + " " + dtype);
      Measured r;
      ASSERT_NO_FATAL_FAILURE(measure(export_path(fixture, dtype), model::ModelOptions{}, e, &r));
      const std::string label = dtype + (r.group_size ? " (" + std::to_string(r.group_size) + ")" : "");
      print_row("cpu", fixture, label, r, e);
      check(r, e, cpu_bound(dtype), dtype == "fp32");
    }
  }
}

// int8 at every group size the sweep fixture allows: the evidence behind the default of 64.
TEST(HfFixtures, CpuInt8GroupSizes) {
  SKIP_WITHOUT_EXPORTS();
  Expected e;
  ASSERT_NO_FATAL_FAILURE(load_expected(kSweepFixture, &e));
  print_header("cpu");
  std::vector<std::string> tags;
  for (int g : kSweepGroups) tags.push_back("int8_g" + std::to_string(g));
  tags.push_back("int8");  // the default group (64)
  for (const std::string& tag : tags) {
    SCOPED_TRACE(std::string(kSweepFixture) + " " + tag);
    Measured r;
    ASSERT_NO_FATAL_FAILURE(measure(export_path(kSweepFixture, tag), model::ModelOptions{}, e, &r));
    print_row("cpu", kSweepFixture, "int8 (" + std::to_string(r.group_size) + ")", r, e);
    check(r, e, cpu_bound("int8"), false);
  }
}

TEST(HfFixtures, CudaMatchesTransformers) {
  KP_SKIP_WITHOUT_GPU();
  SKIP_WITHOUT_EXPORTS();
#ifdef KUIPER_WITH_CUDA
  base::CudaStream stream;
  ASSERT_TRUE(stream.create(0).ok());
  print_header("cuda");
  for (const char* fixture : kFixtures) {
    Expected e;
    ASSERT_NO_FATAL_FAILURE(load_expected(fixture, &e));
    for (const std::string dtype : kDtypes) {
      SCOPED_TRACE(std::string(fixture) + " " + dtype);
      model::ModelOptions o;
      o.device = base::DeviceType::kCUDA;
      o.stream = stream.get();
      o.act_dtype = dtype == "fp32"   ? base::DType::kFp32
                    : dtype == "fp16" ? base::DType::kFp16
                                      : base::DType::kBf16;  // bf16 and int8 weights
      Measured r;
      ASSERT_NO_FATAL_FAILURE(measure(export_path(fixture, dtype), o, e, &r));
      const std::string label = dtype + (r.group_size ? " (" + std::to_string(r.group_size) + ")" : "");
      print_row("cuda", fixture, label, r, e);
      check(r, e, gpu_bound(dtype), dtype == "fp32");
    }
  }
#endif
}

}  // namespace
