// Any bytes as the teacher's soft-target file (distillation.teacher_cache_disk): a typed InputError,
// or a file whose records a batch can read (each value checked) without touching memory outside it.
// The header is taken from the input itself, so inputs get past the staleness check to the layout.
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cstring>

#include "distill/training/teacher_target_reader.h"
#include "models/errors.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

// A batch of the given examples, each with `length` real target positions.
distill::Batch batch_of(const std::vector<std::pair<uint32_t, int64_t>>& rows) {
  int64_t T = 1;
  for (const auto& r : rows) T = std::max(T, r.second);
  distill::Batch b;
  b.labels = torch::full({static_cast<int64_t>(rows.size()), T}, -100, torch::kLong);  // [B, T]
  for (size_t i = 0; i < rows.size(); ++i) {
    b.labels[static_cast<int64_t>(i)].narrow(0, 0, rows[i].second).fill_(1);
    b.example_ids.push_back(rows[i].first);
  }
  return b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = distill::fuzz::scratch_file(data, size, "targets.bin");
  nlohmann::json expected = nlohmann::json::object();
  uint64_t header_len = 0;
  if (size >= 16) std::memcpy(&header_len, data + 8, 8);
  if (size >= 16 && header_len <= size - 16) {
    auto h = nlohmann::json::parse(data + 16, data + 16 + header_len, nullptr, /*allow_exceptions=*/false);
    if (h.is_object()) expected = h;
  }
  try {
    auto file = distill::TeacherTargetReader::open(path, expected);
    // The records the table says are present (as the reader would find them), at their lengths,
    // four to a batch; and one example past the table, which the file does not hold.
    using distill::teacher_target_format::Entry;
    const uint64_t table_at = 16 + distill::teacher_target_format::padded8(header_len);
    uint64_t entries = 0;
    std::memcpy(&entries, data + table_at, 8);
    const uint64_t listed = std::min<uint64_t>(entries, 64);
    std::vector<std::pair<uint32_t, int64_t>> rows;
    for (uint64_t i = 0; i < listed; ++i) {
      Entry e;
      std::memcpy(&e, data + table_at + 8 + sizeof(Entry) * i, sizeof(Entry));
      if (e.present && e.positions <= 256) rows.emplace_back(static_cast<uint32_t>(i), e.positions);
      if (rows.size() == 4 || (i + 1 == listed && !rows.empty())) {
        try {
          file->stored(batch_of(rows));
        } catch (const distill::InputError&) {
        }
        rows.clear();
      }
    }
    if (file->stored(batch_of({{static_cast<uint32_t>(std::min<uint64_t>(entries, UINT32_MAX)), 1}}))) __builtin_trap();
  } catch (const distill::InputError&) {
  }
  return 0;
}
