#include "models/io/read_only_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "models/errors.h"
#include "models/io/atomic_file.h"

namespace distill {

ReadOnlyFile::ReadOnlyFile(std::string path, const char* expected_kind) : path_(std::move(path)) {
  // Named first: opening a FIFO for reading would block until something writes to it.
  if (const auto kind = non_regular_kind(path_); !kind.empty()) {
    throw CheckpointError(path_ + ": is " + kind + ", not " + expected_kind);
  }
  fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw CheckpointError(path_ + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    ::close(fd_);
    throw CheckpointError(path_ + ": cannot stat: " + std::strerror(errno));
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

ReadOnlyFile::~ReadOnlyFile() { ::close(fd_); }

void ReadOnlyFile::read(void* buffer, uint64_t n, uint64_t offset) const {
  auto* p = static_cast<char*>(buffer);
  while (n > 0) {
    const ssize_t got = ::pread(fd_, p, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) throw CheckpointError(path_ + ": read failed (file truncated?)");
    p += got;
    n -= static_cast<uint64_t>(got);
    offset += static_cast<uint64_t>(got);
  }
}

}  // namespace distill
