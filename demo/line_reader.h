// The chat's input: one line at a time from a terminal (line editing and history through libedit)
// or from a pipe, with Ctrl-C and end of input reported as such instead of ending the process.
#pragma once

#include <string>

namespace app {

class LineReader {
 public:
  enum class Result { kLine, kEof, kInterrupt };

  // `terminal`: stdin is a terminal (libedit draws the prompt and edits the line); otherwise lines are
  // read from stdin as they come and the prompt is not shown.
  explicit LineReader(bool terminal);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // kLine: *line holds the line without its newline. kEof: end of input (Ctrl-D at an empty line).
  // kInterrupt: Ctrl-C (the line typed so far is dropped).
  Result read(const std::string& prompt, std::string* line);
  // Adds a line to the history (terminal only; the up arrow recalls it).
  void remember(const std::string& line);

 private:
  Result read_terminal(const std::string& prompt, std::string* line);
  Result read_pipe(std::string* line);

  bool terminal_;
  std::string buffer_;  // pipe: bytes read past the last newline
  bool eof_ = false;
};

}  // namespace app
