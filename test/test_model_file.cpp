// The model-file reader: valid files load, and every kind of damage is a clear error, never a crash.
//
// Files in the project's format are written here by a small writer that follows docs/model_format.md
// on its own (the exporter, tools/export.py, is tested separately), so the reader is checked against
// the document rather than against the code it shares a repository with.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "runtime/generator.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "model_test_util.h"
#include "test_util.h"

namespace {

using nlohmann::json;

std::string temp_path(const std::string& name) {
  return testing::TempDir() + "/kp_" + std::to_string(getpid()) + "_" + name;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), (std::streamsize)bytes.size());
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A writer for format version 1: tensors appended in order, each at a 256-byte aligned offset.
struct LlmiWriter {
  json header = {{"tensors", json::array()}};
  std::string data;

  void add(const std::string& name, const std::string& dtype, std::vector<int64_t> shape, const std::string& bytes) {
    while (data.size() % 256) data.push_back('\0');
    header["tensors"].push_back(
        {{"name", name}, {"dtype", dtype}, {"shape", shape}, {"offset", data.size()}, {"nbytes", bytes.size()}});
    data += bytes;
  }
  void tokenizer(const std::string& type, const std::string& blob) {
    while (data.size() % 256) data.push_back('\0');
    header["tokenizer"] = {{"type", type}, {"offset", data.size()}, {"nbytes", blob.size()}};
    data += blob;
  }
  std::string bytes() const {
    const std::string h = header.dump();
    std::string out = "LLMI";
    const uint32_t version = 1;
    const uint64_t len = h.size();
    out.append(reinterpret_cast<const char*>(&version), 4);
    out.append(reinterpret_cast<const char*>(&len), 8);
    out += h;
    while (out.size() % 4096) out.push_back('\0');
    return out + data;
  }
};

std::string floats_as(const float* p, size_t n, const std::string& dtype) {
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    if (dtype == "fp32") {
      out.append(reinterpret_cast<const char*>(p + i), 4);
    } else {
      const uint16_t h = dtype == "fp16" ? base::float_to_half(p[i]) : base::float_to_bf16(p[i]);
      out.append(reinterpret_cast<const char*>(&h), 2);
    }
  }
  return out;
}

// stories260K rewritten into the project's format with linear weights in `dtype` (int8: group 32).
std::string stories_as_llmi(const model::ModelFile& src, const std::string& dtype) {
  const auto& c = src.config();
  LlmiWriter w;
  w.header["config"] = {{"family", "llama2"}, {"dim", c.dim}, {"hidden_dim", c.hidden_dim},
                        {"n_layers", c.n_layers}, {"n_heads", c.n_heads}, {"n_kv_heads", c.n_kv_heads},
                        {"head_dim", c.head_dim}, {"vocab_size", c.vocab_size}, {"max_seq_len", c.max_seq_len},
                        {"norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"rope_scaling", nullptr},
                        {"tied_embeddings", true}, {"bos_id", 1}, {"eos_ids", {2}}, {"weight_dtype", dtype},
                        {"group_size", dtype == "int8" ? 4 : 0}};
  for (const auto& e : src.tensors()) {
    const float* p = static_cast<const float*>(src.data(e));
    const size_t n = e.nbytes / 4;
    const bool norm = e.shape.size() == 1;
    const bool embed = e.name == "tok_embeddings";
    if (norm) {
      w.add(e.name, "fp32", e.shape, floats_as(p, n, "fp32"));
    } else if (dtype != "int8" || embed) {
      const std::string dt = dtype == "int8" ? "fp16" : dtype;
      w.add(e.name, dt, e.shape, floats_as(p, n, dt));
    } else {
      const int64_t rows = e.shape[0], cols = e.shape[1], g = 4;
      std::string q(n, '\0');
      std::vector<float> scales(rows * cols / g);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < cols / g; ++b) {
          float mx = 0;
          for (int64_t k = 0; k < g; ++k) mx = std::max(mx, std::fabs(p[r * cols + b * g + k]));
          const float s = mx / 127.f;
          scales[r * (cols / g) + b] = s;
          for (int64_t k = 0; k < g; ++k)
            q[r * cols + b * g + k] = (char)(int8_t)std::lround(s > 0 ? p[r * cols + b * g + k] / s : 0.f);
        }
      w.add(e.name, "int8", e.shape, q);
      w.add(e.name + ".scales", "fp32", {rows, cols / g}, floats_as(scales.data(), scales.size(), "fp32"));
    }
  }
  w.tokenizer("sentencepiece", read_file(testutil::models_dir() + "/stories260K/tok512.model"));
  return w.bytes();
}

base::Status open_bytes(const std::string& bytes, const std::string& name) {
  const std::string path = temp_path(name);
  write_file(path, bytes);
  std::unique_ptr<model::ModelFile> f;
  base::Status s = model::ModelFile::open(path, &f);
  std::remove(path.c_str());
  return s;
}

std::vector<int32_t> greedy_ids(const model::ModelFile& f, int n) {
  std::unique_ptr<model::LlamaModel> m;
  EXPECT_TRUE(model::LlamaModel::create(f, {}, &m).ok());
  return testutil::greedy(*m, {1, 403, 407, 261, 378}, n);  // "Once upon a time" in tok512
}

class ModelFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testutil::models_dir().empty()) GTEST_SKIP() << "needs ../shared/models beside the checkout; it is absent";
    ASSERT_TRUE(model::ModelFile::open(testutil::models_dir() + "/stories260K/stories260K.bin", &src_).ok());
    good_ = stories_as_llmi(*src_, "fp32");
  }
  std::unique_ptr<model::ModelFile> src_;
  std::string good_;
};

TEST_F(ModelFileTest, Fp32FileGivesTheSameTokensAsTheLlama2cCheckpoint) {
  const std::string path = temp_path("fp32.bin");
  write_file(path, good_);
  std::unique_ptr<model::ModelFile> f;
  ASSERT_TRUE(model::ModelFile::open(path, &f).ok());
  EXPECT_EQ(f->tokenizer_type(), model::TokenizerType::kSentencePiece);
  EXPECT_EQ(greedy_ids(*f, 40), greedy_ids(*src_, 40));
  std::remove(path.c_str());
}

// fp16 / bf16 / int8 files load and produce nearly the same next-token distribution.
TEST_F(ModelFileTest, ReducedPrecisionFilesLoad) {
  for (const char* dt : {"fp16", "bf16", "int8"}) {
    const std::string path = temp_path(std::string(dt) + ".bin");
    write_file(path, stories_as_llmi(*src_, dt));
    std::unique_ptr<model::ModelFile> f;
    const base::Status s = model::ModelFile::open(path, &f);
    ASSERT_TRUE(s.ok()) << s.message();
    const auto a = greedy_ids(*f, 8), b = greedy_ids(*src_, 8);
    // The first few greedy tokens survive the rounding (top-2 gaps here are > 0.05 in logits).
    EXPECT_EQ(std::vector<int32_t>(a.begin(), a.begin() + 4), std::vector<int32_t>(b.begin(), b.begin() + 4)) << dt;
    std::remove(path.c_str());
  }
}

TEST_F(ModelFileTest, TruncatedAnywhereIsAnError) {
  for (size_t cut : {size_t(3), size_t(15), size_t(100), good_.size() / 2, good_.size() - 1}) {
    const base::Status s = open_bytes(good_.substr(0, cut), "trunc.bin");
    EXPECT_FALSE(s.ok()) << "cut at " << cut;
    EXPECT_NE(s.message().find("trunc"), std::string::npos) << s.message();
  }
}

TEST_F(ModelFileTest, DamagedHeadersAreErrors) {
  auto with_header = [&](const std::function<void(json&)>& edit) {
    const uint64_t len = *reinterpret_cast<const uint64_t*>(good_.data() + 8);
    json h = json::parse(good_.substr(16, len));
    edit(h);
    LlmiWriter w;
    w.header = h;
    w.data = good_.substr((16 + len + 4095) / 4096 * 4096);
    return w.bytes();
  };
  std::string bad = good_;
  bad[0] = 'X';
  EXPECT_FALSE(open_bytes(bad, "magic.bin").ok());
  bad = good_;
  bad[4] = 9;  // version 9
  EXPECT_NE(open_bytes(bad, "version.bin").message().find("version 9"), std::string::npos);
  bad = good_;
  bad[15] = 0x7f;  // absurd header length
  EXPECT_FALSE(open_bytes(bad, "hlen.bin").ok());
  bad = good_;
  bad[16] = 'x';  // JSON syntax error: the header no longer starts with '{'
  EXPECT_NE(open_bytes(bad, "json.bin").message().find("JSON"), std::string::npos);

  const std::vector<std::pair<std::string, std::function<void(json&)>>> edits = {
      {"zero dim", [](json& h) { h["config"]["dim"] = 0; }},
      {"negative layers", [](json& h) { h["config"]["n_layers"] = -3; }},
      {"huge vocab", [](json& h) { h["config"]["vocab_size"] = 1LL << 40; }},
      {"heads not dividing", [](json& h) { h["config"]["n_kv_heads"] = 3; }},
      {"unknown dtype", [](json& h) { h["tensors"][0]["dtype"] = "fp8"; }},
      {"offset outside", [](json& h) { h["tensors"][3]["offset"] = 1ull << 40; }},
      {"misaligned", [](json& h) { h["tensors"][3]["offset"] = 4; }},
      {"nbytes mismatch", [](json& h) { h["tensors"][1]["nbytes"] = 8; }},
      {"negative shape", [](json& h) { h["tensors"][1]["shape"] = {-64}; }},
      {"overflowing shape", [](json& h) { h["tensors"][1]["shape"] = {1LL << 40, 1LL << 40}; }},
      {"missing config", [](json& h) { h.erase("config"); }},
      {"unknown tokenizer", [](json& h) { h["tokenizer"]["type"] = "wordpiece"; }},
      {"bos outside vocab", [](json& h) { h["config"]["bos_id"] = 100000; }},
  };
  for (const auto& [what, edit] : edits) {
    const base::Status s = open_bytes(with_header(edit), "edit.bin");
    EXPECT_FALSE(s.ok()) << what;
    EXPECT_NE(s.message().find("edit.bin"), std::string::npos) << "error should name the file: " << s.message();
  }
  // Structurally valid file with a tensor missing: loading the model names the tensor.
  const std::string path = temp_path("missing.bin");
  write_file(path, with_header([](json& h) { h["tensors"][2]["name"] = "renamed"; }));
  std::unique_ptr<model::ModelFile> f;
  ASSERT_TRUE(model::ModelFile::open(path, &f).ok());
  std::unique_ptr<model::LlamaModel> m;
  const base::Status s = model::LlamaModel::create(*f, {}, &m);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("missing"), std::string::npos) << s.message();
  std::remove(path.c_str());
}

TEST_F(ModelFileTest, GarbageAndLlama2cDamage) {
  std::mt19937 rng(5);
  std::string garbage(5000, '\0');
  for (char& c : garbage) c = (char)rng();
  EXPECT_FALSE(open_bytes(garbage, "garbage.bin").ok());
  EXPECT_FALSE(open_bytes("", "empty.bin").ok());
  const std::string l2c = read_file(testutil::models_dir() + "/stories260K/stories260K.bin");
  EXPECT_FALSE(open_bytes(l2c.substr(0, l2c.size() - 4), "l2c_short.bin").ok());
  EXPECT_FALSE(open_bytes(l2c + "xxxx", "l2c_long.bin").ok());
  std::string neg = l2c;
  const int32_t bad_layers = -5;
  std::memcpy(&neg[8], &bad_layers, 4);
  EXPECT_FALSE(open_bytes(neg, "l2c_neg.bin").ok());
  std::unique_ptr<model::ModelFile> f;
  EXPECT_EQ(model::ModelFile::open("/nonexistent/model.bin", &f).code(), base::StatusCode::kNotFound);
}

}  // namespace
