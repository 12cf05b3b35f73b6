// The command line of llama_infer and llama_bench: llama.cpp's spellings beside our own.
//
// The flags themselves are gflags definitions (DEFINE_* in demo/*.cpp: name, type, default, help).
// gflags cannot parse short flags (-m, -n -1) or keep every value of a repeated flag (-r A -r B), so
// argv is read here instead and each value is handed to gflags with SetCommandLineOption, which still
// checks its type. Every flag is accepted as --name, --name-with-dashes, or any alias the program
// lists; values follow as --name=V or --name V (V may start with '-': -n -1, -f -); booleans take no
// value (--chat, --nochat, --chat=false). Errors are one line, for exit status 2; an unknown flag
// names the closest known one.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

namespace app {

struct Alias {
  std::string spelling;  // "-m", "--ctx-size", "--temp"
  std::string flag;      // the gflags name it stands for: "model", "max_seq_len", "temperature"
};

struct ArgSpec {
  std::vector<Alias> aliases;
  std::set<std::string> repeatable;  // flags whose every value is kept (-r A -r B)
};

struct ParsedArgs {
  bool help = false;     // -h / --help
  bool version = false;  // --version
  std::set<std::string> given;                            // flags set on the command line
  std::map<std::string, std::vector<std::string>> lists;  // every value of each repeatable flag
  bool was_given(const std::string& flag) const { return given.count(flag) > 0; }
};

// Parses argv[1..argc) against the program's own flags (those defined under demo/) and `spec`.
// Returns "" or the error message.
std::string parse_args(int argc, char** argv, const ArgSpec& spec, ParsedArgs* out);

// The help text: every flag with all its spellings, its default and its description.
std::string help_text(const std::string& prog, const std::string& usage, const ArgSpec& spec);

// Levenshtein distance between a and b.
int edit_distance(const std::string& a, const std::string& b);

// The spelling among `candidates` closest to `word` ("" when none is close enough to suggest).
std::string closest(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace app
