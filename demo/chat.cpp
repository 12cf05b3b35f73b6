#include "chat.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "line_reader.h"
#include "model/chat.h"
#include "stop_strings.h"

namespace app {

namespace {

const char* kHelp =
    "commands:\n"
    "  /bye     end the chat (so do Ctrl-D and Ctrl-C at an empty prompt)\n"
    "  /clear   forget the conversation (the system prompt stays)\n"
    "  /help    this list\n"
    "Ctrl-C during a reply stops it; the conversation is kept.\n";

// Where the conversation stands in the KV cache.
struct Conversation {
  int32_t pos = 0;     // cache positions filled so far
  int32_t carry = -1;  // token that ended the last reply, not yet in the cache
  bool first = true;   // the next turn is the first (it carries the system prompt)
};

void add(runtime::GenerateStats* total, const runtime::GenerateStats& st) {
  total->prompt_tokens += st.prompt_tokens;
  total->generated_tokens += st.generated_tokens;
  total->prefill_ms += st.prefill_ms;
  total->decode_ms += st.decode_ms;
  total->stop_reason = st.stop_reason;
}

}  // namespace

int run_chat(Engine& e, const sampler::SamplerConfig& sc, const ChatOptions& opts) {
  std::unique_ptr<model::ChatTemplate> tmpl;
  if (auto s = model::ChatTemplate::create_for(e.file->chat_template(), e.runner->config().family, *e.tokenizer, &tmpl);
      !s.ok())
    return fail(2, s.message());
  const bool single = !opts.prompt.empty();
  const bool terminal = !single && isatty(0);
  LineReader reader(terminal);
  const int32_t max_pos = e.runner->max_seq_len();
  Conversation conv;
  runtime::GenerateStats total;
  bool answered = false;

  std::string line;
  while (true) {
    if (single) {
      if (answered) break;
      line = opts.prompt;
    } else {
      const LineReader::Result r = reader.read("> ", &line);
      if (r == LineReader::Result::kInterrupt) {
        clear_interrupt();
        break;  // Ctrl-C at the prompt ends the chat cleanly
      }
      if (r == LineReader::Result::kEof) {
        if (terminal) std::fputs("\n", stdout);  // leave the "> " line
        break;
      }
      if (line.empty()) continue;
      reader.remember(line);
      if (line[0] == '/') {
        if (line == "/bye") break;
        if (line == "/clear") {
          conv = Conversation{};
          std::fputs("(conversation cleared)\n", stdout);
        } else if (line == "/help" || line == "/?") {
          std::fputs(kHelp, stdout);
        } else {
          std::printf("unknown command '%s' (type /help)\n", line.c_str());
        }
        std::fflush(stdout);
        continue;
      }
    }
    std::vector<int32_t> ids, turn;
    if (conv.carry >= 0) {
      ids.push_back(conv.carry);  // close the previous reply in the cache
      if (conv.carry != tmpl->end_of_turn()) ids.push_back(tmpl->end_of_turn());
    }
    if (auto s = tmpl->user_turn(opts.system, line, conv.first, &turn); !s.ok()) {
      if (single) return fail(2, s.message());
      std::fprintf(stderr, "%s: %s\n", prog_name(), s.message().c_str());  // e.g. invalid UTF-8: try again
      continue;
    }
    ids.insert(ids.end(), turn.begin(), turn.end());
    if (conv.pos + (int32_t)ids.size() >= max_pos) {
      std::fflush(stdout);
      std::fprintf(stderr, "%s: the context is full (%d of %d positions used); ending the conversation "
                           "(/clear starts afresh; a larger -c/--ctx-size gives more room)\n", prog_name(),
                   conv.pos, max_pos);
      break;
    }
    runtime::GenerateOptions go;
    const int32_t room = max_pos - conv.pos - (int32_t)ids.size();
    go.max_new_tokens = opts.max_reply_tokens < 0 ? room : std::min(opts.max_reply_tokens, room);
    go.extra_stop_ids = {tmpl->end_of_turn()};
    model::Utf8Stream utf8;
    StopStrings stops(opts.stops);
    int32_t prev = ids.back();
    runtime::GenerateStats st;
    auto on_token = [&](int32_t tok) {
      std::fputs(stops.push(utf8.push(e.tokenizer->decode_token(prev, tok))).c_str(), stdout);
      std::fflush(stdout);
      prev = tok;
      return !interrupted() && !stops.stopped();
    };
    const base::Status s = e.runner->generate(sc, ids, conv.pos, go, on_token, &st);
    if (!stops.stopped()) std::fputs(stops.push(utf8.flush()).c_str(), stdout);
    if (!stops.stopped()) std::fputs(stops.flush().c_str(), stdout);
    std::fputs("\n", stdout);  // every reply ends its line before the next prompt
    std::fflush(stdout);
    if (!s.ok()) return fail(1, s.message());
    if (interrupted()) st.stop_reason = "interrupted";
    else if (stops.stopped()) st.stop_reason = "stop string";
    clear_interrupt();  // Ctrl-C stopped this reply only
    conv.pos = st.next_pos;
    conv.carry = st.unfed_token;
    conv.first = false;
    answered = true;
    add(&total, st);
  }
  if (total.prompt_tokens > 0) print_stats(total, sc.seed);
  return 0;
}

}  // namespace app
