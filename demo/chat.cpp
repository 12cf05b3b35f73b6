#include "chat.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>

#include "model/chat.h"

namespace app {

int run_chat(Engine& e, const sampler::SamplerConfig& sc, const std::string& system, const std::string& prompt,
             int max_reply_tokens) {
  std::unique_ptr<model::ChatTemplate> tmpl;
  if (auto s = model::ChatTemplate::create(e.runner->config().family, *e.tokenizer, &tmpl); !s.ok())
    return fail(2, s.message());
  const bool interactive = prompt.empty() && isatty(0);
  const int32_t max_pos = e.runner->max_seq_len();
  int32_t pos = 0;            // cache positions filled so far
  int32_t carry = -1;         // token that ended the last reply, not yet in the cache
  bool first = true;
  runtime::GenerateStats total;

  std::string line;
  while (true) {
    if (!prompt.empty()) {
      if (!first) break;
      line = prompt;
    } else {
      if (interactive) std::fputs("> ", stdout), std::fflush(stdout);
      if (!std::getline(std::cin, line)) break;  // EOF ends the conversation
      if (line.empty()) continue;
    }
    std::vector<int32_t> ids, turn;
    if (carry >= 0) {
      ids.push_back(carry);  // close the previous reply in the cache
      if (carry != tmpl->end_of_turn()) ids.push_back(tmpl->end_of_turn());
    }
    if (auto s = tmpl->user_turn(system, line, first, &turn); !s.ok()) return fail(2, s.message());
    ids.insert(ids.end(), turn.begin(), turn.end());
    if (pos + (int32_t)ids.size() >= max_pos) {
      std::fflush(stdout);
      std::fprintf(stderr, "llama_infer: the context is full (%d of %d positions used); ending the conversation "
                           "(a larger --max_seq_len gives more room)\n", pos, max_pos);
      break;
    }
    runtime::GenerateOptions go;
    go.max_new_tokens = std::min(max_reply_tokens, max_pos - pos - (int32_t)ids.size());
    go.extra_stop_ids = {tmpl->end_of_turn()};
    model::Utf8Stream out;
    int32_t prev = ids.back();
    runtime::GenerateStats st;
    auto on_token = [&](int32_t tok) {
      std::fputs(out.push(e.tokenizer->decode_token(prev, tok)).c_str(), stdout);
      std::fflush(stdout);
      prev = tok;
      return !interrupted();
    };
    const base::Status s = e.runner->generate(sc, ids, pos, go, on_token, &st);
    std::fputs((out.flush() + "\n").c_str(), stdout);
    std::fflush(stdout);
    if (!s.ok()) return fail(1, s.message());
    pos = st.next_pos;
    carry = st.unfed_token;
    first = false;
    total.prompt_tokens += st.prompt_tokens;
    total.generated_tokens += st.generated_tokens;
    total.prefill_ms += st.prefill_ms;
    total.decode_ms += st.decode_ms;
    total.stop_reason = st.stop_reason;
    if (interrupted()) break;  // Ctrl-C: stop this reply and the conversation
  }
  if (total.prompt_tokens > 0) print_stats(total);
  return interrupted() ? 130 : 0;  // as for plain generation: a script can tell the output is partial
}

}  // namespace app
