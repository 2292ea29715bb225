#include "distill/training/teacher_target_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <torch/torch.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "models/errors.h"

namespace distill {
using json = nlohmann::json;

using namespace teacher_target_format;

namespace {

// The first field where `got` differs from `want`, as "key: got -> want"; empty when equal.
std::string first_difference(const json& got, const json& want) {
  for (auto it = want.begin(); it != want.end(); ++it) {
    if (!got.contains(it.key())) return it.key() + ": missing";
    if (got[it.key()] != it.value()) return it.key() + ": " + got[it.key()].dump() + " in the file, " + it.value().dump() + " now";
  }
  for (auto it = got.begin(); it != got.end(); ++it)
    if (!want.contains(it.key())) return it.key() + ": not expected";
  return "";
}

}  // namespace

TeacherTargetReader::~TeacherTargetReader() {
  if (data_) munmap(const_cast<uint8_t*>(data_), size_);
}

std::unique_ptr<TeacherTargetReader> TeacherTargetReader::open(const std::string& path, const json& expected) {
  const auto fail = [&](const std::string& what) { return InputError(path + ": " + what); };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw fail(std::string("cannot open the teacher's soft targets: ") + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw fail("not a regular file");
  }
  std::unique_ptr<TeacherTargetReader> f(new TeacherTargetReader());
  f->path_ = path;
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ < 16) {
    ::close(fd);
    throw fail("too short for a soft-target file (truncated?)");
  }
  void* p = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw fail(std::string("cannot map: ") + std::strerror(errno));
  f->data_ = static_cast<const uint8_t*>(p);
  if (std::memcmp(f->data_, kMagic, 8) != 0) throw fail("not a distill soft-target file (bad magic)");
  uint64_t header_len = 0;
  std::memcpy(&header_len, f->data_ + 8, 8);
  if (header_len > kMaxHeader || 16 + padded8(header_len) + 8 > f->size_) throw fail("header length out of range (damaged?)");
  f->header_ = json::parse(f->data_ + 16, f->data_ + 16 + header_len, nullptr, /*allow_exceptions=*/false);
  if (!f->header_.is_object()) throw fail("header is not JSON (damaged?)");
  if (const auto diff = first_difference(f->header_, expected); !diff.empty()) {
    throw fail("stale soft targets, made for other settings (" + diff + ")");
  }
  const json& t = f->header_["temperature"];
  if (!f->header_["k"].is_number_integer() || f->header_["k"].get<int64_t>() < 1 || !f->header_["vocab_size"].is_number_integer() ||
      !t.is_number() || !(t.get<double>() > 0.0) || !std::isfinite(t.get<double>())) {
    throw fail("header lacks k, vocab_size or a positive temperature (damaged?)");
  }
  f->temperature_ = t.get<double>();
  f->k_ = f->header_["k"].get<int64_t>();
  if (f->k_ > (1 << 20)) throw fail("k out of range (damaged?)");
  f->vocab_size_ = f->header_["vocab_size"].get<int64_t>();
  f->wide_ids_ = f->vocab_size_ > 65536;
  const uint64_t table_at = 16 + padded8(header_len);
  std::memcpy(&f->entries_, f->data_ + table_at, 8);
  if (f->entries_ > (f->size_ - table_at - 8) / sizeof(Entry)) throw fail("entry table larger than the file (truncated?)");
  f->table_ = f->data_ + table_at + 8;
  const uint64_t payload_at = table_at + 8 + f->entries_ * sizeof(Entry);
  const uint64_t id_bytes = f->wide_ids_ ? 4 : 2;
  for (uint64_t i = 0; i < f->entries_; ++i) {
    Entry e;
    std::memcpy(&e, f->table_ + i * sizeof(Entry), sizeof(Entry));
    if (!e.present) continue;
    const uint64_t L = e.positions, k = static_cast<uint64_t>(f->k_);
    const uint64_t bytes = ((L * k * id_bytes + 3) & ~uint64_t{3}) + L * k * 4 + L * 4;
    if (e.offset < payload_at || e.offset % 4 != 0 || e.offset > f->size_ || bytes > f->size_ - e.offset || L > (1u << 24)) {
      throw fail("example " + std::to_string(i) + "'s record lies outside the file (damaged?)");
    }
    ++f->examples_;
  }
  return f;
}

const TeacherTargetReader::Entry* TeacherTargetReader::entry(uint32_t id) const {
  if (id >= entries_) return nullptr;
  return reinterpret_cast<const Entry*>(table_ + static_cast<uint64_t>(id) * sizeof(Entry));
}

std::optional<SoftTargets> TeacherTargetReader::stored(const Batch& batch) const {
  const int64_t B = batch.labels.size(0), T = batch.labels.size(1), k = k_;
  if (static_cast<int64_t>(batch.example_ids.size()) != B) throw Error(path_ + ": the batch does not carry its example ids");
  const auto lengths = target_lengths(batch.labels);
  bool complete = true;
  for (int64_t row = 0; row < B; ++row) {
    const Entry* e = entry(batch.example_ids[static_cast<size_t>(row)]);
    complete = complete && e && e->present && static_cast<int64_t>(e->positions) == lengths[static_cast<size_t>(row)];
  }
  if (!complete) return std::nullopt;  // outside the batches the file was made for
  SoftTargets t = zero_targets(B, T, k);
  auto* ids = t.ids.data_ptr<int64_t>();
  auto* probs = t.probs.data_ptr<float>();
  auto* rest = t.rest.data_ptr<float>();
  for (int64_t row = 0; row < B; ++row) {
    const uint32_t example = batch.example_ids[static_cast<size_t>(row)];
    // A damaged record would index outside the logits or turn the loss into NaN far from here.
    const auto damaged = [&](const std::string& what) {
      return InputError(path_ + ": example " + std::to_string(example) + "'s soft targets " + what + " (damaged?)");
    };
    Entry e;
    std::memcpy(&e, entry(example), sizeof(Entry));
    const int64_t n = static_cast<int64_t>(e.positions) * k;
    const uint8_t* p = data_ + e.offset;
    for (int64_t j = 0; j < n; ++j) {
      int64_t id;
      if (wide_ids_) {
        int32_t v;
        std::memcpy(&v, p + 4 * j, 4);
        id = v;
      } else {
        uint16_t v;
        std::memcpy(&v, p + 2 * j, 2);
        id = v;
      }
      if (id < 0 || id >= vocab_size_) throw damaged("hold token id " + std::to_string(id) + ", outside the vocabulary");
      ids[row * T * k + j] = id;
    }
    p = data_ + ((e.offset + static_cast<uint64_t>(n) * (wide_ids_ ? 4 : 2) + 3) & ~uint64_t{3});  // floats 4-aligned
    float* pr = probs + row * T * k;
    float* rr = rest + row * T;
    std::memcpy(pr, p, static_cast<size_t>(n) * 4);
    std::memcpy(rr, p + 4 * n, e.positions * 4);
    const auto probability = [](float x) { return x >= 0.0f && x <= 1.0f; };  // false for NaN
    for (int64_t j = 0; j < n; ++j) {
      if (!probability(pr[j])) throw damaged("hold a probability of " + std::to_string(pr[j]));
    }
    for (uint32_t j = 0; j < e.positions; ++j) {
      if (!probability(rr[j])) throw damaged("hold a remaining mass of " + std::to_string(rr[j]));
    }
  }
  return t;
}

}  // namespace distill
