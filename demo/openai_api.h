// The OpenAI HTTP API of llama_server: request bodies checked and read into one request type, and the
// response bodies (whole and streamed chunks) written. No sockets here (server.cpp has them), so every
// rule can be tested from a string.
//
// Accepted (others of the API are ignored when absent or null, and refused where they would change the
// answer: n != 1, echo, best_of, penalties other than 0, suffix, tools):
//   /v1/completions       model, prompt (a string, one string in a list, or a list of token ids)
//   /v1/chat/completions  model, messages [{role: system|user|assistant, content: string}], ending with user
//   both                  max_tokens (>= 0; chat also max_completion_tokens), temperature [0, 2], top_p (0, 1],
//                         top_k >= 0, min_p [0, 1], seed, stop (a string or up to 4), n (1), stream,
//                         stream_options.include_usage, logprobs (completions: 0-5, the chosen token's
//                         log-probability; chat: true / false), user, ignore_eos (as llama.cpp and vLLM:
//                         generate to max_tokens, for benchmarks)
// A field of the wrong type, a value out of range, malformed JSON: an ApiError with HTTP 400.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sampler/sampler.h"

namespace app {

struct ApiError {
  int status = 400;
  std::string message;
  std::string param;                          // the offending field, "" for none
  std::string type = "invalid_request_error";
};

struct ChatMessage {
  std::string role, content;
};

struct ApiRequest {
  bool chat = false;
  std::string prompt;                  // completions: the text
  std::vector<int32_t> prompt_ids;     // completions: token ids given instead of text
  std::vector<ChatMessage> messages;   // chat
  int32_t max_tokens = -1;             // -1: not given (completions: 16; chat: up to the context)
  sampler::SamplerConfig sampling;     // temperature 1 and top_p 1 unless given, as the API's defaults
  bool seed_given = false;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;
  bool logprobs = false;
  bool ignore_eos = false;
};

// Reads `body` (the raw request text) for the completions (chat = false) or chat endpoint; returns
// false and fills *err for anything refused.
bool parse_request(const std::string& body, bool chat, ApiRequest* out, ApiError* err);

// {"error": {"message", "type", "param", "code"}}
std::string error_body(const ApiError& e);

// One token's log-probability for the response's logprobs.
struct TokenLogprob {
  std::string text;
  float logprob = 0.f;
};

struct Usage {
  int32_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
};

// The whole response (stream: false).
std::string completion_body(const std::string& id, int64_t created, const std::string& model, bool chat,
                            const std::string& text, const std::string& finish_reason,
                            const std::vector<TokenLogprob>* logprobs, const Usage& usage);
// One server-sent event's JSON: a piece of text (finish_reason "" while it goes on); for chat the first
// chunk carries the role. usage_only: the last chunk of stream_options.include_usage (no choices).
std::string chunk_body(const std::string& id, int64_t created, const std::string& model, bool chat,
                       const std::string& text, bool first, const std::string& finish_reason,
                       const std::vector<TokenLogprob>* logprobs);
std::string usage_chunk_body(const std::string& id, int64_t created, const std::string& model, bool chat,
                             const Usage& usage);

}  // namespace app
