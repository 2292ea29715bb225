#include "data/batching.h"

#include <torch/torch.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "models/errors.h"

namespace distill {

Batch collate(const std::vector<const Example*>& examples, int64_t pad_id, int64_t decoder_start_id) {
  const auto B = static_cast<int64_t>(examples.size());
  size_t S = 1, T = 1;
  for (const auto* e : examples) {
    S = std::max(S, e->inputs.size());
    T = std::max(T, e->targets.size());
  }
  auto input_ids = torch::full({B, static_cast<int64_t>(S)}, pad_id, torch::kLong);
  auto mask = torch::zeros({B, static_cast<int64_t>(S)}, torch::kLong);
  auto labels = torch::full({B, static_cast<int64_t>(T)}, -100, torch::kLong);
  auto dec = torch::full({B, static_cast<int64_t>(T)}, pad_id, torch::kLong);
  auto in_a = input_ids.accessor<int64_t, 2>();
  auto m_a = mask.accessor<int64_t, 2>();
  auto l_a = labels.accessor<int64_t, 2>();
  auto d_a = dec.accessor<int64_t, 2>();
  Batch b;
  for (int64_t i = 0; i < B; ++i) {
    const auto& e = *examples[static_cast<size_t>(i)];
    for (size_t s = 0; s < e.inputs.size(); ++s) {
      in_a[i][static_cast<int64_t>(s)] = e.inputs[s];
      m_a[i][static_cast<int64_t>(s)] = 1;
    }
    d_a[i][0] = decoder_start_id;
    for (size_t t = 0; t < e.targets.size(); ++t) {
      l_a[i][static_cast<int64_t>(t)] = e.targets[t];
      if (t + 1 < T) d_a[i][static_cast<int64_t>(t + 1)] = e.targets[t];
    }
    b.input_tokens += static_cast<int64_t>(e.inputs.size());
    b.target_tokens += static_cast<int64_t>(e.targets.size());
  }
  b.input_ids = input_ids;
  b.attention_mask = mask;
  b.decoder_input_ids = dec;
  b.labels = labels;
  return b;
}

Dataset::Dataset(std::vector<TokenizedDoc> docs, std::shared_ptr<const Objective> objective, BatchingOptions options)
    : docs_(std::move(docs)), objective_(std::move(objective)), options_(options) {
  if (options_.batch_size < 1) throw ConfigError("batching: batch_size must be >= 1");
  if (docs_.empty()) throw InputError("dataset: no documents");
  for (const auto& d : docs_) tokens_ += static_cast<int64_t>(d.text.size() + d.target.size());
}

Dataset::Epoch Dataset::make_epoch(int64_t epoch) const {
  auto seeded = [&](int64_t e) {
    std::seed_seq seq{static_cast<uint32_t>(options_.seed), static_cast<uint32_t>(options_.seed >> 32),
                      static_cast<uint32_t>(e)};
    return std::mt19937_64(seq);
  };
  std::mt19937_64 rng = seeded(options_.static_examples ? 0 : epoch);
  std::vector<uint32_t> order(docs_.size());
  std::iota(order.begin(), order.end(), 0u);
  if (options_.shuffle) std::shuffle(order.begin(), order.end(), rng);

  Epoch out;
  const bool pairs = !docs_.front().target.empty();
  if (options_.pack && !pairs) {
    // One stream of every document, cut into full-length chunks by the objective.
    TokenizedDoc stream;
    stream.text.reserve(static_cast<size_t>(tokens_));
    for (auto i : order) stream.text.insert(stream.text.end(), docs_[i].text.begin(), docs_[i].text.end());
    objective_->make_examples(stream, rng, out.examples);
  } else {
    for (auto i : order) objective_->make_examples(docs_[i], rng, out.examples);
  }
  // Static examples: only the order of the examples depends on the epoch.
  if (options_.static_examples && epoch != 0) rng = seeded(epoch);
  std::vector<uint32_t> ex(out.examples.size());
  std::iota(ex.begin(), ex.end(), 0u);
  if (options_.shuffle) std::shuffle(ex.begin(), ex.end(), rng);

  std::vector<uint32_t> current;
  size_t max_in = 0, max_tgt = 0;
  for (auto i : ex) {
    const auto& e = out.examples[i];
    const size_t in = std::max(max_in, e.inputs.size()), tgt = std::max(max_tgt, e.targets.size());
    const bool over_tokens = options_.max_batch_tokens > 0 && !current.empty() &&
                             static_cast<int64_t>((current.size() + 1) * (in + tgt)) > options_.max_batch_tokens;
    if (static_cast<int64_t>(current.size()) == options_.batch_size || over_tokens) {
      out.batches.push_back(std::move(current));
      current.clear();
      max_in = max_tgt = 0;
    }
    current.push_back(i);
    max_in = std::max(max_in, e.inputs.size());
    max_tgt = std::max(max_tgt, e.targets.size());
  }
  if (!current.empty()) out.batches.push_back(std::move(current));
  return out;
}

Batch Dataset::collate_batch(const Epoch& epoch, size_t index) const {
  std::vector<const Example*> ex;
  for (auto i : epoch.batches.at(index)) ex.push_back(&epoch.examples[i]);
  auto b = collate(ex, options_.pad_id, options_.decoder_start_id);
  b.example_ids = epoch.batches[index];
  return b;
}

Batch shard_rows(const Batch& b, int64_t rank, int64_t world) {
  const int64_t B = b.input_ids.size(0), begin = B * rank / world, end = B * (rank + 1) / world;
  Batch s;
  s.input_ids = b.input_ids.slice(0, begin, end);
  s.attention_mask = b.attention_mask.slice(0, begin, end);
  s.decoder_input_ids = b.decoder_input_ids.slice(0, begin, end);
  s.labels = b.labels.slice(0, begin, end);
  s.input_tokens = s.attention_mask.sum().item<int64_t>();
  s.target_tokens = (s.labels != -100).sum().item<int64_t>();
  if (!b.example_ids.empty()) s.example_ids.assign(b.example_ids.begin() + begin, b.example_ids.begin() + end);
  return s;
}

BatchStream::BatchStream(std::shared_ptr<const Dataset> dataset, DataPosition start, size_t capacity)
    : dataset_(std::move(dataset)), capacity_(std::max<size_t>(1, capacity)) {
  thread_ = std::thread([this, start] { produce(start); });
}

BatchStream::~BatchStream() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void BatchStream::produce(DataPosition pos) {
  try {
    while (true) {
      auto epoch = dataset_->make_epoch(pos.epoch);
      if (epoch.batches.empty()) throw InputError("dataset: an epoch produced no batch");
      for (size_t i = static_cast<size_t>(pos.batch); i < epoch.batches.size(); ++i) {
        Item item{dataset_->collate_batch(epoch, i), {pos.epoch, static_cast<int64_t>(i) + 1}};
        if (i + 1 == epoch.batches.size()) item.next = {pos.epoch + 1, 0};
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return stop_ || queue_.size() < capacity_; });
        if (stop_) return;
        queue_.push_back(std::move(item));
        cv_.notify_all();
      }
      pos = {pos.epoch + 1, 0};
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::current_exception();
    cv_.notify_all();
  }
}

BatchStream::Item BatchStream::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [&] { return !queue_.empty() || error_; });
  if (queue_.empty() && error_) std::rethrow_exception(error_);
  Item item = std::move(queue_.front());
  queue_.pop_front();
  cv_.notify_all();
  return item;
}

}  // namespace distill
