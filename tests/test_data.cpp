// Tokenizer, corpora, objectives and batching.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "data/batching.h"
#include "data/corpus.h"
#include "data/objectives.h"
#include "data/tokenized_corpus.h"
#include "data/tokenizer.h"
#include "models/io/atomic_file.h"
#include "models/errors.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::vector<int32_t> unpadded(const json& row, int64_t pad) {
  std::vector<int32_t> out;
  for (const auto& v : row)
    if (v.get<int64_t>() != pad && v.get<int64_t>() != -100) out.push_back(v.get<int32_t>());
  return out;
}

TEST(Tokenizer, EncodesTheFixtureTextsLikeHuggingFace) {
  auto t = Tokenizer::load(test::fixture("switch-tiny-4"));
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.num_sentinels(), 0);  // tokenizer_config.json: extra_ids 0
  auto g = json::parse(read_text_file(test::fixture("switch-tiny-4/golden.json")));
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(t.encode(g["texts"]["encoder"][i].get<std::string>()), unpadded(g["input_ids"][i], 0)) << i;
    EXPECT_EQ(t.encode(g["texts"]["labels"][i].get<std::string>()), unpadded(g["labels"][i], 0)) << i;
  }
  EXPECT_EQ(t.decode({110, 89, 7, 72, 81, 23, 96, 5, 125, 8, 1}), "The licensee may copy and distribute the program.");
}

TEST(Tokenizer, MissingModelIsAnError) {
  EXPECT_THROW(Tokenizer::load("/nonexistent/spiece.model"), InputError);
  test::TempDir dir;
  std::ofstream(dir.file("spiece.model")) << "garbage";
  try {
    Tokenizer::load(dir.path());
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("not a SentencePiece model"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, AbsurdSentinelCountsAreRefused) {
  // Issue 13, class 5: tokenizer_config.json's extra_ids: 1e12 would size the vocabulary.
  test::TempDir dir;
  fs::copy_file(test::fixture("switch-tiny-4/spiece.model"), dir.file("spiece.model"));
  write_text_atomic(dir.file("tokenizer_config.json"), R"({"extra_ids": 1000000000000})");
  try {
    Tokenizer::load(dir.path());
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("\"extra_ids\" must be an integer in [0, 1048576]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Tokenizer::load(dir.file("spiece.model"), int64_t{1} << 40), InputError);
}

TEST(Tokenizer, VocabularyTooSmallForTheSentinels) {
  test::TempDir dir;
  write_text_atomic(dir.file("c.txt"), "some text\n");
  TokenizerTrainOptions o;
  o.inputs = {dir.file("c.txt")};
  o.vocab_size = 100;
  o.num_sentinels = 100;
  o.output_dir = dir.file("tok");
  try {
    train_tokenizer(o);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("leaves 0 SentencePiece pieces after 100 sentinels"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, TrainsWithT5ConventionsAndRoundTrips) {
  test::TempDir dir;
  {
    std::ofstream out(dir.file("c.txt"));
    for (int i = 0; i < 300; ++i) {
      out << "The committee number " << i << " reported on the state of the union and its finances. "
          << "Congress shall consider the budget, the army, the navy and the treaties of commerce.\n";
    }
  }
  TokenizerTrainOptions o;
  o.inputs = {dir.file("c.txt")};
  o.vocab_size = 120;
  o.num_sentinels = 20;
  o.output_dir = dir.file("tok");
  train_tokenizer(o);
  auto t = Tokenizer::load(o.output_dir);
  EXPECT_EQ(t.vocab_size(), 120);
  EXPECT_EQ(t.pieces(), 100);
  EXPECT_EQ(t.sentinel(0), 119);
  EXPECT_EQ(t.piece(119), "<extra_id_0>");
  EXPECT_EQ(t.piece(100), "<extra_id_19>");
  EXPECT_EQ(t.piece(0), "<pad>");
  EXPECT_EQ(t.piece(1), "</s>");
  EXPECT_EQ(t.piece(2), "<unk>");
  const std::string text = "Congress reported on the budget of the navy.";
  auto ids = t.encode(text);
  EXPECT_EQ(ids.back(), 1);
  EXPECT_EQ(t.decode(std::vector<int64_t>(ids.begin(), ids.end())), text);
  auto cfg = json::parse(read_text_file(dir.file("tok/tokenizer_config.json")));
  EXPECT_EQ(cfg["extra_ids"], 20);
  EXPECT_EQ(cfg["additional_special_tokens"].size(), 20u);
  // Issue 14: sentinels written in text are their ids, as Hugging Face's T5Tokenizer gives them
  // (its <extra_id_N> AddedTokens strip the whitespace on both sides; every stretch between
  // special tokens is encoded on its own).
  auto plain = [&](const std::string& s) { return t.encode(s, /*add_eos=*/false); };
  auto cat = [](std::initializer_list<std::vector<int32_t>> parts) {
    std::vector<int32_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  };
  const int32_t s0 = 119, s1 = 118, s19 = 100;
  EXPECT_EQ(t.encode("<extra_id_0>"), (std::vector<int32_t>{s0, 1}));  // HF: [7999, 1] for t5's 8000
  EXPECT_EQ(t.encode("The <extra_id_0> of the <extra_id_1> address"),
            cat({plain("The"), {s0}, plain("of the"), {s1}, plain("address"), {1}}));
  EXPECT_EQ(t.encode("<extra_id_0><extra_id_19> navy"), cat({{s0, s19}, plain("navy"), {1}}));
  EXPECT_EQ(t.encode("budget<extra_id_1>"), cat({plain("budget"), {s1}, {1}}));
  // Not sentinels: beyond the 20 there are, a leading zero, no closing bracket.
  for (const std::string text : {"<extra_id_20>", "<extra_id_01>", "<extra_id_1", "<extra_id_>"}) {
    auto ids = t.encode(text, false);
    EXPECT_GT(ids.size(), 1u) << text;
    for (auto id : ids) EXPECT_LT(id, 100) << text;
  }
}

TEST(Tokenizer, SpecialTokenStringsAreTheirIdsLikeHuggingFace) {
  // switch-tiny-4 has no sentinels (extra_ids 0): <pad>, </s> and <unk> are its special tokens;
  // they keep the whitespace around them (lstrip/rstrip false in its tokenizer_config.json).
  auto t = Tokenizer::load(test::fixture("switch-tiny-4"));
  auto plain = [&](const std::string& s) { return t.encode(s, /*add_eos=*/false); };
  auto cat = [](std::initializer_list<std::vector<int32_t>> parts) {
    std::vector<int32_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  };
  EXPECT_EQ(t.encode("</s>"), (std::vector<int32_t>{1, 1}));
  EXPECT_EQ(t.encode("You may copy.</s> Free software."), cat({plain("You may copy."), {1}, plain(" Free software."), {1}}));
  EXPECT_EQ(t.encode("<pad>You may"), cat({{0}, plain("You may"), {1}}));
  EXPECT_EQ(t.encode("copy <unk>"), cat({plain("copy "), {2}, {1}}));
  EXPECT_EQ(t.encode("<pad></s><unk>"), (std::vector<int32_t>{0, 1, 2, 1}));
  for (auto id : plain("a < b <s> </ s> <pad")) EXPECT_GT(id, 1);  // nothing special here
  // Without sentinels <extra_id_0> is text, as in Hugging Face.
  auto ids = plain("<extra_id_0>");
  EXPECT_GT(ids.size(), 1u);
  for (auto id : ids) EXPECT_GT(id, 2);
}

// ---- corpora ----

std::string corpus_error(CorpusFormat format, const std::string& content, CorpusOptions o = {}) {
  test::TempDir dir;
  write_text_atomic(dir.file("c"), content);
  o.files = {dir.file("c")};
  o.format = format;
  try {
    read_corpus(o, [](Document&&) {});
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Corpus, AFifoOrADirectoryIsRefusedByName) {
  // Issue 13, class 7: reading a FIFO would block until something writes to it.
  test::TempDir dir;
  ASSERT_EQ(::mkfifo(dir.file("fifo").c_str(), 0600), 0);
  for (const auto& [path, kind] : std::vector<std::pair<std::string, std::string>>{{dir.file("fifo"), "a FIFO"}, {dir.path(), "a directory"}}) {
    CorpusOptions o;
    o.files = {path};
    try {
      read_corpus(o, [](Document&&) {});
      FAIL() << path;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(path + ": is " + kind + ", not a corpus file"), std::string::npos) << e.what();
    }
  }
}

TEST(Corpus, ReadsEveryFormat) {
  test::TempDir dir;
  write_text_atomic(dir.file("a.txt"), "first doc\n\nsecond doc\n");
  write_text_atomic(dir.file("b.txt"), "para one\nline two\n\n\npara two\n");
  write_text_atomic(dir.file("c.jsonl"), "{\"text\": \"hello\"}\n\n{\"text\": \"\", \"x\": 1}\n{\"text\": \"world\"}\n");
  write_text_atomic(dir.file("d.tsv"), "in one\tout one\nin two\tout two\n");
  write_text_atomic(dir.file("e.jsonl"), "{\"input\": \"q\", \"target\": \"a\"}\n");
  std::vector<Document> docs;
  auto collect = [&](Document&& d) { docs.push_back(std::move(d)); };

  CorpusOptions o;
  o.files = {dir.file("a.txt")};
  auto s = read_corpus(o, collect);
  EXPECT_EQ(s.documents, 2);
  EXPECT_EQ(s.skipped_empty, 1);

  docs.clear();
  o.files = {dir.file("b.txt")};
  o.blank_line_documents = true;
  read_corpus(o, collect);
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].text, "para one\nline two");

  docs.clear();
  o = {};
  o.files = {dir.file("c.jsonl")};
  o.format = CorpusFormat::kJsonl;
  s = read_corpus(o, collect);
  EXPECT_EQ(s.documents, 2);
  EXPECT_EQ(docs[1].text, "world");

  docs.clear();
  o.files = {dir.file("d.tsv")};
  o.format = CorpusFormat::kTsvPairs;
  read_corpus(o, collect);
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[1].target, "out two");

  docs.clear();
  o.files = {dir.file("e.jsonl")};
  o.format = CorpusFormat::kJsonlPairs;
  read_corpus(o, collect);
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0].target, "a");
}

TEST(Corpus, InvalidUtf8LinesAreCountedAndSkipped) {
  test::TempDir dir;
  write_text_atomic(dir.file("c.txt"), "good line\nbad \xC3\x28 line\ntruncated \xE2\x82\nover\xC0\xAF\ncaf\xC3\xA9\n");
  CorpusOptions o;
  o.files = {dir.file("c.txt")};
  std::vector<std::string> docs;
  auto s = read_corpus(o, [&](Document&& d) { docs.push_back(d.text); });
  EXPECT_EQ(s.skipped_invalid_utf8, 3);
  EXPECT_EQ(docs, (std::vector<std::string>{"good line", "caf\xC3\xA9"}));
}

TEST(Corpus, BadInputsNameFileAndLine) {
  EXPECT_NE(corpus_error(CorpusFormat::kJsonl, "{\"text\": \"a\"}\n{oops\n").find("/c:2: not valid JSON"), std::string::npos);
  EXPECT_NE(corpus_error(CorpusFormat::kJsonl, "{\"body\": \"a\"}\n").find("/c:1: no field \"text\""), std::string::npos);
  EXPECT_NE(corpus_error(CorpusFormat::kJsonl, "{\"text\": 5}\n").find("must be a string"), std::string::npos);
  EXPECT_NE(corpus_error(CorpusFormat::kTsvPairs, "a\tb\nno tab here\n").find("/c:2: expected input<TAB>target"), std::string::npos);
  EXPECT_NE(corpus_error(CorpusFormat::kText, "\n\n  \n").find("no usable document"), std::string::npos);
  CorpusOptions o;
  o.files = {"/nonexistent/corpus.txt"};
  try {
    read_corpus(o, [](Document&&) {});
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/corpus.txt: cannot open"), std::string::npos);
  }
  EXPECT_THROW(parse_corpus_format("csv"), InputError);
}

TEST(Corpus, ValidationSplitIsDeterministicAndProportional) {
  int n = 0;
  for (uint64_t i = 0; i < 10000; ++i) n += is_validation_document(i, 7, 0.1);
  EXPECT_NEAR(n, 1000, 100);
  for (uint64_t i = 0; i < 100; ++i) EXPECT_EQ(is_validation_document(i, 7, 0.1), is_validation_document(i, 7, 0.1));
  int same = 0;
  for (uint64_t i = 0; i < 1000; ++i) same += is_validation_document(i, 7, 0.5) == is_validation_document(i, 8, 0.5);
  EXPECT_LT(same, 600);  // another seed, another split
}

// ---- objectives ----

ObjectiveOptions span_options() {
  ObjectiveOptions o;
  o.input_length = 128;
  o.target_length = 32;
  o.vocab_size = 10000;
  o.num_sentinels = 100;
  return o;
}

std::vector<int32_t> token_range(int n) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), 3);  // ids 3.. (no specials, no sentinels)
  return t;
}

TEST(SpanCorruption, StatisticsMatchTheTargets) {
  SpanCorruption sc(span_options());
  std::mt19937_64 rng(11);
  int64_t noise = 0, total = 0, spans = 0;
  for (int i = 0; i < 2000; ++i) {
    const int64_t len = sc.chunk_length();
    auto mask = sc.noise_mask(len, rng);
    ASSERT_EQ(static_cast<int64_t>(mask.size()), len);
    EXPECT_FALSE(mask[0]);  // T5: sequences start with non-noise
    for (int64_t k = 0; k < len; ++k) {
      noise += mask[k];
      spans += mask[k] && (k == 0 || !mask[k - 1]);
    }
    total += len;
  }
  EXPECT_NEAR(static_cast<double>(noise) / total, 0.15, 0.01);
  EXPECT_NEAR(static_cast<double>(noise) / spans, 3.0, 0.3);
}

TEST(SpanCorruption, SentinelsOrderedAndInterleaveBackExactly) {
  auto o = span_options();
  SpanCorruption sc(o);
  std::mt19937_64 rng(12);
  std::vector<Example> examples;
  sc.make_examples({token_range(1000), {}}, rng, examples);
  ASSERT_GT(examples.size(), 5u);
  std::vector<int32_t> rebuilt;
  for (const auto& ex : examples) {
    EXPECT_LE(static_cast<int64_t>(ex.inputs.size()), o.input_length);
    EXPECT_LE(static_cast<int64_t>(ex.targets.size()), o.target_length);
    EXPECT_EQ(ex.inputs.back(), 1);
    EXPECT_EQ(ex.targets.back(), 1);
    // Sentinels: <extra_id_0>, <extra_id_1>, ... in order, same sequence in inputs and targets.
    std::vector<int32_t> s_in, s_tgt;
    for (auto t : ex.inputs) if (t >= 9900) s_in.push_back(t);
    for (auto t : ex.targets) if (t >= 9900) s_tgt.push_back(t);
    EXPECT_EQ(s_in, s_tgt);
    for (size_t i = 0; i < s_in.size(); ++i) EXPECT_EQ(s_in[i], 9999 - static_cast<int32_t>(i));
    // Replace each sentinel in the inputs by the span that follows it in the targets.
    size_t tp = 0;
    for (size_t i = 0; i + 1 < ex.inputs.size(); ++i) {
      if (ex.inputs[i] < 9900) {
        rebuilt.push_back(ex.inputs[i]);
        continue;
      }
      while (ex.targets[tp] != ex.inputs[i]) ++tp;
      for (++tp; tp < ex.targets.size() && ex.targets[tp] < 9900 && ex.targets[tp] != 1; ++tp) rebuilt.push_back(ex.targets[tp]);
    }
  }
  EXPECT_EQ(rebuilt, token_range(1000));
}

TEST(SpanCorruption, TooFewSentinelsIsAConfigError) {
  auto o = span_options();
  o.num_sentinels = 2;
  EXPECT_THROW(SpanCorruption sc(o), ConfigError);
  EXPECT_THROW(make_objective("mlm", o), ConfigError);
}

TEST(Objectives, PairsAndPrefixLm) {
  ObjectiveOptions o;
  o.input_length = 5;
  o.target_length = 4;
  std::mt19937_64 rng(1);
  std::vector<Example> ex;
  Seq2SeqPairs(o).make_examples({{10, 11, 12, 13, 14, 15}, {20, 21}}, rng, ex);
  ASSERT_EQ(ex.size(), 1u);
  EXPECT_EQ(ex[0].inputs, (std::vector<int32_t>{10, 11, 12, 13, 1}));
  EXPECT_EQ(ex[0].targets, (std::vector<int32_t>{20, 21, 1}));
  ex.clear();
  PrefixLm(o).make_examples({token_range(7), {}}, rng, ex);  // one chunk of 4 + 3
  ASSERT_EQ(ex.size(), 1u);
  std::vector<int32_t> joined(ex[0].inputs.begin(), ex[0].inputs.end() - 1);
  joined.insert(joined.end(), ex[0].targets.begin(), ex[0].targets.end() - 1);
  EXPECT_EQ(joined, token_range(7));
}

// ---- batching ----

std::shared_ptr<Dataset> small_dataset(uint64_t seed, bool pack = true, bool static_examples = false) {
  std::vector<TokenizedDoc> docs;
  for (int d = 0; d < 20; ++d) docs.push_back({token_range(50 + 13 * d), {}});
  BatchingOptions b;
  b.batch_size = 4;
  b.seed = seed;
  b.pack = pack;
  b.static_examples = static_examples;
  auto o = span_options();
  o.input_length = 32;
  o.target_length = 12;
  return std::make_shared<Dataset>(docs, std::make_shared<SpanCorruption>(o), b);
}

TEST(Batching, CollateShiftsLabelsAndPads) {
  Example a{{5, 6, 1}, {7, 8, 1}}, b{{9, 1}, {3, 1}};
  auto batch = collate({&a, &b}, 0, 0);
  EXPECT_TRUE(torch::equal(batch.input_ids, torch::tensor({{5, 6, 1}, {9, 1, 0}})));
  EXPECT_TRUE(torch::equal(batch.attention_mask, torch::tensor({{1, 1, 1}, {1, 1, 0}})));
  EXPECT_TRUE(torch::equal(batch.labels, torch::tensor({{7, 8, 1}, {3, 1, -100}})));
  EXPECT_TRUE(torch::equal(batch.decoder_input_ids, torch::tensor({{0, 7, 8}, {0, 3, 1}})));
  EXPECT_EQ(batch.target_tokens, 5);
  EXPECT_EQ(batch.input_tokens, 5);
}

TEST(Batching, SameSeedSameBatchesOtherSeedOthers) {
  auto a = small_dataset(1)->make_epoch(0), b = small_dataset(1)->make_epoch(0), c = small_dataset(2)->make_epoch(0);
  ASSERT_EQ(a.batches, b.batches);
  ASSERT_EQ(a.examples.size(), b.examples.size());
  for (size_t i = 0; i < a.examples.size(); ++i) EXPECT_EQ(a.examples[i].inputs, b.examples[i].inputs);
  bool differs = a.examples.size() != c.examples.size();
  for (size_t i = 0; !differs && i < a.examples.size(); ++i) differs = a.examples[i].inputs != c.examples[i].inputs;
  EXPECT_TRUE(differs);
  auto e1 = small_dataset(1)->make_epoch(1);  // every epoch re-draws the noise
  bool epoch_differs = false;
  for (size_t i = 0; i < std::min(a.examples.size(), e1.examples.size()); ++i) epoch_differs |= a.examples[i].inputs != e1.examples[i].inputs;
  EXPECT_TRUE(epoch_differs);
}

TEST(Batching, StaticExamplesRepeatEveryEpochInANewOrder) {
  auto data = small_dataset(1, /*pack=*/true, /*static_examples=*/true);
  const Dataset& ds = *data;
  auto e0 = ds.make_epoch(0), e1 = ds.make_epoch(1), e2 = ds.make_epoch(2);
  ASSERT_EQ(e0.examples.size(), e1.examples.size());
  for (size_t i = 0; i < e0.examples.size(); ++i) {
    EXPECT_EQ(e1.examples[i].inputs, e0.examples[i].inputs);
    EXPECT_EQ(e2.examples[i].targets, e0.examples[i].targets);
  }
  EXPECT_NE(e0.batches, e1.batches);
  EXPECT_NE(e1.batches, e2.batches);
  auto batch = ds.collate_batch(e1, 2);
  EXPECT_EQ(batch.example_ids, e1.batches[2]);
  // Epoch 0 is the same as without static examples: turning it on changes nothing else.
  EXPECT_EQ(e0.batches, small_dataset(1)->make_epoch(0).batches);
}

TEST(Batching, TokenBudgetCapsBatches) {
  std::vector<TokenizedDoc> docs;
  for (int d = 0; d < 10; ++d) docs.push_back({token_range(40), {}});
  BatchingOptions b;
  b.batch_size = 100;
  b.max_batch_tokens = 200;
  ObjectiveOptions o;
  o.input_length = 16;
  o.target_length = 16;
  Dataset ds(docs, std::make_shared<Seq2SeqPairs>(o), b);
  auto e = ds.make_epoch(0);
  for (size_t i = 0; i < e.batches.size(); ++i) {
    auto batch = ds.collate_batch(e, i);
    EXPECT_LE(batch.input_ids.numel() + batch.labels.numel(), 200);
  }
}

TEST(Batching, StreamResumesExactlyWhereItStopped) {
  auto ds = small_dataset(3);
  const int64_t per_epoch = static_cast<int64_t>(ds->make_epoch(0).batches.size());
  std::vector<torch::Tensor> straight;
  DataPosition mid;
  {
    BatchStream s(ds, {}, 3);
    for (int64_t i = 0; i < per_epoch + 3; ++i) {
      auto item = s.next();
      straight.push_back(item.batch.input_ids);
      if (i == per_epoch - 2) mid = item.next;
    }
  }
  BatchStream resumed(ds, mid, 3);
  for (int64_t i = per_epoch - 1; i < per_epoch + 3; ++i) {
    EXPECT_TRUE(torch::equal(resumed.next().batch.input_ids, straight[static_cast<size_t>(i)])) << i;
  }
}

TEST(Batching, LongDocumentsAreEncodedInPiecesWithTheSameIds) {
  // Issue 13, class 1: a document of hundreds of kilobytes is cut at whitespace before SentencePiece
  // (whose memory grows ~100x the text); the ids are those of the whole text.
  test::TempDir dir;
  std::string text;
  for (int i = 0; text.size() < 300000; ++i) text += "The licensee may copy, modify and share the work number " + std::to_string(i) + ". ";
  std::string no_space(200000, 'a');
  no_space += "\xc3\xa9";  // a two-byte character, so a cut must respect UTF-8 boundaries
  no_space += std::string(70000, 'b');
  write_text_atomic(dir.file("long.txt"), text + "\n" + no_space + "\n");
  auto t = Tokenizer::load(test::fixture("switch-tiny-4"));
  CorpusOptions c;
  c.files = {dir.file("long.txt")};
  auto corpus = tokenize_corpus(c, t);
  ASSERT_EQ(corpus.train.size(), 2u);
  EXPECT_EQ(corpus.train[0].text, t.encode(text, /*add_eos=*/false));
  EXPECT_FALSE(corpus.train[1].text.empty());
}

TEST(Batching, PairsBecomeModelTensors) {
  test::TempDir dir;
  write_text_atomic(dir.file("p.tsv"), "The licensee may copy.\tYou may modify.\nFree software.\tThis license.\n");
  auto t = Tokenizer::load(test::fixture("switch-tiny-4"));
  CorpusOptions c;
  c.files = {dir.file("p.tsv")};
  c.format = CorpusFormat::kTsvPairs;
  auto corpus = tokenize_corpus(c, t);
  ASSERT_EQ(corpus.train.size(), 2u);
  ObjectiveOptions o;
  o.input_length = 64;
  o.target_length = 16;
  BatchingOptions b;
  b.shuffle = false;
  Dataset ds(corpus.train, std::make_shared<Seq2SeqPairs>(o), b);
  auto batch = ds.collate_batch(ds.make_epoch(0), 0);
  auto expected = t.encode("The licensee may copy.");
  EXPECT_TRUE(torch::equal(batch.input_ids[0].narrow(0, 0, static_cast<int64_t>(expected.size())),
                           torch::tensor(std::vector<int64_t>(expected.begin(), expected.end()))));
}

// ---- the SOTU corpus fetched at set-up (tools/fetch_data.sh) ----

std::string sotu(const std::string& file) {
  const char* root = std::getenv("DISTILL_DATASETS");
  return std::string(root ? root : "datasets") + "/sotu/" + file;
}

TEST(SlowSotu, TrainedTokenizerRoundTripsWithSentinelsOnTop) {
  ASSERT_TRUE(fs::exists(sotu("train.txt"))) << "run tools/fetch_data.sh (tools/setup.sh does)";
  test::TempDir dir;
  TokenizerTrainOptions o;
  o.inputs = {sotu("train.txt")};
  o.vocab_size = 2000;
  o.num_sentinels = 100;
  o.max_sentences = 20000;
  o.output_dir = dir.file("tok");
  train_tokenizer(o);
  auto t = Tokenizer::load(o.output_dir);
  EXPECT_EQ(t.vocab_size(), 2000);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(t.piece(1999 - i), "<extra_id_" + std::to_string(i) + ">");
  std::ifstream in(sotu("validation.txt"));
  std::string line;
  std::getline(in, line);
  line = line.substr(0, 2000);
  auto ids = t.encode(line);
  EXPECT_EQ(t.decode(std::vector<int64_t>(ids.begin(), ids.end())), line);
}

}  // namespace
}  // namespace distill
