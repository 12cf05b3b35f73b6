// -r / --reverse-prompt: stop generating when the text contains one of the stop strings, which is
// not printed. Text that could be the start of a stop string is held back until it is clear that it
// is not one (so nothing of a stop string ever reaches the terminal).
#pragma once

#include <string>
#include <vector>

namespace app {

class StopStrings {
 public:
  explicit StopStrings(std::vector<std::string> stops);

  // Appends generated text; returns what may be printed now. After a stop string is seen, returns
  // only the text before it, and stopped() is true.
  std::string push(const std::string& text);
  // The text still held back (generation ended without a stop string).
  std::string flush();
  bool stopped() const { return stopped_; }
  bool empty() const { return stops_.empty(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;  // a suffix that is a prefix of some stop string
  bool stopped_ = false;
};

}  // namespace app
