// llama_infer --chat: a conversation with the model, kept in the KV cache across turns, that behaves
// like `llama-cli -cnv` or `ollama run`:
//   - on a terminal: a "> " prompt with line editing and history (libedit); from a pipe: one turn per
//     line, no prompt shown;
//   - Ctrl-C during a reply stops it and returns to the prompt, the conversation kept; Ctrl-C or
//     Ctrl-D (end of input) at the prompt ends the chat cleanly (exit 0);
//   - /bye ends it, /clear forgets the conversation (and reuses its cache from position 0), /help
//     lists the commands;
//   - every reply ends with a newline before the next prompt.
#pragma once

#include <string>
#include <vector>

#include "app_common.h"
#include "sampler/sampler.h"

namespace app {

struct ChatOptions {
  std::string system;              // system prompt ("" for none)
  std::string prompt;              // a single turn to answer (then the chat ends); "" to read turns
  int max_reply_tokens = 256;      // per reply; -1: until the end of turn or the context is full
  std::vector<std::string> stops;  // -r: a reply also ends at any of these (not printed)
};

// Earlier turns stay in the cache and are never recomputed. Ends at end of input, Ctrl-C at the
// prompt, /bye, or when the context is full (with a message). Returns the exit code.
int run_chat(Engine& e, const sampler::SamplerConfig& sc, const ChatOptions& opts);

}  // namespace app
