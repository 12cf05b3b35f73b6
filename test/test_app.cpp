// What the programs in demo/ build on: the stop-string filter of -r and the flag suggestions.
#include <gtest/gtest.h>

#include "args.h"
#include "stop_strings.h"

namespace {

// Feeds `pieces` (the text of successive tokens) and returns what was printed.
std::string feed(app::StopStrings& s, const std::vector<std::string>& pieces) {
  std::string out;
  for (const auto& p : pieces) out += s.push(p);
  return out;
}

TEST(StopStrings, StopsBeforeTheStringEvenAcrossTokens) {
  app::StopStrings s({"User:"});
  EXPECT_EQ(feed(s, {"Hello", " there.\nUs", "er", ": hi"}), "Hello there.\n");
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.push("more"), "");
}

TEST(StopStrings, HoldsBackOnlyWhatCouldStartAStopString) {
  app::StopStrings s({"###"});
  EXPECT_EQ(s.push("a#"), "a");   // "#" may begin "###"
  EXPECT_EQ(s.push("#b"), "##b");  // "##b" cannot: all of it goes out
  EXPECT_EQ(s.push("c##"), "c");
  EXPECT_FALSE(s.stopped());
  EXPECT_EQ(s.flush(), "##");  // the end of generation releases what was held
}

TEST(StopStrings, TheEarliestOfSeveralWins) {
  app::StopStrings s({"dog", "cat"});
  EXPECT_EQ(feed(s, {"a cat and a dog"}), "a ");
  EXPECT_TRUE(s.stopped());
  app::StopStrings none({});
  EXPECT_EQ(feed(none, {"a cat"}), "a cat");
}

TEST(Args, EditDistance) {
  EXPECT_EQ(app::edit_distance("temprature", "temperature"), 1);
  EXPECT_EQ(app::edit_distance("", "abc"), 3);
  EXPECT_EQ(app::edit_distance("kitten", "sitting"), 3);
}

TEST(Args, ClosestSuggestsTyposAndPrefixesButNotUnrelatedWords) {
  const std::vector<std::string> flags = {"--temperature", "--top_p", "--top_k", "--max_seq_len", "--temp", "-n"};
  EXPECT_EQ(app::closest("--temprature", flags), "--temperature");
  EXPECT_EQ(app::closest("--top-p", flags), "--top_p");  // dashes and underscores compare equal
  EXPECT_EQ(app::closest("--max", flags), "--max_seq_len");
  EXPECT_EQ(app::closest("--bogus", flags), "");
  EXPECT_EQ(app::closest("-x", flags), "");  // one letter off a one-letter flag is no evidence
}

}  // namespace
