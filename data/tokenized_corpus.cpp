#include "data/tokenized_corpus.h"

#include <thread>

namespace distill {

TokenizedCorpus tokenize_corpus(const CorpusOptions& corpus, const Tokenizer& tokenizer, double validation_fraction,
                                uint64_t split_seed, int threads) {
  TokenizedCorpus out;
  std::vector<Document> pending;
  uint64_t index = 0;
  auto flush = [&] {
    std::vector<TokenizedDoc> done(pending.size());
    auto work = [&](size_t begin, size_t step) {
      for (size_t i = begin; i < pending.size(); i += step) {
        done[i].text = tokenizer.encode(pending[i].text, /*add_eos=*/false);
        if (!pending[i].target.empty()) done[i].target = tokenizer.encode(pending[i].target, false);
      }
    };
    const size_t n = static_cast<size_t>(std::max(1, threads));
    std::vector<std::thread> pool;
    for (size_t t = 1; t < n; ++t) pool.emplace_back(work, t, n);
    work(0, n);
    for (auto& t : pool) t.join();
    for (auto& d : done) {
      out.tokens += static_cast<int64_t>(d.text.size() + d.target.size());
      auto& split = validation_fraction > 0 && is_validation_document(index, split_seed, validation_fraction)
                        ? out.validation : out.train;
      split.push_back(std::move(d));
      ++index;
    }
    pending.clear();
  };
  out.stats = read_corpus(corpus, [&](Document&& d) {
    pending.push_back(std::move(d));
    if (pending.size() == 64) flush();
  });
  flush();
  return out;
}

ObjectiveOptions objective_options(const Tokenizer& tokenizer, int64_t input_length, int64_t target_length) {
  ObjectiveOptions o;
  o.input_length = input_length;
  o.target_length = target_length;
  o.eos_id = tokenizer.eos_id();
  o.vocab_size = tokenizer.vocab_size();
  o.num_sentinels = tokenizer.num_sentinels();
  return o;
}

}  // namespace distill
