// Task metrics against hand-computed cases, task decoding, and the G2P split of the CMU dictionary.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "distill/evaluation/task_eval.h"
#include "distill/evaluation/task_metrics.h"
#include "models/arch/generate.h"
#include "models/errors.h"
#include "models/io/checkpoint.h"
#include "tests/test_util.h"

namespace distill {
namespace {
namespace fs = std::filesystem;

TEST(TaskMetrics, EditDistanceHandComputed) {
  EXPECT_EQ(levenshtein(std::string("kitten"), std::string("sitting")), 3);
  EXPECT_EQ(levenshtein(std::string(""), std::string("abc")), 3);
  EXPECT_EQ(levenshtein(std::string("abc"), std::string("")), 3);
  EXPECT_EQ(levenshtein(std::string("flaw"), std::string("lawn")), 2);
  // Phonemes: AE0 -> AH0 substituted, AH1 inserted.
  EXPECT_EQ(levenshtein(split_tokens("AH0 B D"), split_tokens("AE0 B D AH1")), 2);
  EXPECT_EQ(levenshtein(split_tokens("a b c"), split_tokens("a b c")), 0);
}

TEST(TaskMetrics, ExampleScoreCountsTokensAndCodePoints) {
  auto s = score_example("HH AH0 L OW1", "HH EH0 L OW1");
  EXPECT_FALSE(s.exact);
  EXPECT_EQ(s.token_edits, 1);
  EXPECT_EQ(s.reference_tokens, 4);
  EXPECT_EQ(s.char_edits, 1);
  EXPECT_EQ(s.reference_chars, 12);
  // Whitespace does not matter to exact match or to the character count.
  auto w = score_example("  a   b\t", "a b");
  EXPECT_TRUE(w.exact);
  EXPECT_EQ(w.char_edits, 0);
  EXPECT_EQ(w.reference_chars, 3);
  // Characters are code points, not bytes: "é" is one.
  auto u = score_example("cafe", "caf\xc3\xa9");
  EXPECT_EQ(u.reference_chars, 4);
  EXPECT_EQ(u.char_edits, 1);
  // An empty prediction deletes everything.
  auto e = score_example("", "K AE1 T");
  EXPECT_EQ(e.token_edits, 3);
  EXPECT_EQ(e.char_edits, 7);
}

TEST(TaskMetrics, CorpusLevelRatesAndAccuracy) {
  const std::vector<std::string> refs = {"K AE1 T", "D AO1 G", "B ER1 D", "F IH1 SH"};
  const std::vector<std::string> preds = {"K AE1 T", "D AA1 G", "B ER1 D", "F IH1 S SH"};
  auto t = score_task(preds, refs);
  EXPECT_EQ(t.examples, 4);
  EXPECT_DOUBLE_EQ(t.exact_match.value, 0.5);
  EXPECT_DOUBLE_EQ(t.token_error_rate.value, 2.0 / 12.0);  // one substitution, one insertion over 12 phonemes
  EXPECT_DOUBLE_EQ(t.char_error_rate.value, 3.0 / 29.0);   // O->A; "S " inserted (2 points) over 7+7+7+8
  EXPECT_LE(t.exact_match.lo, t.exact_match.value);
  EXPECT_GE(t.exact_match.hi, t.exact_match.value);
  EXPECT_FALSE(t.accuracy);

  TaskScoreOptions o;
  o.classification = true;
  auto c = score_task({"spam", "ham", "eggs", "ham"}, {"spam", "spam", "ham", "ham"}, o);
  ASSERT_TRUE(c.accuracy);
  EXPECT_DOUBLE_EQ(c.accuracy->value, 0.5);
  EXPECT_DOUBLE_EQ(*c.invalid_label_rate, 0.25);  // "eggs" is no label
  EXPECT_THROW(score_task({"a"}, {"a", "b"}), InputError);
  EXPECT_THROW(score_task({}, {}), InputError);
}

TEST(TaskMetrics, BootstrapIntervalIsAPercentileOfResamples) {
  stats::BatchSums same{{1, 1, 1, 1}, {1, 1, 1, 1}};
  auto m = bootstrap_ratio(same, 500, 3);
  EXPECT_DOUBLE_EQ(m.lo, 1.0);
  EXPECT_DOUBLE_EQ(m.hi, 1.0);
  // Half right out of 400: the interval is about +-1.96 sqrt(.25/400) = +-0.049 around 0.5.
  stats::BatchSums half;
  for (int i = 0; i < 400; ++i) {
    half.value.push_back(i % 2);
    half.count.push_back(1);
  }
  auto h = bootstrap_ratio(half, 2000, 5);
  EXPECT_DOUBLE_EQ(h.value, 0.5);
  EXPECT_NEAR(h.lo, 0.451, 0.012);
  EXPECT_NEAR(h.hi, 0.549, 0.012);
}

TEST(TaskDecoding, PredictionsFollowTheInputOrderWhateverTheBatch) {
  auto model = load_model(test::fixture("switch-tiny-4"));
  auto tokenizer = Tokenizer::load(test::fixture("switch-tiny-4"));
  const std::vector<std::string> inputs = {"the cat", "a much longer input sentence than the others", "dog", "",
                                           "x y z w"};
  DecodeOptions one, two;
  one.batch_size = 1;
  two.batch_size = 2;
  one.max_new_tokens = two.max_new_tokens = 12;
  auto a = decode_task(model, tokenizer, inputs, one);
  auto b = decode_task(model, tokenizer, inputs, two);
  EXPECT_EQ(a.predictions, b.predictions);
  ASSERT_EQ(a.predictions.size(), inputs.size());
  // The first input's prediction is its own greedy decoding, detokenised.
  auto ids = tokenizer.encode(inputs[0]);
  auto out = greedy_generate(model, torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0), {},
                             {12, true, true});
  std::vector<int64_t> gen;
  for (int64_t t = 1; t < out.size(1) && out[0][t].item<int64_t>() != tokenizer.eos_id(); ++t) gen.push_back(out[0][t].item<int64_t>());
  EXPECT_EQ(a.predictions[0], tokenizer.decode(gen));
}

// tools/split_cmudict.sh on a small dictionary with alternates: every pronunciation of a headword
// lands in one split, and the pairs read as G2P.
TEST(CmudictSplit, NoHeadwordInTwoSplits) {
  const auto dir = fs::path(testing::TempDir()) / "cmudict_split";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream dict(dir / "dict.txt");
  std::map<std::string, int> pronunciations;
  for (int w = 0; w < 600; ++w) {
    std::string word = "W";
    for (int x = w; x > 0; x /= 26) word += static_cast<char>('A' + x % 26);
    const int alternates = w % 3;
    dict << word << "  K AE1 T\n";
    for (int a = 1; a <= alternates; ++a) dict << word << "(" << a << ")  K AH0 T\n";
    pronunciations[word] = 1 + alternates;
  }
  dict.close();
  const std::string cmd = std::string(DISTILL_SOURCE_DIR) + "/tools/split_cmudict.sh " + (dir / "dict.txt").string() +
                          " " + (dir / "out").string() + " 7 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::map<std::string, std::set<std::string>> splits_of;
  std::map<std::string, int> seen;
  std::map<std::string, int> per_split;
  for (const char* s : {"train", "validation", "test"}) {
    std::ifstream in(dir / "out" / (std::string(s) + ".tsv"));
    std::string line;
    while (std::getline(in, line)) {
      const auto tab = line.find('\t');
      ASSERT_NE(tab, std::string::npos) << line;
      std::string word;
      for (char ch : line.substr(0, tab)) {
        if (ch != ' ') word += static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      }
      splits_of[word].insert(s);
      ++seen[word];
      ++per_split[s];
      EXPECT_TRUE(line.substr(tab + 1) == "K AE1 T" || line.substr(tab + 1) == "K AH0 T") << line;
    }
  }
  EXPECT_EQ(seen, pronunciations);  // every pronunciation written once
  for (const auto& [word, splits] : splits_of) EXPECT_EQ(splits.size(), 1u) << word;
  EXPECT_GT(per_split["test"], 0);
  EXPECT_GT(per_split["validation"], 0);
  EXPECT_GT(per_split["train"], per_split["test"]);
  // A bad line is one error naming the file and line.
  std::ofstream bad(dir / "bad.txt");
  bad << "GOOD  G UH1 D\nBROKEN\n";
  bad.close();
  const std::string bad_cmd = std::string(DISTILL_SOURCE_DIR) + "/tools/split_cmudict.sh " +
                              (dir / "bad.txt").string() + " " + (dir / "bad_out").string() + " 2>" +
                              (dir / "err.txt").string();
  EXPECT_NE(std::system(bad_cmd.c_str()), 0);
  std::ifstream err(dir / "err.txt");
  std::string message((std::istreambuf_iterator<char>(err)), std::istreambuf_iterator<char>());
  EXPECT_NE(message.find("bad.txt:2"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(dir / "bad_out" / "train.tsv"));
}

}  // namespace
}  // namespace distill
