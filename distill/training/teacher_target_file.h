// The teacher's top-k soft targets of a student's batches, computed once into a file and
// memory-mapped by every student that trains on those batches with that teacher (a sweep's
// variants, seeds of a train_once teacher), so the teacher runs once per example instead of once
// per student. The header records what the targets depend on (teacher identity and how it is
// run, the data, the batches, k, temperature); a file whose header differs is refused. The
// layout and its reader: teacher_target_reader.h.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "data/batching.h"
#include "distill/training/soft_target_source.h"
#include "distill/training/teacher_target_reader.h"
#include "models/arch/seq2seq.h"

namespace distill {

class TeacherTargetFile : public SoftTargetSource {
 public:
  // TeacherTargetReader::open: InputError naming the file when it is not such a file, is damaged
  // or stale. targets() checks the values it reads (InputError naming the file and example).
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

  // The file's targets of `batch`, or the teacher's top-k of `teacher_logits` when the file does
  // not hold every example of it (a miss).
  SoftTargets targets(const Batch& batch, const std::function<at::Tensor()>& teacher_logits) override;
  int64_t hits() const override { return hits_; }
  int64_t misses() const override { return misses_; }
  int64_t examples() const override { return reader_->examples(); }
  double megabytes() const override { return static_cast<double>(reader_->bytes()) / (1024.0 * 1024.0); }
  const nlohmann::json& header() const { return reader_->header(); }

 private:
  explicit TeacherTargetFile(std::unique_ptr<TeacherTargetReader> reader) : reader_(std::move(reader)) {}
  std::unique_ptr<TeacherTargetReader> reader_;
  int64_t hits_ = 0, misses_ = 0;
};

}  // namespace distill
