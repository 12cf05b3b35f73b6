// llama_infer --tokenize / --detokenize: the tokenizer alone, no model run (for checking prompts and
// comparing with other implementations).
#pragma once

#include <string>

#include "model/tokenizer.h"

namespace app {

// Exactly one of `tokenize` and `detokenize` must be set.
//   tokenize:   prints encode(text, add_bos=false) as decimal ids, space-separated, on one line (no
//               BOS: the ids of the text itself, as tiktoken's and sentencepiece's encode give them).
//               Special-token strings in the text are plain text.
//   detokenize: `prompt_or_ids` is decimal ids separated by whitespace; prints their text followed
//               by one newline, decoded as if after BOS (so SentencePiece's dummy-prefix space before
//               the first word is dropped and detokenize(tokenize(text)) == text). Bytes that do not
//               form UTF-8 characters print as U+FFFD; special tokens print as nothing.
// Returns 0, or 2 after one line on stderr (an id that is not a number in [0, vocab_size), a text
// the tokenizer refuses, such as invalid UTF-8).
int run_tokenize_command(const model::Tokenizer& tok, bool tokenize, bool detokenize, const std::string& prompt_or_ids);

}  // namespace app
