// What llama_infer and llama_bench share: the model/device flags, start-up (flag parsing, logging,
// Ctrl-C, CPU threads), opening a model with its tokenizer, and one-line errors.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>

#include "args.h"
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

// The shared flags' short and llama.cpp spellings (-m, -t, -c / --ctx-size), then `program`'s.
ArgSpec with_common_aliases(std::vector<Alias> program, std::set<std::string> repeatable = {});

// Parses the command line: --help and --version print and exit 0, a usage error prints one line and
// exits 2. Then quiets glog, installs the Ctrl-C handler and sets the CPU thread budget (--threads).
void init(int argc, char** argv, const char* usage, const ArgSpec& spec);
// What init() parsed: which flags were given, every value of the repeatable ones.
const ParsedArgs& args();
// "" when none of `flags` was given, else "--FLAG WHY" for the first one (for a flag that does
// nothing in the mode at hand: refused rather than silently ignored).
std::string refuse_if_given(std::initializer_list<const char*> flags, const std::string& why);

// Opens --model (+ --tokenizer) on --device with --tp ranks; returns 0 or the exit code after printing
// the error.
// `adjust` (optional) may change the model options once the model's configuration is known (the
// server sizes its batch and KV cache there); it returns "" or a usage error.
int open_engine(Engine* e, const std::function<std::string(const model::ModelConfig&, model::ModelOptions*)>& adjust = nullptr);
// The pieces of open_engine, for programs that need only some: each returns "" or the error message.
std::string open_model_file(std::unique_ptr<model::ModelFile>* file);
// --device, --max_seq_len, --cuda_graph / --threads (refused where they do nothing), and `dtype` (the
// --dtype text; "" for the device's default).
std::string device_options(model::ModelOptions* opts, const std::string& dtype);
bool uses_cpu();  // --device, or its default (cuda when a GPU is visible)
int tp_flag();  // --tp as one number (0 when it is not one)
runtime::TpOptions tp_options();  // --tp (one number), --pp, --comm_timeout, --allreduce (checked by device_options)
// --tokenizer, else the tokenizer embedded in `file` (opened from --model when null).
std::string open_tokenizer(const model::ModelFile* file, std::unique_ptr<model::Tokenizer>* tok);
// Recognises model files of other tools (safetensors, a Hugging Face folder, PyTorch) and says
// how to convert them with tools/export.py; "" for anything else.
std::string foreign_model_hint(const std::string& path);

// Prints "PROG: error: MESSAGE" on stderr and returns `code`. Under mpirun it does not return: the
// line names the rank, and MPI_Abort(code) ends every process of the job.
int fail(int code, const std::string& message);
// The stats line on stderr, with the sampling seed (so that a run can be repeated).
void print_stats(const runtime::GenerateStats& s, uint64_t seed);
// A seed from the clock (under mpirun: rank 0's, broadcast to every process).
uint64_t clock_seed();
// Under mpirun: the number of processes, and whether this one talks to the user (world rank 0).
// Without mpirun: 1 and true.
int process_count();
bool is_output_rank();
// Under mpirun: rank 0's *text replaces every other process's (stdin reaches rank 0 only); "" or the error.
std::string share_text(std::string* text);
// The --version text (version.cpp).
std::string version_text(const std::string& prog);
const char* prog_name();

// True once Ctrl-C was pressed. A second press before clear_interrupt() leaves at once (exit 130).
bool interrupted();
// Chat: the reply was stopped; the next Ctrl-C is a new request.
void clear_interrupt();

}  // namespace app
