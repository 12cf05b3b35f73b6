// The GGUF reader against hostile files: every count, length, offset, alignment and shape that can
// lie is made to lie, and each must give one line of error (never a crash, a huge allocation or a
// hang; ASan and UBSan watch this suite in tools/sanitize.sh). Also: a valid file maps onto the
// project's names and shapes, and every truncation of it is refused.
//
// The files are built here by a small writer that follows the GGUF layout (gguf_file.h) on its own.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "model/gguf_file.h"
#include "model/model_file.h"
#include "model/tokenizer.h"
#include "runtime/tp_runner.h"

namespace {

using model::GgufFile;

// A GGUF writer: metadata pairs and tensors in order, data aligned to `alignment`.
struct GgufBuilder {
  uint32_t version = 3;
  uint64_t alignment = 32;
  std::string kv;  // the encoded pairs
  uint64_t n_kv = 0;
  struct T { std::string name; std::vector<uint64_t> ne; uint32_t type; std::string data; };
  std::vector<T> tensors;

  template <typename V> static void put(std::string* s, V v) { s->append(reinterpret_cast<const char*>(&v), sizeof(V)); }
  static void put_str(std::string* s, const std::string& v) {
    put<uint64_t>(s, v.size());
    s->append(v);
  }
  void key(const std::string& k, uint32_t type) {
    put_str(&kv, k);
    put<uint32_t>(&kv, type);
    ++n_kv;
  }
  void u32(const std::string& k, uint32_t v) { key(k, GgufFile::kU32); put(&kv, v); }
  void f32(const std::string& k, float v) { key(k, GgufFile::kF32); put(&kv, v); }
  void str(const std::string& k, const std::string& v) { key(k, GgufFile::kString); put_str(&kv, v); }
  void strs(const std::string& k, const std::vector<std::string>& v) {
    key(k, GgufFile::kArray);
    put<uint32_t>(&kv, GgufFile::kString);
    put<uint64_t>(&kv, v.size());
    for (const auto& s : v) put_str(&kv, s);
  }
  void i32s(const std::string& k, const std::vector<int32_t>& v) {
    key(k, GgufFile::kArray);
    put<uint32_t>(&kv, GgufFile::kI32);
    put<uint64_t>(&kv, v.size());
    for (int32_t x : v) put(&kv, x);
  }
  void f32s(const std::string& k, const std::vector<float>& v) {
    key(k, GgufFile::kArray);
    put<uint32_t>(&kv, GgufFile::kF32);
    put<uint64_t>(&kv, v.size());
    for (float x : v) put(&kv, x);
  }
  // An F32 tensor of GGUF shape `ne` (innermost first), filled with `value`.
  void tensor(const std::string& name, std::vector<uint64_t> ne, float value = 0.01f) {
    uint64_t n = 1;
    for (uint64_t d : ne) n *= d;
    std::string data;
    for (uint64_t i = 0; i < n; ++i) put(&data, value);
    tensors.push_back({name, std::move(ne), 0, std::move(data)});
  }

  std::string bytes() const {
    std::string out = "GGUF";
    put(&out, version);
    put<uint64_t>(&out, tensors.size());
    put<uint64_t>(&out, n_kv);
    out += kv;
    uint64_t off = 0;
    std::vector<uint64_t> offsets;
    for (const T& t : tensors) {
      offsets.push_back(off);
      off = (off + t.data.size() + alignment - 1) / alignment * alignment;
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      put_str(&out, tensors[i].name);
      put<uint32_t>(&out, (uint32_t)tensors[i].ne.size());
      for (uint64_t d : tensors[i].ne) put(&out, d);
      put(&out, tensors[i].type);
      put(&out, offsets[i]);
    }
    out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
    const size_t data_start = out.size();
    for (size_t i = 0; i < tensors.size(); ++i) {
      out.resize(data_start + offsets[i], '\0');
      out += tensors[i].data;
    }
    return out;
  }
};

// The hyperparameter keys of the tiny Llama below: dim 8, hidden 16, 1 layer, 2 heads of 4 (1 KV head).
void tiny_hparams(GgufBuilder& b) {
  b.str("general.architecture", "llama");
  b.u32("llama.context_length", 16);
  b.u32("llama.embedding_length", 8);
  b.u32("llama.block_count", 1);
  b.u32("llama.feed_forward_length", 16);
  b.u32("llama.attention.head_count", 2);
  b.u32("llama.attention.head_count_kv", 1);
  b.f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
}

// A valid tiny Llama: dim 8, hidden 16, 1 layer, 2 heads of 4 (1 KV head), a SentencePiece-style
// vocabulary of 8 tokens, untied classifier. `edit` may change the builder before the tensors.
GgufBuilder tiny_llama(const std::function<void(GgufBuilder&)>& edit = nullptr) {
  GgufBuilder b;
  tiny_hparams(b);
  b.f32("llama.rope.freq_base", 10000.f);
  b.str("tokenizer.ggml.model", "llama");
  b.strs("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "\xe2\x96\x81" "a", "b", "c", "\xe2\x96\x81", "a"});
  b.f32s("tokenizer.ggml.scores", {0, 0, 0, -1, -2, -3, -4, -5});
  b.i32s("tokenizer.ggml.token_type", {2, 3, 3, 1, 1, 1, 1, 1});
  b.u32("tokenizer.ggml.bos_token_id", 1);
  b.u32("tokenizer.ggml.eos_token_id", 2);
  if (edit) edit(b);
  b.tensor("token_embd.weight", {8, 8});
  b.tensor("blk.0.attn_norm.weight", {8}, 1.f);
  b.tensor("blk.0.attn_q.weight", {8, 8});
  b.tensor("blk.0.attn_k.weight", {8, 4});
  b.tensor("blk.0.attn_v.weight", {8, 4});
  b.tensor("blk.0.attn_output.weight", {8, 8});
  b.tensor("blk.0.ffn_norm.weight", {8}, 1.f);
  b.tensor("blk.0.ffn_gate.weight", {8, 16});
  b.tensor("blk.0.ffn_down.weight", {16, 8});
  b.tensor("blk.0.ffn_up.weight", {8, 16});
  b.tensor("output_norm.weight", {8}, 1.f);
  b.tensor("output.weight", {8, 8});
  return b;
}

std::string temp_path(const std::string& name) {
  return testing::TempDir() + "/kp_gguf_" + std::to_string(getpid()) + "_" + name;
}

base::Status open_bytes(const std::string& bytes, std::unique_ptr<model::ModelFile>* out) {
  const std::string path = temp_path("model.gguf");
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), (std::streamsize)bytes.size());
  }
  const base::Status s = model::ModelFile::open(path, out);
  std::remove(path.c_str());
  return s;
}

// Opening `bytes` fails with one line that contains `want`.
::testing::AssertionResult refused(const std::string& bytes, const std::string& want) {
  std::unique_ptr<model::ModelFile> f;
  const base::Status s = open_bytes(bytes, &f);
  if (s.ok()) return ::testing::AssertionFailure() << "accepted; expected an error with '" << want << "'";
  if (s.message().find('\n') != std::string::npos) return ::testing::AssertionFailure() << "not one line: " << s.message();
  if (s.message().find(want) == std::string::npos)
    return ::testing::AssertionFailure() << "error '" << s.message() << "' does not mention '" << want << "'";
  return ::testing::AssertionSuccess();
}

TEST(GgufReader, TinyLlamaMapsOntoTheProjectsNames) {
  std::unique_ptr<model::ModelFile> f;
  const base::Status s = open_bytes(tiny_llama().bytes(), &f);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(f->is_gguf());
  const model::ModelConfig& c = f->config();
  EXPECT_EQ(c.dim, 8);
  EXPECT_EQ(c.hidden_dim, 16);
  EXPECT_EQ(c.n_heads, 2);
  EXPECT_EQ(c.n_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.vocab_size, 8);
  EXPECT_EQ(c.max_seq_len, 16);
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_EQ(c.family, model::Family::kLlama2);
  ASSERT_NE(f->find("layers.0.wk"), nullptr);
  EXPECT_EQ(f->find("layers.0.wk")->shape, (std::vector<int64_t>{4, 8}));  // ne {8, 4} reversed: [out, in]
  EXPECT_EQ(f->find("layers.0.w2")->shape, (std::vector<int64_t>{8, 16}));
  EXPECT_NE(f->find("norm"), nullptr);
  EXPECT_EQ(f->tokenizer_type(), model::TokenizerType::kVocabulary);
  std::unique_ptr<model::Tokenizer> tok;
  ASSERT_TRUE(model::load_model_tokenizer(*f, &tok).ok());
  EXPECT_EQ(tok->vocab_size(), 8);
  // The model runs: two greedy tokens on the CPU.
  std::unique_ptr<runtime::TpRunner> r;
  ASSERT_TRUE(runtime::TpRunner::create(*f, {}, 1, &r).ok());
}

TEST(GgufReader, EveryTruncationIsRefused) {
  const std::string whole = tiny_llama().bytes();
  for (size_t n = 0; n < whole.size(); n += (n < 2048 ? 1 : 61)) {
    std::unique_ptr<model::ModelFile> f;
    const base::Status s = open_bytes(whole.substr(0, n), &f);
    EXPECT_FALSE(s.ok()) << "a file cut at " << n << " of " << whole.size() << " bytes was accepted";
    EXPECT_EQ(s.message().find('\n'), std::string::npos) << s.message();
  }
}

// The header's own fields, patched in a valid file.
std::string with_u64_at(std::string bytes, size_t at, uint64_t v) {
  std::memcpy(&bytes[at], &v, 8);
  return bytes;
}

TEST(GgufReader, HeaderLies) {
  const std::string ok = tiny_llama().bytes();
  std::string v1 = ok, be = ok;
  const uint32_t one = 1, three_be = 0x03000000u;
  std::memcpy(&v1[4], &one, 4);
  std::memcpy(&be[4], &three_be, 4);
  EXPECT_TRUE(refused(v1, "GGUF version 1 is not supported"));
  EXPECT_TRUE(refused(be, "big-endian"));
  EXPECT_TRUE(refused(with_u64_at(ok, 8, 1ull << 62), "tensor entries cannot fit"));
  EXPECT_TRUE(refused(with_u64_at(ok, 16, UINT64_MAX), "metadata entries cannot fit"));
  EXPECT_TRUE(refused(with_u64_at(ok, 16, 3), "tensor"));  // fewer pairs: the next ones are read as tensor entries
}

TEST(GgufReader, MetadataLies) {
  // A string length past the end of the file (the first key's length field is at byte 24).
  EXPECT_TRUE(refused(with_u64_at(tiny_llama().bytes(), 24, 1ull << 40), "runs past the end"));
  EXPECT_TRUE(refused(with_u64_at(tiny_llama().bytes(), 24, UINT64_MAX), "runs past the end"));
  // An array count that the file cannot hold, of strings and of scalars.
  GgufBuilder big_strings = tiny_llama([](GgufBuilder& b) {
    b.key("x.strings", GgufFile::kArray);
    GgufBuilder::put<uint32_t>(&b.kv, GgufFile::kString);
    GgufBuilder::put<uint64_t>(&b.kv, 1ull << 61);
  });
  EXPECT_TRUE(refused(big_strings.bytes(), "strings cannot fit"));
  GgufBuilder big_ints = tiny_llama([](GgufBuilder& b) {
    b.key("x.ints", GgufFile::kArray);
    GgufBuilder::put<uint32_t>(&b.kv, GgufFile::kU64);
    GgufBuilder::put<uint64_t>(&b.kv, (1ull << 61) + 1);  // * 8 bytes would wrap to 8
  });
  EXPECT_TRUE(refused(big_ints.bytes(), "runs past the end"));
  GgufBuilder nested = tiny_llama([](GgufBuilder& b) {
    b.key("x.nested", GgufFile::kArray);
    GgufBuilder::put<uint32_t>(&b.kv, GgufFile::kArray);
    GgufBuilder::put<uint64_t>(&b.kv, 1);
  });
  EXPECT_TRUE(refused(nested.bytes(), "array of arrays"));
  GgufBuilder unknown = tiny_llama([](GgufBuilder& b) { b.key("x.weird", 13); });
  EXPECT_TRUE(refused(unknown.bytes(), "unknown value type 13"));
  // A key with a newline in it (found by fuzz_gguf): the message stays one line.
  GgufBuilder newline = tiny_llama([](GgufBuilder& b) { b.key("x.bad\nkey", 13); });
  EXPECT_TRUE(refused(newline.bytes(), "metadata key x.bad\\x0akey has unknown value type 13"));
  EXPECT_TRUE(refused(tiny_llama([](GgufBuilder& b) { b.u32("llama.block_count", 2); }).bytes(), "appears twice"));
  // A mistyped value of a key the model needs: embedding_length's type patched from U32 to F32.
  std::string mistyped = tiny_llama().bytes();
  const std::string key = "llama.embedding_length";
  const uint32_t f32 = GgufFile::kF32;
  std::memcpy(&mistyped[mistyped.find(key) + key.size()], &f32, 4);
  EXPECT_TRUE(refused(mistyped, "llama.embedding_length is not an integer"));
}

TEST(GgufReader, AlignmentLies) {
  for (uint32_t a : {0u, 3u, 48u, 1u << 20}) {
    GgufBuilder b = tiny_llama([a](GgufBuilder& g) { g.u32("general.alignment", a); });
    EXPECT_TRUE(refused(b.bytes(), "general.alignment")) << a;
  }
  // A valid alignment other than 32 is honoured.
  GgufBuilder b = tiny_llama([](GgufBuilder& g) { g.u32("general.alignment", 64); });
  b.alignment = 64;
  std::unique_ptr<model::ModelFile> f;
  const base::Status s = open_bytes(b.bytes(), &f);
  EXPECT_TRUE(s.ok()) << s.message();
}

TEST(GgufReader, TensorLies) {
  auto edited = [](const std::function<void(GgufBuilder::T&)>& change, const std::string& which = "blk.0.attn_q.weight") {
    GgufBuilder b = tiny_llama();
    for (auto& t : b.tensors)
      if (t.name == which) change(t);
    return b.bytes();
  };
  EXPECT_TRUE(refused(edited([](GgufBuilder::T& t) { t.ne = {8, 8, 1, 1, 1}; }), "5 dimensions"));
  EXPECT_TRUE(refused(edited([](GgufBuilder::T& t) { t.ne = {8, 0}; }), "zero or overflowing"));
  EXPECT_TRUE(refused(edited([](GgufBuilder::T& t) { t.ne = {1ull << 32, 1ull << 32}; }), "zero or overflowing"));
  EXPECT_TRUE(refused(edited([](GgufBuilder::T& t) { t.ne = {1ull << 40, 2}; }), "larger than the file"));
  EXPECT_TRUE(refused(edited([](GgufBuilder::T& t) { t.type = 13; }), "type Q5_K"));
  EXPECT_TRUE(refused(edited([](GgufBuilder::T& t) { t.type = 99; }), "type 99"));
  // Q8_0 rows of 8 values are not whole blocks of 32.
  EXPECT_TRUE(refused(edited([](GgufBuilder::T& t) { t.type = 8; }), "not whole Q8_0 blocks"));
  EXPECT_TRUE(refused(edited([](GgufBuilder::T& t) { t.name = "output.weight"; }), "appears twice"));
  EXPECT_TRUE(refused(edited([](GgufBuilder::T& t) { t.name = "blk.0.attn_q.bias"; }), "not part of the Llama"));
  EXPECT_TRUE(refused(edited([](GgufBuilder::T& t) { t.name = "blk.7.attn_q.weight"; }), "not part of the Llama"));
  EXPECT_TRUE(refused(edited([](GgufBuilder::T& t) { t.data.resize(8); }, "output.weight"), "outside the file"));
  // Offsets: misaligned, and past the end (patched in the tensor table of the valid file).
  const std::string ok = tiny_llama().bytes();
  const std::string name = "output.weight";
  const size_t at = ok.rfind(name) + name.size() + 4 + 16 + 4;  // n_dims, ne[2], type: then the offset
  uint64_t off;
  std::memcpy(&off, &ok[at], 8);
  EXPECT_TRUE(refused(with_u64_at(ok, at, off + 4), "not aligned"));
  EXPECT_TRUE(refused(with_u64_at(ok, at, off + (1ull << 40)), "outside the file"));
  EXPECT_TRUE(refused(with_u64_at(ok, at, UINT64_MAX - 31), "outside the file"));
}

TEST(GgufReader, ModelLies) {
  EXPECT_TRUE(refused(tiny_llama([](GgufBuilder& b) {
                        b.kv.clear();
                        b.n_kv = 0;
                        b.str("general.architecture", "qwen2");
                      }).bytes(),
                      "architecture 'qwen2' is not supported"));
  // block_count is read before tensors are matched against it.
  GgufBuilder many;
  many.str("general.architecture", "llama");
  for (const char* k : {"llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
                        "llama.attention.head_count"})
    many.u32(k, 8);
  many.u32("llama.block_count", 5000);
  many.f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  many.str("tokenizer.ggml.model", "llama");
  many.strs("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>"});
  EXPECT_TRUE(refused(many.bytes(), "llama.block_count 5000"));
  // Another tokenizer kind: the value "llama" of tokenizer.ggml.model patched to "bertx".
  std::string bert = tiny_llama().bytes();
  const std::string key = "tokenizer.ggml.model";
  bert.replace(bert.find(key) + key.size() + 4 + 8, 5, "bertx");
  EXPECT_TRUE(refused(bert, "tokenizer.ggml.model 'bertx' is not supported"));
  // Shapes that disagree with the hyperparameters open (the file is consistent in itself) and are
  // refused by the loader, which names the tensor: an embedding table longer than the vocabulary, a
  // query projection of the wrong width.
  for (const auto& [gguf_name, ours] : {std::pair{"token_embd.weight", "tok_embeddings"}, {"blk.0.attn_q.weight", "layers.0.wq"}}) {
    GgufBuilder b = tiny_llama();
    for (auto& t : b.tensors)
      if (t.name == gguf_name) t.ne = {8, 9}, t.data.resize(8 * 9 * 4);
    std::unique_ptr<model::ModelFile> f;
    ASSERT_TRUE(open_bytes(b.bytes(), &f).ok());
    std::unique_ptr<runtime::TpRunner> r;
    const base::Status s = runtime::TpRunner::create(*f, {}, 1, &r);
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find(std::string("tensor ") + ours + " has shape"), std::string::npos) << s.message();
  }
}

TEST(GgufReader, VocabularyLies) {
  auto tokenizer_error = [](GgufBuilder b) {
    std::unique_ptr<model::ModelFile> f;
    base::Status s = open_bytes(b.bytes(), &f);
    if (!s.ok()) return s.message();
    std::unique_ptr<model::Tokenizer> tok;
    s = model::load_model_tokenizer(*f, &tok);
    return s.ok() ? std::string("accepted") : s.message();
  };
  // No unknown piece; a piece type out of range; BOS outside the vocabulary; types of another length.
  auto rebuilt = [](const std::vector<int32_t>& types, uint32_t bos) {
    GgufBuilder b;
    tiny_hparams(b);
    b.str("tokenizer.ggml.model", "llama");
    b.strs("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "\xe2\x96\x81" "a", "b", "c", "\xe2\x96\x81", "a"});
    b.i32s("tokenizer.ggml.token_type", types);
    b.u32("tokenizer.ggml.bos_token_id", bos);
    GgufBuilder full = tiny_llama();
    b.tensors = full.tensors;
    return b;
  };
  EXPECT_NE(tokenizer_error(rebuilt({1, 3, 3, 1, 1, 1, 1, 1}, 1)).find("exactly one unknown"), std::string::npos);
  EXPECT_NE(tokenizer_error(rebuilt({2, 3, 3, 1, 1, 9, 1, 1}, 1)).find("piece type 9"), std::string::npos);
  EXPECT_NE(tokenizer_error(rebuilt({2, 3, 3, 1, 1, 1, 1, 1}, 8)).find("outside the vocabulary"), std::string::npos);
  EXPECT_NE(tokenizer_error(rebuilt({2, 3, 3}, 1)).find("differ in length"), std::string::npos);
}

}  // namespace
