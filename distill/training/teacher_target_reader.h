// The file of the teacher's top-k soft targets (distillation.teacher_cache_disk): its layout and
// its reader. Reading needs no model (tests/fuzz runs this reader on any bytes); writing the file
// runs the teacher (teacher_target_file.h).
//
// Layout: "DSTLSTG1", u64 header length, the header (JSON), zero padding to 8; u64 entry count
// N, then N entries {u64 offset, u32 positions L, u32 present} indexed by example id; then each
// example's ids (u16 when the vocabulary fits, else i32) [L, k], probabilities f32 [L, k] and
// remaining mass f32 [L]. With k = 32 and V <= 65536: 196 bytes per target token.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "data/batching.h"
#include "distill/training/soft_target_source.h"

namespace distill {

namespace teacher_target_format {
constexpr char kMagic[8] = {'D', 'S', 'T', 'L', 'S', 'T', 'G', '1'};
constexpr uint64_t kMaxHeader = 1 << 20;
inline uint64_t padded8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }
struct Entry {
  uint64_t offset;     // of the record's ids, from the file's start (4-aligned)
  uint32_t positions;  // L, the example's real target positions
  uint32_t present;    // 0: the example was not met
};
static_assert(sizeof(Entry) == 16, "the table's entries are 16 bytes on disk");
}  // namespace teacher_target_format

class TeacherTargetReader {
 public:
  // Maps `path`. Throws InputError naming the file when it is not such a file, is damaged (every
  // offset and length is checked against its size), or its header differs from `expected` (naming
  // the first field that differs: a stale file) or lacks k, vocab_size or a positive temperature.
  static std::unique_ptr<TeacherTargetReader> open(const std::string& path, const nlohmann::json& expected);
  ~TeacherTargetReader();
  TeacherTargetReader(const TeacherTargetReader&) = delete;
  TeacherTargetReader& operator=(const TeacherTargetReader&) = delete;

  // The targets [B, T, k] of `batch` when the file holds every example of it at its length, else
  // nothing. Checks the values it reads (ids in the vocabulary, probabilities and remaining mass
  // in [0, 1]): InputError naming the file and example.
  std::optional<SoftTargets> stored(const Batch& batch) const;

  const std::string& path() const { return path_; }
  const nlohmann::json& header() const { return header_; }
  int64_t k() const { return k_; }
  double temperature() const { return temperature_; }  // what the teacher's logits were divided by
  int64_t examples() const { return examples_; }  // records present
  uint64_t bytes() const { return size_; }

 private:
  using Entry = teacher_target_format::Entry;
  TeacherTargetReader() = default;
  const Entry* entry(uint32_t id) const;

  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  nlohmann::json header_;
  int64_t k_ = 0;
  double temperature_ = 1.0;
  int64_t vocab_size_ = 0;  // every stored id is below it (checked as the targets are read)
  bool wide_ids_ = false;   // i32 ids (vocabulary above 65536)
  uint64_t entries_ = 0;
  const uint8_t* table_ = nullptr;
  int64_t examples_ = 0;
};

}  // namespace distill
