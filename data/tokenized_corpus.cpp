#include "data/tokenized_corpus.h"

#include <algorithm>
#include <exception>
#include <string_view>
#include <thread>

namespace distill {

namespace {

// SentencePiece's memory grows ~100x a text's size, so a long document is encoded in pieces cut
// at whitespace, where they change nothing (pieces never span a word boundary); a piece without
// whitespace is cut at a UTF-8 character boundary.
constexpr size_t kEncodeChunkBytes = 1 << 16;

std::vector<int32_t> encode_in_pieces(const Tokenizer& tokenizer, std::string_view text) {
  if (text.size() <= kEncodeChunkBytes) return tokenizer.encode(text, /*add_eos=*/false);
  std::vector<int32_t> ids;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = std::min(text.size(), start + kEncodeChunkBytes);
    if (end < text.size()) {
      size_t cut = end;
      while (cut > start && text[cut] != ' ' && text[cut] != '\n' && text[cut] != '\t') --cut;
      if (cut > start) {
        end = cut;
      } else {
        while (end > start + 1 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
      }
    }
    const auto piece = tokenizer.encode(text.substr(start, end - start), /*add_eos=*/false);
    ids.insert(ids.end(), piece.begin(), piece.end());
    start = end;
  }
  return ids;
}

}  // namespace

TokenizedCorpus tokenize_corpus(const CorpusOptions& corpus, const Tokenizer& tokenizer, double validation_fraction,
                                uint64_t split_seed, int threads) {
  TokenizedCorpus out;
  std::vector<Document> pending;
  uint64_t index = 0;
  auto flush = [&] {
    std::vector<TokenizedDoc> done(pending.size());
    const size_t n = static_cast<size_t>(std::max(1, threads));
    std::vector<std::exception_ptr> failed(n);  // a worker's error, rethrown here after every join
    auto work = [&](size_t begin, size_t step) {
      try {
        for (size_t i = begin; i < pending.size(); i += step) {
          done[i].text = encode_in_pieces(tokenizer, pending[i].text);
          if (!pending[i].target.empty()) done[i].target = encode_in_pieces(tokenizer, pending[i].target);
        }
      } catch (...) {
        failed[begin] = std::current_exception();
      }
    };
    std::vector<std::thread> pool;
    for (size_t t = 1; t < n; ++t) pool.emplace_back(work, t, n);
    work(0, n);
    for (auto& t : pool) t.join();
    for (const auto& e : failed)
      if (e) std::rethrow_exception(e);
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
