// llama_infer: generate text with a Llama-family model.
//
//   llama_infer -m x.bin -p "Once upon a time" -n 128        (llama.cpp's spellings)
//   llama_infer --model x.bin --prompt "Once upon a time" --n 128
//   echo "Once upon a time" | llama_infer -m x.bin         (a prompt piped on stdin is used)
//
// The prompt is echoed, then tokens are printed as they are produced; a stats line (with the seed)
// goes to stderr. Every failure is one line on stderr and a non-zero exit (2 for bad usage, 1 for
// anything else). Ctrl-C stops generation after the current token: the text so far and the stats
// line (stop: interrupted) are printed, and the exit status is 130 (128 + SIGINT), so a script can
// tell the output is partial. A second Ctrl-C leaves at once.
//
// Under mpirun (one process per GPU or CPU rank: --tp T --pp P with -np T x P) rank 0 reads the prompt
// and every process gets it from rank 0; only rank 0 prints; any rank's error is one line and ends
// the job (app::fail).
#include <gflags/gflags.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "app_common.h"
#include "chat.h"
#include "runtime/generator.h"
#include "model/tokenizer.h"
#include "sampler/sampler.h"
#include "stop_strings.h"
#include "tokenize_cmd.h"

DEFINE_string(prompt, "", "text to continue (empty: start from BOS; without -p and -f, a prompt piped on stdin is used)");
DEFINE_string(file, "", "read the prompt from this file ('-': from stdin)");
DEFINE_int32(n, 256, "number of new tokens to generate (-1: until end of text or the context is full)");
DEFINE_double(temperature, 0.8, "sampling temperature; 0 = greedy");
DEFINE_double(top_p, 0.9, "nucleus sampling: keep the smallest set of tokens with this much probability, in (0, 1]");
DEFINE_int32(top_k, 0, "keep only the k most likely tokens (0 = all)");
DEFINE_double(min_p, 0.0, "drop tokens less likely than min_p times the most likely one, in [0, 1] (0 = off)");
DEFINE_double(repeat_penalty, 1.0, "divide the logits of recently seen tokens by this (1 = off)");
DEFINE_int32(repeat_last_n, 64, "tokens the repeat penalty looks back over (0 = off, -1 = the whole context)");
DEFINE_uint64(seed, 0, "random seed for sampling (0 = from the clock; the seed used is printed with the stats)");
DEFINE_bool(chat, false, "chat: read user turns from stdin (or answer --prompt once), keeping the conversation in the KV cache");
DEFINE_string(system, "", "system prompt for --chat");
DEFINE_string(reverse_prompt, "", "stop when the output contains this text, which is not printed");
DEFINE_bool(tokenize, false, "print the token ids of --prompt (tokenizer of --model, or --tokenizer alone) and exit");
DEFINE_bool(detokenize, false, "print the text of the space-separated token ids in --prompt and exit");

namespace {

const app::ArgSpec& spec() {
  static const app::ArgSpec s = app::with_common_aliases(
      {{"-p", "prompt"},
       {"-f", "file"},
       {"-n", "n"},
       {"--n-predict", "n"},
       {"-c", "max_seq_len"},
       {"--ctx-size", "max_seq_len"},
       {"-s", "seed"},
       {"--temp", "temperature"},
       {"--top-k", "top_k"},
       {"--top-p", "top_p"},
       {"--min-p", "min_p"},
       {"--repeat-penalty", "repeat_penalty"},
       {"--repeat-last-n", "repeat_last_n"},
       {"-r", "reverse_prompt"},
       {"--reverse-prompt", "reverse_prompt"},
       {"-cnv", "chat"},
       {"--conversation", "chat"},
       {"-sys", "system"},
       {"--system-prompt", "system"}},
      {"reverse_prompt"});
  return s;
}

std::string read_all(std::istream& in) { return std::string(std::istreambuf_iterator<char>(in), {}); }

// The prompt: -p, else -f FILE (or stdin for '-'), else stdin when it is not a terminal (piped), else
// "" (start from BOS). Text from a file or a pipe loses one trailing newline (echo adds one).
std::string read_prompt(std::string* prompt) {
  std::string text;
  if (app::args().was_given("prompt")) {
    *prompt = FLAGS_prompt;
    return "";
  }
  // Under mpirun only rank 0 has the terminal or the pipe (and perhaps the file): its text is everyone's.
  if (!app::is_output_rank()) return app::share_text(prompt);
  if (FLAGS_file == "-" || (!app::args().was_given("file") && !isatty(0))) {
    text = read_all(std::cin);
  } else if (app::args().was_given("file")) {
    std::ifstream f(FLAGS_file, std::ios::binary);
    if (!f) return "-f " + FLAGS_file + ": cannot open the prompt file";
    text = read_all(f);
  }
  if (!text.empty() && text.back() == '\n') text.pop_back();
  if (!text.empty() && text.back() == '\r') text.pop_back();
  *prompt = text;
  return app::share_text(prompt);
}

// Flags that mean nothing in the mode given are refused, not ignored.
std::string check_mode() {
  if (FLAGS_tokenize && FLAGS_detokenize) return "--tokenize and --detokenize exclude each other";
  if (app::process_count() > 1) {
    if (FLAGS_chat) return "--chat does not run under mpirun yet (the turns come from stdin, which reaches rank 0 only)";
    if (FLAGS_tokenize || FLAGS_detokenize) return "--tokenize and --detokenize run no model: start them without mpirun";
  }
  if (app::args().was_given("prompt") && app::args().was_given("file"))
    return "give the prompt once: -p/--prompt TEXT or -f/--file FILE";
  if (FLAGS_tokenize || FLAGS_detokenize) {
    const char* mode = FLAGS_tokenize ? "with --tokenize" : "with --detokenize";
    return app::refuse_if_given({"n", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n",
                                 "seed", "chat", "system", "reverse_prompt", "device", "tp", "pp", "comm_timeout", "allreduce",
                                 "max_seq_len", "cuda_graph", "dtype", "threads"},
                                std::string("does nothing ") + mode + " (no model runs)");
  }
  if (!FLAGS_chat) {
    if (auto e = app::refuse_if_given({"system"}, "is for --chat (a plain prompt has no system turn)"); !e.empty())
      return e;
  } else if (auto e = app::refuse_if_given({"file"}, "does nothing with --chat (turns come from stdin; -p gives a "
                                                     "single turn)"); !e.empty()) {
    return e;
  }
  if (!(FLAGS_repeat_penalty != 1.0) && app::args().was_given("repeat_last_n"))
    return "--repeat_last_n does nothing without --repeat_penalty";
  if (FLAGS_n == 0 || FLAGS_n < -1) return "--n must be at least 1, or -1 (until end of text or a full context)";
  return "";
}

int tokenize_mode(const std::string& text) {
  std::unique_ptr<model::Tokenizer> tok;
  if (auto err = app::open_tokenizer(nullptr, &tok); !err.empty()) return app::fail(2, err);
  return app::run_tokenize_command(*tok, FLAGS_tokenize, FLAGS_detokenize, text);
}

// The error for a prompt the context cannot hold: what would fit, and what to change.
std::string too_long(size_t tokens, int32_t ctx, int32_t model_ctx) {
  std::string s = "the prompt is " + std::to_string(tokens) + " tokens but the context holds " + std::to_string(ctx) +
                  ": shorten it by at least " + std::to_string(tokens - ctx) + " tokens";
  if (ctx < model_ctx) return s + ", or raise -c/--ctx-size (up to " + std::to_string(model_ctx) + ", the model's)";
  return s + " (" + std::to_string(ctx) + " is the model's whole context)";
}

int generate(app::Engine& engine, const sampler::SamplerConfig& sc, const std::string& text) {
  std::vector<int32_t> prompt;
  if (auto s = engine.tokenizer->encode(text, /*add_bos=*/true, &prompt); !s.ok()) return app::fail(2, s.message());
  const int32_t ctx = engine.runner->max_seq_len();
  if ((int64_t)prompt.size() > ctx) return app::fail(1, too_long(prompt.size(), ctx, engine.runner->config().max_seq_len));

  model::Utf8Stream utf8;
  app::StopStrings stops(app::args().lists.count("reverse_prompt") ? app::args().lists.at("reverse_prompt")
                                                                    : std::vector<std::string>{});
  const bool talks = engine.runner->is_output_rank();
  if (talks) std::fputs(text.c_str(), stdout);
  std::fflush(stdout);
  int32_t prev = prompt.back();
  runtime::GenerateOptions go;
  go.max_new_tokens = FLAGS_n < 0 ? ctx : FLAGS_n;  // -1: the context ends it ("stop: context")
  runtime::GenerateStats stats;
  auto on_token = [&](int32_t tok) {
    std::fputs(stops.push(utf8.push(engine.tokenizer->decode_token(prev, tok))).c_str(), stdout);
    std::fflush(stdout);
    prev = tok;
    return !app::interrupted() && !stops.stopped();
  };
  const base::Status s = engine.runner->generate(sc, prompt, 0, go, on_token, &stats);
  if (talks) {
    if (!stops.stopped()) std::fputs((stops.push(utf8.flush()) + stops.flush()).c_str(), stdout);
    std::fputs("\n", stdout);
  }
  std::fflush(stdout);
  if (!s.ok()) return app::fail(1, s.message());
  if (!talks) return 0;
  if (app::interrupted()) stats.stop_reason = "interrupted";
  else if (stops.stopped()) stats.stop_reason = "stop string";
  app::print_stats(stats, sc.seed);
  return app::interrupted() ? 130 : 0;
}

int run() {
  if (auto err = check_mode(); !err.empty()) return app::fail(2, err);
  std::string text;
  if (!FLAGS_chat || app::args().was_given("prompt")) {
    if (auto err = read_prompt(&text); !err.empty()) return app::fail(1, err);
  }
  if (FLAGS_tokenize || FLAGS_detokenize) return tokenize_mode(text);
  sampler::SamplerConfig sc;
  sc.temperature = (float)FLAGS_temperature;
  sc.top_p = (float)FLAGS_top_p;
  sc.top_k = FLAGS_top_k;
  sc.min_p = (float)FLAGS_min_p;
  sc.repeat_penalty = (float)FLAGS_repeat_penalty;
  sc.repeat_last_n = FLAGS_repeat_last_n;
  sc.seed = FLAGS_seed != 0 ? FLAGS_seed : app::clock_seed();
  {
    sampler::Sampler check;  // the values are checked before anything is loaded
    if (auto s = sampler::Sampler::create(sc, 1, &check); !s.ok()) return app::fail(2, s.message());
  }
  app::Engine engine;
  if (int rc = app::open_engine(&engine); rc != 0) return rc;
  if (app::interrupted()) return app::fail(130, "interrupted while loading the model");
  if (FLAGS_chat) {
    app::ChatOptions co;
    co.system = FLAGS_system;
    co.prompt = text;
    co.max_reply_tokens = FLAGS_n;
    if (app::args().lists.count("reverse_prompt")) co.stops = app::args().lists.at("reverse_prompt");
    return app::run_chat(engine, sc, co);
  }
  return generate(engine, sc, text);
}

}  // namespace

int main(int argc, char** argv) {
  app::init(argc, argv,
            "generate text with a Llama-family model\n"
            "  llama_infer -m MODEL.bin [-p TEXT | -f FILE] [-n N] [--temp T] [-c CTX] [-t THREADS] [--device cpu|cuda]\n"
            "  llama_infer -m MODEL.bin --chat [--system TEXT]",
            spec());
  return run();
}
