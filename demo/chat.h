// llama_infer --chat: a conversation with the model, kept in the KV cache across turns.
#pragma once

#include <string>

#include "app_common.h"
#include "sampler/sampler.h"

namespace app {

// Reads user lines from stdin (or answers the single `prompt` when it is not empty), printing each
// reply as it is generated. Earlier turns stay in the cache and are never recomputed. Ends at EOF,
// Ctrl-C, or when the context is full (with a message). Returns the exit code.
int run_chat(Engine& e, const sampler::SamplerConfig& sc, const std::string& system, const std::string& prompt,
             int max_reply_tokens);

}  // namespace app
