#include "args.h"

#include <gflags/gflags.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace app {

namespace {

// The flags this program defines itself (not those of glog / gflags), in help order: the program's
// own file first, then the shared ones (app_common.cpp).
std::vector<gflags::CommandLineFlagInfo> own_flags() {
  std::vector<gflags::CommandLineFlagInfo> all, own;
  gflags::GetAllFlags(&all);
  for (const auto& f : all)
    if (f.filename.find("demo/") != std::string::npos) own.push_back(f);
  std::stable_sort(own.begin(), own.end(), [](const auto& a, const auto& b) {
    const bool ca = a.filename.find("app_common") != std::string::npos;
    const bool cb = b.filename.find("app_common") != std::string::npos;
    return ca < cb;
  });
  return own;
}

std::string dashed(std::string name) {
  std::replace(name.begin(), name.end(), '_', '-');
  return name;
}

// "--Top-K" -> "top_k": how spellings are compared for suggestions.
std::string normal(const std::string& spelling) {
  std::string s = spelling.substr(spelling.find_first_not_of('-') == std::string::npos ? spelling.size()
                                                                                       : spelling.find_first_not_of('-'));
  for (char& c : s) c = c == '-' ? '_' : (char)std::tolower((unsigned char)c);
  return s;
}

// A word that could be a negative number is a value, never a flag: "-1", "-0.5".
bool looks_numeric(const std::string& s) {
  if (s.size() < 2 || s[0] != '-') return false;
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  return end != nullptr && *end == '\0';
}

struct Table {
  std::map<std::string, std::string> spelling_to_flag;  // every accepted spelling
  std::vector<std::string> suggestions;                 // spellings worth suggesting, canonical first
  std::map<std::string, gflags::CommandLineFlagInfo> info;
};

Table build_table(const ArgSpec& spec) {
  Table t;
  for (const auto& f : own_flags()) {
    t.info[f.name] = f;
    t.spelling_to_flag["--" + f.name] = f.name;
    t.spelling_to_flag["--" + dashed(f.name)] = f.name;
    t.suggestions.push_back("--" + f.name);
  }
  for (const Alias& a : spec.aliases) {
    if (!t.info.count(a.flag)) continue;  // an alias of a flag this program does not have
    t.spelling_to_flag[a.spelling] = a.flag;
    t.suggestions.push_back(a.spelling);
  }
  for (const char* s : {"-h", "--help", "--version"}) t.suggestions.push_back(s);
  return t;
}

std::string unknown(const std::string& spelling, const Table& t) {
  const std::string near = closest(spelling, t.suggestions);
  return "unknown flag '" + spelling + "'" + (near.empty() ? " (see --help)" : "; did you mean " + near + "?");
}

const char* placeholder(const std::string& type) {
  if (type == "bool") return "";
  if (type == "string") return " TEXT";
  if (type == "double") return " X";
  return " N";
}

}  // namespace

int edit_distance(const std::string& a, const std::string& b) {
  std::vector<int> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = (int)j;
  for (size_t i = 1; i <= a.size(); ++i) {
    int diag = row[0];
    row[0] = (int)i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const int up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  const std::string w = normal(word);
  if (w.empty()) return "";
  // Close enough to be a typo: one edit in a short word, two in a longer one; never a whole word.
  const int allowed = w.size() <= 2 ? 0 : (w.size() <= 5 ? 1 : 2);
  std::string best;
  int best_d = allowed + 1;
  for (const std::string& c : candidates) {
    const int d = edit_distance(w, normal(c));
    if (d < best_d) best = c, best_d = d;
  }
  if (!best.empty()) return best;
  // Else a flag that the word begins (--max -> --max_seq_len), the shortest such.
  if (w.size() >= 3)
    for (const std::string& c : candidates)
      if (normal(c).compare(0, w.size(), w) == 0 && (best.empty() || c.size() < best.size())) best = c;
  return best;
}

std::string parse_args(int argc, char** argv, const ArgSpec& spec, ParsedArgs* out) {
  const Table t = build_table(spec);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.size() < 2 || arg[0] != '-' || looks_numeric(arg) || arg == "--")
      return "unexpected argument '" + arg + "' (flags take the form --name value or --name=value; see --help)";
    const size_t eq = arg.rfind("--", 0) == 0 ? arg.find('=') : std::string::npos;
    const std::string spelling = arg.substr(0, eq);
    const bool has_value = eq != std::string::npos;
    if (spelling == "-h" || spelling == "--help") {
      out->help = true;
      continue;
    }
    if (spelling == "--version") {
      out->version = true;
      continue;
    }
    std::string flag;
    bool negated = false;
    if (auto it = t.spelling_to_flag.find(spelling); it != t.spelling_to_flag.end()) {
      flag = it->second;
    } else if (spelling.rfind("--no", 0) == 0) {  // --nochat, --no-chat
      std::string rest = "--" + spelling.substr(spelling.rfind("--no-", 0) == 0 ? 5 : 4);
      auto jt = t.spelling_to_flag.find(rest);
      if (jt != t.spelling_to_flag.end() && t.info.at(jt->second).type == "bool") flag = jt->second, negated = true;
    }
    if (flag.empty()) return unknown(spelling, t);
    const gflags::CommandLineFlagInfo& f = t.info.at(flag);
    std::string value;
    if (f.type == "bool") {
      if (negated && has_value) return spelling + " takes no value";
      value = negated ? "false" : (has_value ? arg.substr(eq + 1) : "true");
    } else if (has_value) {
      value = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return spelling + " needs a value (" + std::string(placeholder(f.type) + 1) + ")";
    }
    if (gflags::SetCommandLineOption(flag.c_str(), value.c_str()).empty()) {
      const std::string kind = f.type == "double" ? "a number" : f.type == "bool" ? "true or false"
                               : f.type == "uint64" ? "a non-negative integer" : "an integer";
      return "invalid value '" + value + "' for " + spelling + " (expects " + kind + ")";
    }
    out->given.insert(flag);
    if (spec.repeatable.count(flag)) out->lists[flag].push_back(value);
  }
  return "";
}

std::string help_text(const std::string& prog, const std::string& usage, const ArgSpec& spec) {
  const Table t = build_table(spec);
  std::string s = prog + ": " + usage + "\n\nflags (a dash may stand for an underscore: --top-p is --top_p):\n";
  for (const auto& f : own_flags()) {
    std::string names;
    for (const Alias& a : spec.aliases)
      if (a.flag == f.name) names += a.spelling + ", ";
    names += "--" + f.name + placeholder(f.type);
    if (spec.repeatable.count(f.name)) names += " (repeatable)";
    std::string def = f.default_value;
    if (f.type == "double") {  // gflags prints 0.80000000000000004
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%g", std::atof(def.c_str()));
      def = buf;
    } else if (f.type == "string") {
      def = "\"" + def + "\"";
    }
    s += "  " + names + "\n      " + f.description + " (default: " + def + ")\n";
  }
  s += "  -h, --help\n      show this help and exit\n  --version\n      show the version, git commit, CUDA "
       "architectures and NCCL version, and exit\n";
  return s;
}

}  // namespace app
