// What llama_infer and llama_bench share: the model/device flags, start-up (flag parsing, logging,
// Ctrl-C), opening a model with its tokenizer, and one-line errors.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "runtime/generator.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "model/tokenizer.h"
#include "runtime/tp_runner.h"

namespace app {

struct Engine {
  std::unique_ptr<model::ModelFile> file;
  std::unique_ptr<model::Tokenizer> tokenizer;
  std::unique_ptr<runtime::TpRunner> runner;  // the model's --tp ranks (one by default)
};

// Parses flags (prints our own --help and exits 0), quiets glog, installs the Ctrl-C handler.
void init(int* argc, char*** argv, const char* usage);
// Opens --model (+ --tokenizer) on --device with --tp ranks; returns 0 or the exit code after printing
// the error.
int open_engine(Engine* e);
// The pieces of open_engine, for programs that need only some: each returns "" or the error message.
std::string open_model_file(std::unique_ptr<model::ModelFile>* file);
std::string device_options(model::ModelOptions* opts);  // --device, --dtype, --max_seq_len, --tp checks
runtime::TpOptions tp_options();                        // --tp, --allreduce (after device_options)
// --tokenizer, else the tokenizer embedded in `file` (opened from --model when null).
std::string open_tokenizer(const model::ModelFile* file, std::unique_ptr<model::Tokenizer>* tok);
// Prints "llama_infer: error: MESSAGE" on stderr and returns `code`.
int fail(int code, const std::string& message);
void print_stats(const runtime::GenerateStats& s);
uint64_t clock_seed();
// True once Ctrl-C was pressed (the second press exits at once).
bool interrupted();

}  // namespace app
