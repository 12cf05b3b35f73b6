#include "line_reader.h"

// clang-format off
#include <cstdio>
#include <editline/readline.h>
// clang-format on
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>

#include "app_common.h"

namespace app {

namespace {
// libedit's callback interface hands the finished line to a plain function.
std::string* g_line = nullptr;
bool g_done = false, g_eof = false;

void on_line(char* text) {
  if (text == nullptr) {
    g_eof = true;
  } else {
    *g_line = text;
    std::free(text);
  }
  g_done = true;
}

// Waits until stdin can be read. False when Ctrl-C came first. SIGINT is blocked while the flag is
// checked and unblocked only inside ppoll(), atomically: a Ctrl-C that lands between the check and
// the wait still interrupts the wait (with plain poll() it would be lost until the next key).
bool wait_readable() {
  sigset_t sigint, unblocked;
  sigemptyset(&sigint);
  sigaddset(&sigint, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigint, &unblocked);
  sigdelset(&unblocked, SIGINT);
  bool ready = false;
  while (!interrupted()) {
    pollfd p{0, POLLIN, 0};
    if (ppoll(&p, 1, nullptr, &unblocked) > 0) {
      ready = true;
      break;
    }
  }
  pthread_sigmask(SIG_UNBLOCK, &sigint, nullptr);
  return ready;
}
}  // namespace

LineReader::LineReader(bool terminal) : terminal_(terminal) {
  if (terminal_) {
    rl_readline_name = "llama_infer";
    using_history();
  }
}

LineReader::~LineReader() = default;

void LineReader::remember(const std::string& line) {
  if (terminal_ && !line.empty()) add_history(line.c_str());
}

LineReader::Result LineReader::read(const std::string& prompt, std::string* line) {
  return terminal_ ? read_terminal(prompt, line) : read_pipe(line);
}

// The terminal is read by us (poll, then one character at a time handed to libedit), so that Ctrl-C
// reaches our handler while the line is being typed instead of ending the process.
LineReader::Result LineReader::read_terminal(const std::string& prompt, std::string* line) {
  g_line = line;
  g_done = g_eof = false;
  rl_callback_handler_install(prompt.c_str(), on_line);
  while (!g_done) {
    if (!wait_readable()) {
      rl_callback_handler_remove();
      std::fputs("\n", stdout);
      std::fflush(stdout);
      return Result::kInterrupt;
    }
    rl_callback_read_char();
  }
  rl_callback_handler_remove();
  return g_eof ? Result::kEof : Result::kLine;
}

LineReader::Result LineReader::read_pipe(std::string* line) {
  while (true) {
    const size_t nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      *line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return Result::kLine;
    }
    if (eof_) {
      if (buffer_.empty()) return Result::kEof;
      line->swap(buffer_);  // a last line without its newline
      buffer_.clear();
      return Result::kLine;
    }
    if (!wait_readable()) return Result::kInterrupt;
    char chunk[4096];
    const ssize_t n = ::read(0, chunk, sizeof(chunk));
    if (n > 0) buffer_.append(chunk, (size_t)n);
    else if (n == 0 || errno != EINTR) eof_ = true;
  }
}

}  // namespace app
