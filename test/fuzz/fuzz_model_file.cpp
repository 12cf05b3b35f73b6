// libFuzzer target: arbitrary bytes as a model file, used the way llama_infer uses one.
//
//   bytes -> memfd -> ModelFile::open -> embedded tokenizer (load, encode, decode)
//         -> LlamaModel on the CPU (2 positions) -> generate 2 tokens
//
// Built twice:
//   fuzz_model_file    the input is a whole file (LLMI or llama2.c): the reader's own checks are what
//                      gets exercised;
//   fuzz_gguf          (KUIPER_FUZZ_GGUF) the input is a GGUF file whose first four bytes are forced
//                      to the magic, so that every mutation exercises the GGUF reader (gguf_file.h,
//                      gguf_model.cpp), its vocabularies and block-type weights; seeds in corpus/gguf;
//   fuzz_model_header  (KUIPER_FUZZ_HEADER) the input is a JSON header alone, and the file is built
//                      around it here, each tensor's nbytes and offset made consistent with its shape
//                      and dtype and the data filled in, so that mutations of the config and tensor
//                      table (a dtype, a shape, a flag) reach the weight loader and the model instead
//                      of stopping at "nbytes does not match". Its seeds are the LLMI seeds' headers.
//
// ModelFile::open takes a path and mmaps it, so the bytes go into an in-memory file (memfd_create) that
// is opened through /proc/self/fd: a real regular file, and no disk traffic per input. Errors are the
// expected outcome; a crash, a sanitizer report, a leak or a hang is a bug. A model is only built when
// its converted weights stay small (the file size bounds each tensor, but tensors may share bytes and
// fp16/bf16 are widened to fp32 on the CPU), so one input costs milliseconds, not gigabytes.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "runtime/generator.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "model/tokenizer.h"
#include "runtime/tp_runner.h"
#include "sampler/sampler.h"

namespace {

constexpr uint64_t kMaxModelBytes = 64ull << 20;  // widened weights + workspace of a model we build
constexpr uint64_t kMaxDataBytes = 8ull << 20;    // tensor data laid out around a header input

// Stops the run with a message: libFuzzer saves the input that got here.
[[noreturn]] void bug(const std::string& what) {
  std::fprintf(stderr, "fuzz_model_file: %s\n", what.c_str());
  std::abort();
}

#ifdef KUIPER_FUZZ_HEADER
// A file around the JSON header in `data`: tensors (and a small tiktoken tokenizer, when the header
// has a tokenizer entry) laid out back to back, 256-byte aligned, with nbytes from shape x dtype size.
// Entries it cannot make sense of are left as they are, for the reader to refuse. "" when `data` is
// not a JSON object.
std::string file_around_header(const uint8_t* data, size_t size) {
  using nlohmann::json;
  json h = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (h.is_discarded() || !h.is_object()) return "";
  uint64_t at = 0;
  auto place = [&](json& entry, uint64_t nbytes) {
    at = (at + 255) / 256 * 256;
    entry["offset"] = at;
    entry["nbytes"] = nbytes;
    at += nbytes;
  };
  auto ts = h.find("tensors");
  if (ts != h.end() && ts->is_array()) {
    for (json& t : *ts) {
      base::DType dt;
      if (!t.is_object() || !t.contains("dtype") || !t["dtype"].is_string() || !t.contains("shape") ||
          !t["shape"].is_array() || !base::parse_dtype(t["dtype"].get<std::string>(), &dt))
        continue;
      uint64_t n = base::dtype_size(dt);
      for (const json& d : t["shape"]) {
        if (!d.is_number_integer() || d.get<int64_t>() <= 0 || d.get<int64_t>() > (int64_t)kMaxDataBytes ||
            (n *= (uint64_t)d.get<int64_t>()) > kMaxDataBytes) {
          n = 0;
          break;
        }
      }
      if (n > 0 && at + n <= kMaxDataBytes) place(t, n);
    }
  }
  // 256 one-byte tokens plus two merges: a valid tiktoken file.
  static const std::string tiktoken = [] {
    const char* b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (int b = 0; b < 256; ++b)
      out += std::string{b64[b >> 2], b64[(b & 3) << 4], '=', '='} + " " + std::to_string(b) + "\n";
    return out + "YWI= 256\nYWJj 257\n";  // "ab", "abc"
  }();
  auto tok = h.find("tokenizer");
  if (tok != h.end() && tok->is_object()) place(*tok, tiktoken.size());
  const std::string text = h.dump();
  std::string file = "LLMI";
  const uint32_t version = 1;
  const uint64_t len = text.size();
  file.append(reinterpret_cast<const char*>(&version), 4);
  file.append(reinterpret_cast<const char*>(&len), 8);
  file += text;
  const size_t data_start = (file.size() + 4095) / 4096 * 4096;
  // Data: bytes 23 3c repeated, about 0.01 as fp32 and bf16, 1.03 as fp16, 35 and 60 as int8.
  file.resize(data_start + at, '\x23');
  for (size_t i = data_start + 1; i < file.size(); i += 2) file[i] = '\x3c';
  if (tok != h.end() && tok->is_object())
    file.replace(data_start + (*tok)["offset"].get<uint64_t>(), tiktoken.size(), tiktoken);
  return file;
}
#endif

// The in-memory file the input is written to, reused across inputs.
const std::string& write_input(const uint8_t* data, size_t size) {
  static const int fd = memfd_create("fuzz_model_file", 0);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (fd < 0 || ftruncate(fd, 0) != 0) bug("memfd unavailable");
  for (size_t done = 0; done < size;) {
    const ssize_t n = pwrite(fd, data + done, size - done, (off_t)done);
    if (n <= 0) bug("memfd write failed");
    done += (size_t)n;
  }
  return path;
}

void use_tokenizer(const model::Tokenizer& tok) {
  for (const char* text : {"", "Once upon a time", "  two  spaces\n\nnew lines\t",
                           "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac", "\xff\xfe not UTF-8", "<|eot_id|><s>"}) {
    std::vector<int32_t> ids;
    if (!tok.encode(text, /*add_bos=*/true, &ids).ok()) continue;
    for (int32_t id : ids)
      if (id < 0 || id >= tok.vocab_size()) bug("encode gave id " + std::to_string(id) + " outside the vocabulary");
    (void)tok.decode(ids);
  }
  for (int32_t id : {-1, 0, tok.vocab_size() - 1, tok.vocab_size(), INT32_MAX}) (void)tok.decode_token(0, id);
}

// Widened weights plus the workspace and cache of a 2-position model, roughly.
uint64_t model_bytes(const model::ModelFile& f) {
  uint64_t total = 0;
  for (const auto& e : f.tensors()) total += e.nbytes * 2;
  const auto& c = f.config();
  total += (uint64_t)c.vocab_size * 4 + (uint64_t)c.n_layers * 4 * c.n_kv_heads * c.head_dim * 4 +
           (uint64_t)2 * 4 * (2ull * c.dim + c.n_heads * c.head_dim + c.hidden_dim * 2);
  return total;
}

void use_model(const model::ModelFile& f, const model::Tokenizer* tok) {
  if (model_bytes(f) > kMaxModelBytes) return;
  model::ModelOptions opts;
  opts.max_seq_len = std::min(f.config().max_seq_len, 2);
  std::unique_ptr<runtime::TpRunner> runner;
  if (!runtime::TpRunner::create(f, opts, 1, &runner).ok()) return;
  std::vector<int32_t> prompt = {f.config().bos_id};
  if (tok != nullptr && tok->vocab_size() == f.config().vocab_size) {
    std::vector<int32_t> ids;
    if (tok->encode("a", true, &ids).ok() && ids.size() <= 2) prompt = ids;
  }
  sampler::SamplerConfig sc;
  sc.temperature = 0.f;
  runtime::GenerateOptions go;
  go.max_new_tokens = 2;
  runtime::GenerateStats stats;
  const int32_t vocab = f.config().vocab_size;
  (void)runner->generate(
      sc, prompt, 0, go,
      [&](int32_t t) {
        if (t < 0 || t >= vocab) bug("generated token " + std::to_string(t) + " outside the vocabulary");
        return true;
      },
      &stats);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
#ifdef KUIPER_FUZZ_GGUF
  if (size < 4) return 0;
  static std::string gguf;
  gguf.assign(reinterpret_cast<const char*>(data), size);
  gguf.replace(0, 4, "GGUF");
  data = reinterpret_cast<const uint8_t*>(gguf.data());
#endif
#ifdef KUIPER_FUZZ_HEADER
  const std::string built = file_around_header(data, size);
  if (built.empty()) return 0;
  data = reinterpret_cast<const uint8_t*>(built.data());
  size = built.size();
#endif
  const std::string& path = write_input(data, size);
  std::unique_ptr<model::ModelFile> f;
  const base::Status s = model::ModelFile::open(path, &f);
  if (!s.ok()) {
    if (s.message().empty() || s.message().find('\n') != std::string::npos)
      bug("error is not one line: " + s.message());
    return 0;
  }
  for (const auto& e : f->tensors())
    if (e.offset > f->file_size() || e.nbytes > f->file_size() - e.offset)
      bug("tensor " + e.name + " outside the file");
  std::unique_ptr<model::Tokenizer> tok;
  if (f->tokenizer_type() != model::TokenizerType::kNone &&
      model::load_model_tokenizer(*f, &tok).ok())
    use_tokenizer(*tok);
  use_model(*f, tok.get());
  return 0;
}
