// A file opened for positioned reads, its size known: the checkpoint readers' one way to read.
#pragma once

#include <cstdint>
#include <string>

namespace distill {

class ReadOnlyFile {
 public:
  // Throws CheckpointError naming `path` when it cannot be opened or is not a regular file.
  ReadOnlyFile(std::string path, const char* expected_kind);
  ~ReadOnlyFile();
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  // Exactly n bytes at offset, or CheckpointError ("truncated?").
  void read(void* buffer, uint64_t n, uint64_t offset) const;

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

}  // namespace distill
