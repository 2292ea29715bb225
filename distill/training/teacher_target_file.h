// The teacher's top-k soft targets of a student's batches, computed once into a file and
// memory-mapped by every student that trains on those batches with that teacher (a sweep's
// variants, seeds of a train_once teacher), so the teacher runs once per example instead of once
// per student. The header records what the targets depend on (teacher identity and how it is
// run, the data, the batches, k, temperature); a file whose header differs is refused.
//
// Layout: "DSTLSTG1", u64 header length, the header (JSON), zero padding to 8; u64 entry count
// N, then N entries {u64 offset, u32 positions L, u32 present} indexed by example id; then each
// example's ids (u16 when the vocabulary fits, else i32) [L, k], probabilities f32 [L, k] and
// remaining mass f32 [L]. With k = 32 and V <= 65536: 196 bytes per target token.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "data/batching.h"
#include "distill/training/teacher_cache.h"
#include "models/arch/seq2seq.h"

namespace distill {

class TeacherTargetFile : public SoftTargetSource {
 public:
  // Maps `path`. Throws InputError naming the file when it is not such a file, is damaged (every
  // offset and length is checked against its size), or its header differs from `expected` (naming
  // the first field that differs: a stale file). targets() checks the values it reads (ids in the
  // vocabulary, probabilities in [0, 1]) and throws InputError naming the file and example.
  static std::unique_ptr<TeacherTargetFile> open(const std::string& path, const nlohmann::json& expected);

  // Runs `teacher` over `batches` batches of `data` from `start` and writes the top-k targets of
  // every example met to `path` (atomically: a temporary file renamed). `header` must hold "k"
  // and "temperature". Returns the bytes per target token written.
  static double build(const std::string& path, const nlohmann::json& header, Seq2SeqModel& teacher,
                      std::shared_ptr<const Dataset> data, DataPosition start, int64_t batches, int64_t vocab_size);

  // open(), after `build` wrote the file when it is missing, stale or damaged (logged). Holds an
  // exclusive lock on path.lock meanwhile, so students started side by side build it once.
  static std::unique_ptr<TeacherTargetFile> open_or_build(const std::string& path, const nlohmann::json& expected,
                                                          const std::function<void()>& build);

  ~TeacherTargetFile() override;
  TeacherTargetFile(const TeacherTargetFile&) = delete;
  TeacherTargetFile& operator=(const TeacherTargetFile&) = delete;

  SoftTargets targets(const Batch& batch, const std::function<at::Tensor()>& teacher_logits) override;
  int64_t hits() const override { return hits_; }
  int64_t misses() const override { return misses_; }
  int64_t examples() const override { return examples_; }
  double megabytes() const override { return static_cast<double>(size_) / (1024.0 * 1024.0); }
  const nlohmann::json& header() const { return header_; }

 private:
  TeacherTargetFile() = default;
  struct Entry {
    uint64_t offset;
    uint32_t positions;
    uint32_t present;
  };
  const Entry* entry(uint32_t id) const;

  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  nlohmann::json header_;
  int64_t k_ = 0;
  int64_t vocab_size_ = 0;  // every stored id is below it (checked as the targets are read)
  bool wide_ids_ = false;   // i32 ids (vocabulary above 65536)
  uint64_t entries_ = 0;
  const uint8_t* table_ = nullptr;
  int64_t hits_ = 0, misses_ = 0, examples_ = 0;
};

}  // namespace distill
