#include "tokenize_cmd.h"

#include <cstdio>
#include <sstream>
#include <vector>

#include "app_common.h"

namespace app {

namespace {

int tokenize_text(const model::Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids;
  if (auto s = tok.encode(text, /*add_bos=*/false, &ids); !s.ok()) return fail(2, s.message());
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  std::printf("%s\n", line.c_str());
  return 0;
}

int detokenize_ids(const model::Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids;
  std::istringstream in(text);
  const std::string range = " (token ids are 0.." + std::to_string(tok.vocab_size() - 1) + ")";
  for (std::string word; in >> word;) {
    // Digits only (no sign), and few enough that stol cannot overflow.
    const bool number = word.size() <= 9 && word.find_first_not_of("0123456789") == std::string::npos;
    if (!number || std::stol(word) >= tok.vocab_size())
      return fail(2, "--detokenize: '" + word + "' is not a token id" + range);
    ids.push_back(static_cast<int32_t>(std::stol(word)));
  }
  // Decoded as if after BOS: SentencePiece's dummy-prefix space before the first word is dropped, as
  // sentencepiece's own decode does, so `--detokenize` of `--tokenize`'s output gives the text back.
  model::Utf8Stream utf8;
  std::string out;
  int32_t prev = tok.bos_id();
  for (int32_t id : ids) {
    out += utf8.push(tok.decode_token(prev, id));
    prev = id;
  }
  out += utf8.flush();
  std::fwrite(out.data(), 1, out.size(), stdout);  // the text may hold NUL bytes
  std::fputc('\n', stdout);
  return 0;
}

}  // namespace

int run_tokenize_command(const model::Tokenizer& tok, bool tokenize, bool detokenize, const std::string& prompt_or_ids) {
  if (tokenize == detokenize) return fail(2, "pass exactly one of --tokenize and --detokenize");
  return tokenize ? tokenize_text(tok, prompt_or_ids) : detokenize_ids(tok, prompt_or_ids);
}

}  // namespace app
