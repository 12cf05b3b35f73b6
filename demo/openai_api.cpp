#include "openai_api.h"

#include <cmath>
#include <limits>

namespace app {

using nlohmann::json;

namespace {

bool bad(ApiError* err, const std::string& param, const std::string& message) {
  err->status = 400;
  err->param = param;
  err->message = message;
  return false;
}

// A number field within [lo, hi] (null or absent: left as it is).
bool number(const json& b, const char* key, double lo, double hi, double* out, ApiError* err) {
  if (!b.contains(key) || b[key].is_null()) return true;
  if (!b[key].is_number()) return bad(err, key, std::string("'") + key + "' must be a number");
  const double v = b[key].get<double>();
  if (!(v >= lo && v <= hi))
    return bad(err, key, std::string("'") + key + "' must be in [" + json(lo).dump() + ", " + json(hi).dump() + "]");
  *out = v;
  return true;
}

bool integer(const json& b, const char* key, int64_t lo, int64_t hi, int64_t* out, ApiError* err) {
  if (!b.contains(key) || b[key].is_null()) return true;
  if (!b[key].is_number_integer()) return bad(err, key, std::string("'") + key + "' must be an integer");
  const int64_t v = b[key].is_number_unsigned() && b[key].get<uint64_t>() > (uint64_t)INT64_MAX
                        ? INT64_MAX
                        : b[key].get<int64_t>();
  if (v < lo || v > hi)
    return bad(err, key, std::string("'") + key + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  *out = v;
  return true;
}

bool boolean(const json& b, const char* key, bool* out, ApiError* err) {
  if (!b.contains(key) || b[key].is_null()) return true;
  if (!b[key].is_boolean()) return bad(err, key, std::string("'") + key + "' must be true or false");
  *out = b[key].get<bool>();
  return true;
}

bool prompt_field(const json& b, ApiRequest* r, ApiError* err) {
  if (!b.contains("prompt")) return bad(err, "prompt", "'prompt' is required");
  const json& p = b["prompt"];
  if (p.is_string()) {
    r->prompt = p.get<std::string>();
    return true;
  }
  if (p.is_array() && p.size() == 1 && p[0].is_string()) {
    r->prompt = p[0].get<std::string>();
    return true;
  }
  if (p.is_array() && !p.empty()) {
    for (const json& t : p) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX)
        return bad(err, "prompt", "'prompt' must be a string, a list of one string or a list of token ids");
      r->prompt_ids.push_back((int32_t)t.get<int64_t>());
    }
    return true;
  }
  if (p.is_array() && p.size() > 1 && p[0].is_string()) return bad(err, "prompt", "one prompt per request (n is 1)");
  return bad(err, "prompt", "'prompt' must be a string, a list of one string or a list of token ids");
}

bool messages_field(const json& b, ApiRequest* r, ApiError* err) {
  if (!b.contains("messages") || !b["messages"].is_array() || b["messages"].empty())
    return bad(err, "messages", "'messages' must be a non-empty list");
  for (const json& m : b["messages"]) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      return bad(err, "messages", "each message needs a 'role' string");
    const std::string role = m["role"].get<std::string>();
    if (role != "system" && role != "user" && role != "assistant" && role != "developer")
      return bad(err, "messages", "unsupported role '" + role + "' (system, user, assistant)");
    std::string content;
    if (m.contains("content") && m["content"].is_string()) {
      content = m["content"].get<std::string>();
    } else if (m.contains("content") && m["content"].is_array()) {  // [{"type": "text", "text": ...}]
      for (const json& part : m["content"]) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
          return bad(err, "messages", "only text content parts are supported");
        content += part["text"].get<std::string>();
      }
    } else {
      return bad(err, "messages", "each message needs a 'content' string");
    }
    r->messages.push_back({role == "developer" ? "system" : role, content});
  }
  // system? then user (assistant user)*: the chat template's shape.
  size_t i = r->messages[0].role == "system" ? 1 : 0;
  if (i == r->messages.size()) return bad(err, "messages", "the conversation needs a user message");
  for (size_t k = i; k < r->messages.size(); ++k) {
    const char* want = (k - i) % 2 == 0 ? "user" : "assistant";
    if (r->messages[k].role != want)
      return bad(err, "messages", "messages must alternate user and assistant after an optional system message");
  }
  if (r->messages.back().role != "user") return bad(err, "messages", "the last message must be from the user");
  return true;
}

bool stop_field(const json& b, ApiRequest* r, ApiError* err) {
  if (!b.contains("stop") || b["stop"].is_null()) return true;
  const json& s = b["stop"];
  if (s.is_string()) {
    if (!s.get<std::string>().empty()) r->stop.push_back(s.get<std::string>());
    return true;
  }
  if (!s.is_array() || s.size() > 4) return bad(err, "stop", "'stop' must be a string or a list of up to 4 strings");
  for (const json& x : s) {
    if (!x.is_string()) return bad(err, "stop", "'stop' must be a string or a list of up to 4 strings");
    if (!x.get<std::string>().empty()) r->stop.push_back(x.get<std::string>());
  }
  return true;
}

// Fields that would change the answer in ways this server does not do.
bool refused_fields(const json& b, ApiError* err) {
  for (const char* k : {"frequency_penalty", "presence_penalty"}) {
    if (!b.contains(k) || b[k].is_null()) continue;
    if (!b[k].is_number()) return bad(err, k, std::string("'") + k + "' must be a number");
    if (b[k].get<double>() != 0) return bad(err, k, std::string("'") + k + "' is not supported (only 0)");
  }
  if (b.contains("echo") && !b["echo"].is_null() && b["echo"] != false) return bad(err, "echo", "'echo' is not supported");
  if (b.contains("best_of") && !b["best_of"].is_null() && b["best_of"] != 1) return bad(err, "best_of", "'best_of' must be 1");
  if (b.contains("suffix") && !b["suffix"].is_null()) return bad(err, "suffix", "'suffix' is not supported");
  if (b.contains("tools") && !b["tools"].is_null()) return bad(err, "tools", "'tools' is not supported");
  if (b.contains("logit_bias") && !b["logit_bias"].is_null() && !(b["logit_bias"].is_object() && b["logit_bias"].empty()))
    return bad(err, "logit_bias", "'logit_bias' is not supported");
  return true;
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace

bool parse_request(const std::string& body, bool chat, ApiRequest* r, ApiError* err) {
  const json b = json::parse(body, nullptr, false);
  if (b.is_discarded()) return bad(err, "", "the request body is not valid JSON");
  if (!b.is_object()) return bad(err, "", "the request body must be a JSON object");
  r->chat = chat;
  if (b.contains("model") && !b["model"].is_null() && !b["model"].is_string())
    return bad(err, "model", "'model' must be a string");
  if (b.contains("user") && !b["user"].is_null() && !b["user"].is_string()) return bad(err, "user", "'user' must be a string");
  if (chat ? !messages_field(b, r, err) : !prompt_field(b, r, err)) return false;
  if (!refused_fields(b, err)) return false;
  int64_t max_tokens = -1, top_k = 0, n = 1, seed = 0;
  if (!integer(b, "max_tokens", 0, INT32_MAX, &max_tokens, err)) return false;
  if (chat && !integer(b, "max_completion_tokens", 0, INT32_MAX, &max_tokens, err)) return false;
  r->max_tokens = (int32_t)max_tokens;
  double temperature = 1.0, top_p = 1.0, min_p = 0.0;
  if (!number(b, "temperature", 0, 2, &temperature, err) || !number(b, "top_p", 0, 1, &top_p, err) ||
      !number(b, "min_p", 0, 1, &min_p, err) || !integer(b, "top_k", 0, INT32_MAX, &top_k, err))
    return false;
  if (top_p <= 0) return bad(err, "top_p", "'top_p' must be in (0, 1]");
  if (!integer(b, "n", 1, INT64_MAX, &n, err)) return false;
  if (n != 1) return bad(err, "n", "'n' must be 1");
  if (b.contains("seed") && !b["seed"].is_null()) {
    if (!b["seed"].is_number_integer()) return bad(err, "seed", "'seed' must be an integer");
    seed = b["seed"].get<int64_t>();
    r->seed_given = true;
  }
  r->sampling.temperature = (float)temperature;
  r->sampling.top_p = (float)top_p;
  r->sampling.min_p = (float)min_p;
  r->sampling.top_k = (int32_t)top_k;
  r->sampling.seed = (uint64_t)seed;
  if (!stop_field(b, r, err) || !boolean(b, "stream", &r->stream, err) ||
      !boolean(b, "ignore_eos", &r->ignore_eos, err))
    return false;
  if (b.contains("stream_options") && !b["stream_options"].is_null()) {
    if (!b["stream_options"].is_object()) return bad(err, "stream_options", "'stream_options' must be an object");
    if (!boolean(b["stream_options"], "include_usage", &r->include_usage, err)) return false;
  }
  if (chat) {
    if (!boolean(b, "logprobs", &r->logprobs, err)) return false;
    int64_t top = 0;
    if (!integer(b, "top_logprobs", 0, 0, &top, err)) return false;
  } else {
    int64_t lp = 0;
    if (!integer(b, "logprobs", 0, 5, &lp, err)) return false;
    r->logprobs = b.contains("logprobs") && !b["logprobs"].is_null();
  }
  return true;
}

std::string error_body(const ApiError& e) {
  json j = {{"error",
             {{"message", e.message}, {"type", e.type}, {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", nullptr}}}};
  return dump(j);
}

namespace {
json logprobs_json(bool chat, const std::vector<TokenLogprob>* lps) {
  if (lps == nullptr) return nullptr;
  if (chat) {
    json content = json::array();
    for (const TokenLogprob& t : *lps) {
      json bytes = json::array();
      for (unsigned char c : t.text) bytes.push_back((int)c);
      content.push_back({{"token", t.text}, {"logprob", t.logprob}, {"bytes", bytes}, {"top_logprobs", json::array()}});
    }
    return {{"content", content}};
  }
  json tokens = json::array(), values = json::array(), offsets = json::array();
  size_t at = 0;
  for (const TokenLogprob& t : *lps) {
    tokens.push_back(t.text);
    values.push_back(t.logprob);
    offsets.push_back(at);
    at += t.text.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", values}, {"top_logprobs", nullptr}, {"text_offset", offsets}};
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

json finish_json(const std::string& f) { return f.empty() ? json(nullptr) : json(f); }
}  // namespace

std::string completion_body(const std::string& id, int64_t created, const std::string& model, bool chat,
                            const std::string& text, const std::string& finish_reason,
                            const std::vector<TokenLogprob>* logprobs, const Usage& usage) {
  json choice = {{"index", 0}, {"finish_reason", finish_json(finish_reason)}, {"logprobs", logprobs_json(chat, logprobs)}};
  if (chat) choice["message"] = {{"role", "assistant"}, {"content", text}};
  else choice["text"] = text;
  json j = {{"id", id}, {"object", chat ? "chat.completion" : "text_completion"}, {"created", created},
            {"model", model}, {"choices", json::array({choice})}, {"usage", usage_json(usage)}};
  return dump(j);
}

std::string chunk_body(const std::string& id, int64_t created, const std::string& model, bool chat,
                       const std::string& text, bool first, const std::string& finish_reason,
                       const std::vector<TokenLogprob>* logprobs) {
  json choice = {{"index", 0}, {"finish_reason", finish_json(finish_reason)}, {"logprobs", logprobs_json(chat, logprobs)}};
  if (chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || (first && finish_reason.empty())) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  json j = {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
            {"model", model}, {"choices", json::array({choice})}};
  return dump(j);
}

std::string usage_chunk_body(const std::string& id, int64_t created, const std::string& model, bool chat,
                             const Usage& usage) {
  json j = {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
            {"model", model}, {"choices", json::array()}, {"usage", usage_json(usage)}};
  return dump(j);
}

}  // namespace app
