// llama_server: an OpenAI-compatible HTTP server with continuous batching over the paged KV cache.
//
//   llama_server -m model.bin [--host 127.0.0.1] [--port 8080] [-np 8] [--kv_gib G] [--tp N] ...
//
//   HTTP threads (cpp-httplib)                      engine thread
//   POST /v1/completions ──parse, tokenize──▶ Scheduler::submit ──▶ step(): batch ──▶ TpRunner::step
//   POST /v1/chat/completions                      │ on_token / on_finish (detokenize, stop strings)
//        ◀── SSE "data: {...}" chunks ◀── Stream ◀─┘
//   GET /v1/models, /health, /metrics
//
// Each request's Stream is shared by its HTTP thread (which writes the response) and the engine thread
// (which appends text). A client that goes away makes the next write fail (a stream's next event, or
// the space a longer non-streamed reply writes every 100 ms); the request is cancelled and its pages
// released at the next step. Errors are OpenAI-style JSON bodies: 400 for
// bad requests, 503 with Retry-After when the queue is full. docs/serving.md explains the parts.
#include <gflags/gflags.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "app_common.h"
#include "metrics.h"
#include "model/chat.h"
#include "openai_api.h"
#include "runtime/scheduler.h"
#include "stop_strings.h"

DECLARE_string(model);
DEFINE_string(host, "127.0.0.1", "address to listen on");
DEFINE_int32(port, 8080, "port to listen on (0: any free port, printed at start-up)");
DEFINE_int32(parallel, 8, "sequences decoded together (the batch's rows)");
DEFINE_int32(batch_tokens, 0, "tokens per forward step, decode rows and prefill chunks (0: 256 on cpu, 2048 on cuda)");
DEFINE_double(kv_gib, 0, "KV cache size in GiB per rank (0: --parallel full contexts)");
DEFINE_int32(page_size, 16, "tokens per KV cache page");
DEFINE_int32(max_waiting, 64, "requests that may wait for a slot; more are refused with 503");
DEFINE_bool(prefix_cache, true, "share the KV pages of identical prompt prefixes between requests");
DEFINE_string(alias, "", "model name in /v1/models and responses (default: the model file's name)");

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

const app::ArgSpec& spec() {
  static const app::ArgSpec s = app::with_common_aliases(
      {{"-c", "max_seq_len"}, {"--ctx-size", "max_seq_len"}, {"-np", "parallel"}, {"-b", "batch_tokens"},
       {"--kv-gib", "kv_gib"}, {"--batch-size", "batch_tokens"}});
  return s;
}

// What the engine thread hands to the HTTP thread of one request.
struct Stream {
  std::mutex mu;
  std::condition_variable cv;
  std::string pending;                         // text not yet written
  std::vector<app::TokenLogprob> pending_lp;
  bool done = false;
  runtime::Finish finish;
  std::string finish_reason;
  // The engine thread's own.
  model::Utf8Stream utf8;
  std::unique_ptr<app::StopStrings> stops;
  int32_t prev = -1;
  Clock::time_point start, last;
  bool seen_token = false;
};

struct Server {
  app::Engine engine;
  std::unique_ptr<model::ChatTemplate> chat;
  std::unique_ptr<runtime::Scheduler> sched;
  app::Metrics metrics;
  std::string model_name;
  int32_t max_seq_len = 0;
  std::atomic<uint64_t> next_id{1};
};

void reply_error(httplib::Response& res, const app::ApiError& e) {
  res.status = e.status;
  res.set_content(app::error_body(e), "application/json");
}

app::ApiError server_error(int status, const std::string& message, const std::string& type) {
  app::ApiError e;
  e.status = status;
  e.message = message;
  e.type = type;
  return e;
}

// The prompt's token ids; "" or the error.
std::string prompt_ids(Server& sv, const app::ApiRequest& r, std::vector<int32_t>* ids) {
  const model::Tokenizer& tok = *sv.engine.tokenizer;
  if (!r.chat) {
    if (!r.prompt_ids.empty()) {
      for (int32_t t : r.prompt_ids)
        if (t >= tok.vocab_size()) return "token id " + std::to_string(t) + " outside the vocabulary";
      *ids = r.prompt_ids;
      return "";
    }
    const base::Status s = tok.encode(r.prompt, true, ids);
    return s.ok() ? "" : s.message();
  }
  if (!sv.chat) return "this model has no chat template";
  size_t i = 0;
  std::string system;
  if (r.messages[0].role == "system") system = r.messages[i++].content;
  for (bool first = true; i < r.messages.size(); i += 2, first = false) {
    std::vector<int32_t> turn;
    const base::Status s = sv.chat->user_turn(system, r.messages[i].content, first, &turn);
    if (!s.ok()) return s.message();
    ids->insert(ids->end(), turn.begin(), turn.end());
    if (i + 1 < r.messages.size()) {  // the assistant's earlier reply, ended as the template ends it
      std::vector<int32_t> reply;
      const base::Status e = tok.encode(r.messages[i + 1].content, false, &reply);
      if (!e.ok()) return e.message();
      ids->insert(ids->end(), reply.begin(), reply.end());
      ids->push_back(sv.chat->end_of_turn());
    }
  }
  return "";
}

// The engine-thread side of a request: detokenize, hold back stop strings, time the tokens.
void wire_callbacks(Server& sv, const std::shared_ptr<Stream>& st, bool logprobs, runtime::Request* r) {
  const model::Tokenizer* tok = sv.engine.tokenizer.get();
  app::Metrics* metrics = &sv.metrics;
  r->on_token = [st, tok, metrics, logprobs](int32_t token, float lp) {
    const auto now = Clock::now();
    if (!st->seen_token) metrics->first_token(std::chrono::duration<double>(now - st->start).count());
    else metrics->inter_token(std::chrono::duration<double>(now - st->last).count());
    st->seen_token = true;
    st->last = now;
    const std::string piece = tok->decode_token(st->prev, token);
    st->prev = token;
    const std::string text = st->stops->push(st->utf8.push(piece));
    std::lock_guard<std::mutex> lock(st->mu);
    st->pending += text;
    if (logprobs) st->pending_lp.push_back({piece, lp});
    st->cv.notify_all();
    return !st->stops->stopped();
  };
  r->on_finish = [st, metrics](const runtime::Finish& f) {
    std::string rest;
    if (!st->stops->stopped()) rest = st->stops->push(st->utf8.flush()) + st->stops->flush();
    if (st->seen_token) metrics->request_duration(std::chrono::duration<double>(Clock::now() - st->start).count());
    std::lock_guard<std::mutex> lock(st->mu);
    st->pending += rest;
    st->finish = f;
    st->finish_reason = st->stops->stopped() ? "stop" : f.reason;
    st->done = true;
    st->cv.notify_all();
  };
}

// Called when a response is over: if its request is still running, the client has gone, and the
// request is cancelled (its pages are freed at the next step).
void cancel_unless_done(Server& sv, Stream& st, uint64_t sid) {
  bool done;
  {
    std::lock_guard<std::mutex> lock(st.mu);
    done = st.done;
  }
  if (!done) sv.sched->cancel(sid);
}

// How often a non-streamed reply that is still being generated writes a space (below).
constexpr auto kHeartbeat = std::chrono::milliseconds(100);

// The body of a finished non-streamed request and its HTTP status. Call with st->mu held and st->done.
std::pair<int, std::string> whole_body(const Stream& st, const std::string& id, int64_t created,
                                       const std::string& model, bool chat, bool logprobs) {
  if (st.finish.reason == "error")
    return {500, app::error_body(server_error(500, st.finish.error.message(), "server_error"))};
  const app::Usage u{st.finish.prompt_tokens, st.finish.completion_tokens, st.finish.cached_tokens};
  return {200, app::completion_body(id, created, model, chat, st.pending, st.finish_reason,
                                    logprobs ? &st.pending_lp : nullptr, u)};
}

// A non-streamed reply. One that finishes within kHeartbeat is sent whole, with its status. A longer one
// is sent as it goes: status 200 and a chunked JSON body that starts with a space every kHeartbeat (JSON
// allows whitespace before a value), so that a client which has gone away makes a write fail and the
// request is cancelled, its pages freed, as for a stream. An engine error after that point arrives as
// an OpenAI error body under the 200 already sent.
void reply_whole(Server& sv, const std::shared_ptr<Stream>& st, uint64_t sid, const std::string& endpoint,
                 const std::string& id, int64_t created, const std::string& model, bool chat, bool logprobs,
                 httplib::Response& res) {
  {
    std::unique_lock<std::mutex> lock(st->mu);
    if (st->cv.wait_for(lock, kHeartbeat, [&] { return st->done; })) {
      auto [status, body] = whole_body(*st, id, created, model, chat, logprobs);
      sv.metrics.request_done(endpoint, status);
      res.status = status;
      res.set_content(body, "application/json");
      return;
    }
  }
  sv.metrics.request_done(endpoint, 200);
  Server* svp = &sv;
  res.set_chunked_content_provider(
      "application/json",
      [st, id, created, model, chat, logprobs](size_t, httplib::DataSink& sink) {
        std::string body;
        {
          std::unique_lock<std::mutex> lock(st->mu);
          if (!st->cv.wait_for(lock, kHeartbeat, [&] { return st->done; })) return sink.write(" ", 1);
          body = whole_body(*st, id, created, model, chat, logprobs).second;
        }
        sink.write(body.data(), body.size());
        sink.done();
        return true;
      },
      [st, svp, sid](bool) { cancel_unless_done(*svp, *st, sid); });
}

void handle_generate(Server& sv, const httplib::Request& req, httplib::Response& res, bool chat) {
  const std::string endpoint = chat ? "chat" : "completions";
  app::ApiRequest ar;
  app::ApiError err;
  if (!app::parse_request(req.body, chat, &ar, &err)) {
    sv.metrics.request_done(endpoint, err.status);
    return reply_error(res, err);
  }
  std::vector<int32_t> ids;
  if (auto e = prompt_ids(sv, ar, &ids); !e.empty()) {
    sv.metrics.request_done(endpoint, 400);
    return reply_error(res, server_error(400, e, "invalid_request_error"));
  }
  if ((int32_t)ids.size() >= sv.max_seq_len) {
    sv.metrics.request_done(endpoint, 400);
    return reply_error(res, server_error(400, "the prompt is " + std::to_string(ids.size()) + " tokens; the context is " +
                                                  std::to_string(sv.max_seq_len), "invalid_request_error"));
  }
  runtime::Request r;
  r.prompt = ids;
  r.max_tokens = ar.max_tokens >= 0 ? ar.max_tokens : chat ? sv.max_seq_len - (int32_t)ids.size() : 16;
  r.sampling = ar.sampling;
  if (!ar.seed_given) r.sampling.seed = app::clock_seed();
  r.logprobs = ar.logprobs;
  if (!ar.ignore_eos) r.stop_ids = sv.engine.runner->config().eos_ids;
  if (chat && sv.chat && !ar.ignore_eos) r.stop_ids.push_back(sv.chat->end_of_turn());
  auto st = std::make_shared<Stream>();
  st->stops = std::make_unique<app::StopStrings>(ar.stop);
  st->start = Clock::now();
  st->prev = ids.back();
  wire_callbacks(sv, st, ar.logprobs, &r);
  uint64_t sid = 0;
  const base::Status s = sv.sched->submit(std::move(r), &sid);
  if (!s.ok()) {
    const bool busy = s.code() == base::StatusCode::kUnavailable;
    sv.metrics.request_done(endpoint, busy ? 503 : 400);
    if (busy) res.set_header("Retry-After", "1");
    return reply_error(res, server_error(busy ? 503 : 400, s.message(), busy ? "server_error" : "invalid_request_error"));
  }
  const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(sv.next_id++);
  const int64_t created = (int64_t)std::time(nullptr);
  const std::string model = sv.model_name;
  if (!ar.stream) return reply_whole(sv, st, sid, endpoint, id, created, model, chat, ar.logprobs, res);
  sv.metrics.request_done(endpoint, 200);
  Server* svp = &sv;
  const bool include_usage = ar.include_usage, lps = ar.logprobs;
  auto first = std::make_shared<bool>(true);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [st, first, id, created, model, chat, include_usage, lps](size_t, httplib::DataSink& sink) {
        auto event = [&](const std::string& data) {
          const std::string e = "data: " + data + "\n\n";
          return sink.write(e.data(), e.size());
        };
        std::string text, reason;
        std::vector<app::TokenLogprob> lp;
        bool done = false;
        runtime::Finish fin;
        {
          std::unique_lock<std::mutex> lock(st->mu);
          st->cv.wait_for(lock, std::chrono::seconds(1), [&] { return st->done || !st->pending.empty() || *first; });
          text.swap(st->pending);
          lp.swap(st->pending_lp);
          done = st->done;
          reason = st->finish_reason;
          fin = st->finish;
        }
        if (done && fin.reason == "error") {
          app::ApiError e = server_error(500, fin.error.message(), "server_error");
          event(app::error_body(e));
          event("[DONE]");
          sink.done();
          return true;
        }
        if (!text.empty() || *first || !lp.empty()) {
          if (!event(app::chunk_body(id, created, model, chat, text, *first, "", lps ? &lp : nullptr))) return false;
          *first = false;
        }
        if (!done) return true;
        if (!event(app::chunk_body(id, created, model, chat, "", false, reason, nullptr))) return false;
        if (include_usage) {
          const app::Usage u{fin.prompt_tokens, fin.completion_tokens, fin.cached_tokens};
          if (!event(app::usage_chunk_body(id, created, model, chat, u))) return false;
        }
        event("[DONE]");
        sink.done();
        return true;
      },
      [st, svp, sid](bool) { cancel_unless_done(*svp, *st, sid); });
}

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

}  // namespace

int main(int argc, char** argv) {
  app::init(argc, argv, "llama_server -m MODEL.bin [--host H] [--port P] [-np N] [--kv_gib G] [--tp N]", spec());
  if (FLAGS_parallel < 1) return app::fail(2, "--parallel must be at least 1");
  if (FLAGS_page_size < 1 || FLAGS_page_size > 1024) return app::fail(2, "--page_size must be in [1, 1024]");
  if (FLAGS_max_waiting < 0) return app::fail(2, "--max_waiting must not be negative");
  if (FLAGS_kv_gib < 0) return app::fail(2, "--kv_gib must not be negative");
  if (FLAGS_port < 0 || FLAGS_port > 65535) return app::fail(2, "--port must be in [0, 65535]");
  if (FLAGS_batch_tokens < 0) return app::fail(2, "--batch_tokens must not be negative");
  Server sv;
  const int rc = app::open_engine(&sv.engine, [](const model::ModelConfig& c, model::ModelOptions* o) -> std::string {
    const int32_t ctx = o->max_seq_len > 0 ? o->max_seq_len : c.max_seq_len;
    o->max_batch_seqs = FLAGS_parallel;
    o->max_batch_tokens = std::max(FLAGS_parallel, FLAGS_batch_tokens > 0 ? FLAGS_batch_tokens
                                                   : o->device == base::DeviceType::kCPU ? 256 : 2048);
    o->page_size = FLAGS_page_size;
    const int tp = std::max(1, app::tp_flag());
    const uint64_t per_token = (uint64_t)c.n_layers * 2 * (c.n_kv_heads / tp) * c.head_dim * base::dtype_size(o->act_dtype);
    const uint64_t tokens = FLAGS_kv_gib > 0 ? (uint64_t)(FLAGS_kv_gib * (1ull << 30)) / std::max<uint64_t>(1, per_token)
                                             : (uint64_t)FLAGS_parallel * ctx;
    if (tokens < (uint64_t)FLAGS_page_size) return "--kv_gib " + std::to_string(FLAGS_kv_gib) + " holds less than one page";
    o->kv_capacity = (int32_t)std::min<uint64_t>(tokens, INT32_MAX / 2);
    return "";
  });
  if (rc != 0) return rc;
  runtime::TpRunner& runner = *sv.engine.runner;
  sv.max_seq_len = runner.max_seq_len();
  sv.model_name = FLAGS_alias.empty() ? FLAGS_model.substr(FLAGS_model.find_last_of('/') + 1) : FLAGS_alias;
  if (!model::ChatTemplate::create(runner.config().family, *sv.engine.tokenizer, &sv.chat).ok()) sv.chat.reset();

  runtime::SchedulerOptions so;
  so.max_seqs = FLAGS_parallel;
  so.token_budget = runner.model(0).max_batch_tokens();
  so.max_waiting = FLAGS_max_waiting;
  so.max_seq_len = sv.max_seq_len;
  so.vocab_size = runner.config().vocab_size;
  so.prefix_cache = FLAGS_prefix_cache;
  sv.sched = std::make_unique<runtime::Scheduler>(
      so, &runner.pages(),
      [&runner](const model::BatchSeq* b, int32_t n, const model::StepOutput& out) { return runner.step(b, n, out); });
  std::thread engine([&] { sv.sched->serve(); });

  httplib::Server http;
  const int threads = FLAGS_parallel + FLAGS_max_waiting + 8;  // a waiting request holds its thread
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(16 << 20);
  http.set_keep_alive_max_count(1000);
  http.Post("/v1/completions", [&](const httplib::Request& q, httplib::Response& r) { handle_generate(sv, q, r, false); });
  http.Post("/v1/chat/completions", [&](const httplib::Request& q, httplib::Response& r) { handle_generate(sv, q, r, true); });
  http.Get("/v1/models", [&](const httplib::Request&, httplib::Response& r) {
    const json j = {{"object", "list"},
                    {"data", json::array({{{"id", sv.model_name}, {"object", "model"}, {"created", 0},
                                           {"owned_by", "llama_infer"}, {"max_model_len", sv.max_seq_len}}})}};
    r.set_content(j.dump(), "application/json");
  });
  http.Get("/health", [&](const httplib::Request&, httplib::Response& r) { r.set_content("{\"status\":\"ok\"}", "application/json"); });
  http.Get("/metrics", [&](const httplib::Request&, httplib::Response& r) {
    r.set_content(sv.metrics.text(sv.sched->stats()), "text/plain; version=0.0.4");
  });
  http.set_error_handler([](const httplib::Request& q, httplib::Response& r) {
    if (!r.body.empty()) return;
    reply_error(r, server_error(r.status, r.status == 404 ? "no such endpoint: " + q.method + " " + q.path
                                                          : "request refused (HTTP " + std::to_string(r.status) + ")",
                                "invalid_request_error"));
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& r, std::exception_ptr) {
    reply_error(r, server_error(500, "internal error", "server_error"));
  });

  const int port = FLAGS_port == 0 ? http.bind_to_any_port(FLAGS_host) : (http.bind_to_port(FLAGS_host, FLAGS_port) ? FLAGS_port : -1);
  if (port < 0) {
    sv.sched->shutdown();
    engine.join();
    return app::fail(1, "cannot listen on " + FLAGS_host + ":" + std::to_string(FLAGS_port));
  }
  const runtime::SchedulerStats st0 = sv.sched->stats();
  std::fprintf(stderr, "llama_server: listening on http://%s:%d (model %s, context %d, %d parallel, %d KV pages of %d)\n",
               FLAGS_host.c_str(), port, sv.model_name.c_str(), sv.max_seq_len, FLAGS_parallel,
               runner.pages().n_pages(), FLAGS_page_size);
  (void)st0;
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::thread watcher([&] {
    while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    http.stop();
  });
  http.listen_after_bind();
  g_stop = true;
  watcher.join();
  sv.sched->shutdown();
  engine.join();
  std::fprintf(stderr, "llama_server: stopped\n");
  return 0;
}
