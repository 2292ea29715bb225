#include "distill/pipeline/run_data.h"

#include <spdlog/spdlog.h>

#include <filesystem>

#include "data/objectives.h"
#include "distill/pipeline/stages.h"
#include "distill/process/distributed.h"
#include "models/errors.h"

namespace distill {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

ObjectiveOptions run_objective_options(const RunConfig& c, const Tokenizer& t) {
  ObjectiveOptions o = objective_options(t, c.data.input_length, c.data.target_length);
  o.noise_density = c.data.noise_density;
  o.mean_span_length = c.data.mean_span_length;
  return o;
}

// What a tokenizer trained here learns from: the training corpus, after the pre-training corpus
// when there is one (so the task's own pieces, phonemes say, are in the vocabulary too).
std::vector<std::string> tokenizer_files(const RunConfig& c) {
  std::vector<std::string> files = pretrains(c) ? c.pretrain.data.train.files : std::vector<std::string>{};
  files.insert(files.end(), c.data.train.files.begin(), c.data.train.files.end());
  return files;
}

}  // namespace

std::string trained_tokenizer_dir(const RunConfig& c) {
  if (c.stages_dir.empty()) return (fs::path(c.output_dir) / "tokenizer").string();
  json key = run_config_json(c)["data"]["tokenizer"];
  key.erase("path");
  json files = json::array();
  for (const auto& f : tokenizer_files(c)) files.push_back(file_hash(f));
  key["train_files"] = files;
  return (fs::path(c.stages_dir) / ("tokenizer-" + fingerprint_hash(key))).string();
}

CorpusOptions corpus_options(const CorpusConfig& c) {
  CorpusOptions o;
  o.files = c.files;
  o.format = parse_corpus_format(c.format);
  o.text_field = c.text_field;
  o.input_field = c.input_field;
  o.target_field = c.target_field;
  o.blank_line_documents = c.blank_line_documents;
  return o;
}

bool pretrains(const RunConfig& c) { return c.pretrain.steps > 0; }

uint64_t data_seed(const RunConfig& c) { return c.data.seed ? static_cast<uint64_t>(*c.data.seed) : c.seed; }

json data_fingerprint(const RunConfig& c, const Tokenizer& t) {
  json j = run_config_json(c)["data"];
  for (const char* k : {"validation", "eval_batches", "tokenizer"}) j.erase(k);
  if (!c.data.validation.files.empty()) j.erase("validation_fraction");
  j["seed"] = data_seed(c);
  j["tokenizer"] = file_hash(t.model_file());
  json files = json::array();
  for (const auto& f : c.data.train.files) files.push_back(file_hash(f));
  j["train"]["files"] = files;
  return j;
}

Tokenizer resolve_tokenizer(const RunConfig& c) {
  if (!c.data.tokenizer.path.empty()) return Tokenizer::load(c.data.tokenizer.path);
  for (const std::string& from : {c.teacher.init_from, c.baseline.init_from}) {  // the checkpoint's own
    if (from.empty()) continue;
    if (fs::exists(fs::path(from) / "spiece.model")) return Tokenizer::load(from);
    throw ConfigError(from + " has no spiece.model: set data.tokenizer.path to its tokenizer");
  }
  if (!c.teacher.path.empty()) {
    if (fs::exists(fs::path(c.teacher.path) / "spiece.model")) return Tokenizer::load(c.teacher.path);
    throw ConfigError("teacher " + c.teacher.path + " has no spiece.model: set data.tokenizer.path to its tokenizer");
  }
  const std::string dir = trained_tokenizer_dir(c);
  if (!is_writer()) {  // rank 0 trains it; the others wait, then load it
    world()->barrier();
  } else if (!fs::exists(fs::path(dir) / "spiece.model")) {
    spdlog::info("training a {}-id SentencePiece tokenizer on {} file(s) into {}", c.data.tokenizer.vocab_size,
                 tokenizer_files(c).size(), dir);
    TokenizerTrainOptions o;
    o.inputs = tokenizer_files(c);
    o.vocab_size = c.data.tokenizer.vocab_size;
    o.num_sentinels = c.data.tokenizer.sentinels;
    o.max_sentences = c.data.tokenizer.max_sentences;
    o.threads = c.threads > 0 ? c.threads : 2;
    o.output_dir = dir;
    train_tokenizer(o);
  }
  if (Collective* w = world(); w && w->is_root()) w->barrier();
  return Tokenizer::load(dir);
}

PreparedData prepare_data(const RunConfig& c, Tokenizer tokenizer, bool quiet) {
  PreparedData d{std::move(tokenizer), nullptr, {}, {}, 0, 0, 0, {}, {}};
  const auto& t = d.tokenizer;
  for (const char* f : {"spiece.model", "tokenizer_config.json"}) {
    auto p = fs::path(t.model_file()).parent_path() / f;
    if (fs::exists(p)) d.tokenizer_files.push_back(p.string());
  }
  const bool split = c.data.validation.files.empty();
  const uint64_t seed = data_seed(c);
  auto train = tokenize_corpus(corpus_options(c.data.train), t, split ? c.data.validation_fraction : 0.0, seed, 2);
  d.stats = train.stats;
  std::vector<TokenizedDoc> validation = std::move(train.validation);
  if (!split) validation = tokenize_corpus(corpus_options(c.data.validation), t).train;
  if (validation.empty()) throw InputError("the validation split is empty: raise data.validation_fraction or give data.validation.files");
  d.train_documents = static_cast<int64_t>(train.train.size());
  d.validation_documents = static_cast<int64_t>(validation.size());
  d.train_tokens = train.tokens;

  auto objective = std::shared_ptr<const Objective>(make_objective(c.data.objective, run_objective_options(c, t)));
  BatchingOptions b;
  b.batch_size = c.data.batch_size;
  b.max_batch_tokens = c.data.max_batch_tokens;
  b.pack = c.data.pack;
  b.static_examples = c.data.static_examples;
  b.seed = seed;
  b.pad_id = t.pad_id();
  b.decoder_start_id = t.pad_id();
  d.train = std::make_shared<Dataset>(std::move(train.train), objective, b);

  // Evaluation: one fixed epoch of the validation documents, in order, the same for every model.
  BatchingOptions eb = b;
  eb.shuffle = false;
  eb.seed = seed + 1;
  Dataset eval(std::move(validation), objective, eb);
  auto epoch = eval.make_epoch(0);
  const size_t n = c.data.eval_batches > 0 ? std::min<size_t>(epoch.batches.size(), static_cast<size_t>(c.data.eval_batches))
                                           : epoch.batches.size();
  for (size_t i = 0; i < n; ++i) d.eval.push_back(eval.collate_batch(epoch, i));
  d.fingerprint = data_fingerprint(c, t);
  if (!quiet)
    spdlog::info("data: {} training documents ({} tokens, {} lines not UTF-8 skipped), {} validation documents, {} eval batches",
               d.train_documents, d.train_tokens, d.stats.skipped_invalid_utf8, d.validation_documents, d.eval.size());
  return d;
}

}  // namespace distill
