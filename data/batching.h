// From examples to model tensors: epochs of shuffled, padded batches, made deterministically from
// a seed, and a background thread that keeps a bounded queue of them ready.
#pragma once

#include <ATen/Tensor.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "data/objectives.h"

namespace distill {

struct Batch {
  at::Tensor input_ids;          // [B, S] int64, padded with pad_id
  at::Tensor attention_mask;     // [B, S] int64, 1 on real tokens
  at::Tensor decoder_input_ids;  // [B, T] int64 = labels shifted right, starting with decoder_start
  at::Tensor labels;             // [B, T] int64, -100 on padding
  int64_t input_tokens = 0;      // real encoder tokens
  int64_t target_tokens = 0;     // labels != -100
  std::vector<uint32_t> example_ids;  // row i is example example_ids[i] of its epoch
};

// Rank `rank`'s share of a global batch among `world` ranks: rows [B*rank/world, B*(rank+1)/world),
// padded as the whole batch is (padding changes no loss). Empty when B < world and none falls to it.
Batch shard_rows(const Batch& batch, int64_t rank, int64_t world);

// Pads to the longest example in the batch.
Batch collate(const std::vector<const Example*>& examples, int64_t pad_id, int64_t decoder_start_id);

struct BatchingOptions {
  int64_t batch_size = 32;       // examples per batch, at most
  int64_t max_batch_tokens = 0;  // cap on padded tokens per batch, B * (S + T); 0 = no cap
  bool shuffle = true;           // shuffle documents and examples each epoch
  bool pack = true;              // concatenate documents before chunking (T5 pre-training); not for pairs
  uint64_t seed = 0;             // every random choice derives from (seed, epoch)
  bool static_examples = false;  // draw the examples (document order, corruption) once, from epoch 0's
                                 // seed; later epochs only reshuffle them. Example ids then name the
                                 // same example in every epoch, which the teacher cache needs.
  int64_t pad_id = 0;            // padding id
  int64_t decoder_start_id = 0;  // first decoder input
};

// Where a stream is: the next batch to produce. Saved in checkpoints to resume exactly.
struct DataPosition {
  int64_t epoch = 0;
  int64_t batch = 0;
};

class Dataset {
 public:
  Dataset(std::vector<TokenizedDoc> docs, std::shared_ptr<const Objective> objective, BatchingOptions options);

  // The examples of `epoch`, grouped into batches (indices into `examples`). With static_examples,
  // `examples` is the same list in every epoch.
  struct Epoch {
    std::vector<Example> examples;
    std::vector<std::vector<uint32_t>> batches;
  };
  Epoch make_epoch(int64_t epoch) const;
  Batch collate_batch(const Epoch& epoch, size_t index) const;

  int64_t num_documents() const { return static_cast<int64_t>(docs_.size()); }
  int64_t num_tokens() const { return tokens_; }
  const BatchingOptions& options() const { return options_; }

 private:
  std::vector<TokenizedDoc> docs_;
  std::shared_ptr<const Objective> objective_;
  BatchingOptions options_;
  int64_t tokens_ = 0;
};

// Produces batches from `start` onwards on a background thread, keeping at most `capacity`
// ready, so the trainer never waits on tokenization or collation.
class BatchStream {
 public:
  BatchStream(std::shared_ptr<const Dataset> dataset, DataPosition start, size_t capacity = 8);
  ~BatchStream();
  BatchStream(const BatchStream&) = delete;
  BatchStream& operator=(const BatchStream&) = delete;

  struct Item {
    Batch batch;
    DataPosition next;  // position after this batch: resume from here
  };
  Item next();  // blocks until a batch is ready; rethrows the producer's error

 private:
  void produce(DataPosition start);

  std::shared_ptr<const Dataset> dataset_;
  size_t capacity_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::exception_ptr error_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace distill
