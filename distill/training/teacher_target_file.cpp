#include "distill/training/teacher_target_file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "distill/evaluation/evaluate.h"
#include "models/errors.h"

namespace distill {
namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace teacher_target_format;

std::unique_ptr<TeacherTargetFile> TeacherTargetFile::open(const std::string& path, const json& expected) {
  return std::unique_ptr<TeacherTargetFile>(new TeacherTargetFile(TeacherTargetReader::open(path, expected)));
}

SoftTargets TeacherTargetFile::targets(const Batch& batch, const std::function<at::Tensor()>& teacher_logits) {
  if (auto t = reader_->stored(batch)) {
    ++hits_;
    return std::move(*t);
  }
  ++misses_;  // outside the batches the file was made for: the teacher runs
  return top_k_soft_targets(teacher_logits(), reader_->k(), reader_->temperature());
}

std::unique_ptr<TeacherTargetFile> TeacherTargetFile::open_or_build(const std::string& path, const json& expected,
                                                                    const std::function<void()>& build) {
  const std::string lock_path = path + ".lock";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(lock_path + ": cannot create: " + std::strerror(errno));
  struct Unlock {
    int fd;
    ~Unlock() { ::close(fd); }  // closing releases the flock
  } unlock{fd};
  while (::flock(fd, LOCK_EX) != 0) {
    if (errno != EINTR) throw Error(lock_path + ": cannot lock: " + std::strerror(errno));
  }
  if (fs::exists(path)) {
    try {
      return open(path, expected);
    } catch (const InputError& e) {
      spdlog::warn("{}; computing them again", e.what());
    }
  }
  build();
  return open(path, expected);
}

double TeacherTargetFile::build(const std::string& path, const json& header, Seq2SeqModel& teacher,
                                std::shared_ptr<const Dataset> data, DataPosition start, int64_t batches, int64_t vocab_size) {
  const int64_t k = std::min<int64_t>(header.at("k").get<int64_t>(), vocab_size);
  const double temperature = header.at("temperature").get<double>();
  const bool wide = vocab_size > 65536;
  std::vector<ExampleTargets> records;
  int64_t positions = 0;
  {
    BatchStream stream(std::move(data), start);
    c10::InferenceMode frozen;
    for (int64_t i = 0; i < batches; ++i) {
      const Batch b = stream.next().batch;
      auto rows = split_rows(top_k_soft_targets(teacher->forward(model_inputs(b)).logits, k, temperature), b.labels);
      for (size_t row = 0; row < b.example_ids.size(); ++row) {
        const auto id = b.example_ids[row];
        if (id >= records.size()) records.resize(id + 1);
        // The first batch an example was met in; an example without targets is not stored.
        if (!records[id].rest.empty() || rows[row].rest.empty()) continue;
        positions += static_cast<int64_t>(rows[row].rest.size());
        records[id] = std::move(rows[row]);
      }
    }
  }
  json h = header;
  h["k"] = k;
  h["vocab_size"] = vocab_size;
  const std::string text = h.dump();
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(tmp + ": cannot write the teacher's soft targets");
    const auto put = [&](const void* p, size_t n) { out.write(static_cast<const char*>(p), static_cast<std::streamsize>(n)); };
    const uint64_t header_len = text.size(), entries = records.size();
    put(kMagic, 8);
    put(&header_len, 8);
    put(text.data(), text.size());
    const std::string zeros(8, '\0');
    put(zeros.data(), padded8(header_len) - header_len);
    put(&entries, 8);
    uint64_t offset = 16 + padded8(header_len) + 8 + entries * sizeof(Entry);
    const uint64_t id_bytes = wide ? 4 : 2;
    for (const auto& r : records) {
      Entry e{0, 0, 0};
      if (!r.rest.empty()) {
        e = {offset, static_cast<uint32_t>(r.rest.size()), 1};
        const uint64_t n = r.ids.size();
        offset += n * id_bytes;
        offset = (offset + 3) & ~uint64_t{3};  // floats 4-aligned
        offset += n * 4 + r.rest.size() * 4;
      }
      put(&e, sizeof(e));
    }
    for (const auto& r : records) {
      if (r.rest.empty()) continue;
      if (wide) {
        put(r.ids.data(), r.ids.size() * 4);
      } else {
        std::vector<uint16_t> narrow(r.ids.begin(), r.ids.end());
        put(narrow.data(), narrow.size() * 2);
        put(zeros.data(), (4 - (narrow.size() * 2) % 4) % 4);
      }
      put(r.probs.data(), r.probs.size() * 4);
      put(r.rest.data(), r.rest.size() * 4);
    }
    out.flush();
    if (!out) {
      fs::remove(tmp);
      throw Error(tmp + ": writing the teacher's soft targets failed (disk full?)");
    }
  }
  fs::rename(tmp, path);
  return positions > 0 ? static_cast<double>(fs::file_size(path)) / static_cast<double>(positions) : 0.0;
}

}  // namespace distill
