// UTF-8 validation shared by the tokenizers: both refuse text that is not valid UTF-8 (SentencePiece
// would silently turn each bad byte into U+FFFD; the Llama 3 regex is defined on characters).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "base/status.h"

namespace model {

// Offset of the first byte that is not part of valid UTF-8 (overlong forms, surrogates and code
// points past U+10FFFF are invalid), or npos.
inline size_t invalid_utf8_offset(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char b = s[i];
    int len;
    unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (b < 0x80) {
      ++i;
      continue;
    } else if (b >= 0xc2 && b <= 0xdf) {
      len = 2;
    } else if (b >= 0xe0 && b <= 0xef) {
      len = 3;
      if (b == 0xe0) lo = 0xa0;  // overlong
      if (b == 0xed) hi = 0x9f;  // surrogates
    } else if (b >= 0xf0 && b <= 0xf4) {
      len = 4;
      if (b == 0xf0) lo = 0x90;  // overlong
      if (b == 0xf4) hi = 0x8f;  // past U+10FFFF
    } else {
      return i;
    }
    if (i + len > s.size()) return i;
    const unsigned char b1 = s[i + 1];
    if (b1 < lo || b1 > hi) return i;
    for (int k = 2; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return i;
    i += len;
  }
  return std::string_view::npos;
}

// InvalidArgument "prompt is not valid UTF-8 (byte N)" for bad text.
inline base::Status check_utf8(std::string_view text) {
  const size_t bad = invalid_utf8_offset(text);
  if (bad == std::string_view::npos) return base::Status::Ok();
  return base::InvalidArgument("prompt is not valid UTF-8 (byte " + std::to_string(bad) + ")");
}

}  // namespace model
