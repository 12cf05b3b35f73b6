// llama_infer: generate text with a Llama-family model.
//
//   llama_infer --model x.bin --prompt "Once upon a time" --n 128
//
// The prompt is echoed, then tokens are printed as they are produced; a stats line goes to stderr.
// Every failure is one line on stderr and a non-zero exit (2 for bad usage, 1 for anything else).
// Ctrl-C stops generation after the current token: the text so far and the stats line (stop:
// interrupted) are printed, and the exit status is 130 (128 + SIGINT), so a script can tell the
// output is partial. A second Ctrl-C leaves at once.
#include <gflags/gflags.h>
#include <glog/logging.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "app_common.h"
#include "runtime/generator.h"
#include "model/llama3.h"
#include "model/model_file.h"
#include "model/tokenizer.h"
#include "sampler/sampler.h"
#include "chat.h"
#include "tokenize_cmd.h"

DEFINE_string(prompt, "", "text to continue (empty: start from BOS)");
DEFINE_int32(n, 256, "number of new tokens to generate");
DEFINE_double(temperature, 0.8, "sampling temperature; 0 = greedy");
DEFINE_double(top_p, 0.9, "nucleus sampling: keep the smallest set of tokens with this much probability, in (0, 1]");
DEFINE_int32(top_k, 0, "keep only the k most likely tokens (0 = all)");
DEFINE_uint64(seed, 0, "random seed for sampling (0 = from the clock)");
DEFINE_bool(chat, false, "chat: read user turns from stdin (or answer --prompt once), keeping the conversation in the KV cache");
DEFINE_string(system, "", "system prompt for --chat");
DEFINE_bool(tokenize, false, "print the token ids of --prompt (tokenizer of --model, or --tokenizer alone) and exit");
DEFINE_bool(detokenize, false, "print the text of the space-separated token ids in --prompt and exit");

namespace {

// --tokenize / --detokenize: the tokenizer of --tokenizer, else the one embedded in --model.
int tokenize_mode() {
  std::unique_ptr<model::Tokenizer> tok;
  if (auto err = app::open_tokenizer(nullptr, &tok); !err.empty()) return app::fail(2, err);
  return app::run_tokenize_command(*tok, FLAGS_tokenize, FLAGS_detokenize, FLAGS_prompt);
}

int run() {
  if (FLAGS_tokenize && FLAGS_detokenize) return app::fail(2, "--tokenize and --detokenize exclude each other");
  if (FLAGS_tokenize || FLAGS_detokenize) return tokenize_mode();
  if (FLAGS_n <= 0) return app::fail(2, "--n must be at least 1");
  sampler::SamplerConfig sc;
  sc.temperature = (float)FLAGS_temperature;
  sc.top_p = (float)FLAGS_top_p;
  sc.top_k = FLAGS_top_k;
  sc.seed = FLAGS_seed != 0 ? FLAGS_seed : app::clock_seed();
  {
    sampler::Sampler check;  // the values are checked before anything is loaded
    if (auto s = sampler::Sampler::create(sc, 1, &check); !s.ok()) return app::fail(2, s.message());
  }
  app::Engine engine;
  if (int rc = app::open_engine(&engine); rc != 0) return rc;
  if (app::interrupted()) return app::fail(130, "interrupted while loading the model");
  if (FLAGS_chat) return app::run_chat(engine, sc, FLAGS_system, FLAGS_prompt, FLAGS_n);

  std::vector<int32_t> prompt;
  if (auto s = engine.tokenizer->encode(FLAGS_prompt, /*add_bos=*/true, &prompt); !s.ok())
    return app::fail(2, s.message());

  model::Utf8Stream out;
  std::fputs(FLAGS_prompt.c_str(), stdout);
  std::fflush(stdout);
  int32_t prev = prompt.back();
  runtime::GenerateOptions go;
  go.max_new_tokens = FLAGS_n;
  runtime::GenerateStats stats;
  auto on_token = [&](int32_t tok) {
    std::fputs(out.push(engine.tokenizer->decode_token(prev, tok)).c_str(), stdout);
    std::fflush(stdout);
    prev = tok;
    return !app::interrupted();
  };
  const base::Status s = engine.runner->generate(sc, prompt, 0, go, on_token, &stats);
  std::fputs(out.flush().c_str(), stdout);
  std::fputs("\n", stdout);
  std::fflush(stdout);
  if (!s.ok()) return app::fail(1, s.message());
  if (app::interrupted()) stats.stop_reason = "interrupted";
  app::print_stats(stats);
  return app::interrupted() ? 130 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  app::init(&argc, &argv,
            "generate text with a Llama-family model\n"
            "  llama_infer --model MODEL.bin [--prompt TEXT] [--n N] [--temperature T] [--device cpu|cuda] [--tp N]");
  return run();
}
