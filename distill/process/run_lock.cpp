#include "distill/process/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <set>

namespace distill {
namespace fs = std::filesystem;

namespace {

std::string read_holder(int fd) {
  char buf[256] = {};
  const ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
  std::string s = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s.empty() ? "a process that has not written its name yet" : s;
}

}  // namespace

void lock_run_directory(const std::string& dir) {
  static std::mutex mutex;
  static std::set<std::string> held;  // canonical paths this process holds
  std::lock_guard<std::mutex> guard(mutex);
  std::error_code ec;
  const std::string key = fs::weakly_canonical(dir, ec).string();
  if (held.count(key)) return;

  const std::string path = (fs::path(dir) / ".lock").string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT, 0644);  // no O_CLOEXEC: stage processes inherit it
  if (fd < 0) throw Error(path + ": cannot create the run lock: " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string holder = read_holder(fd);
    ::close(fd);
    if (err == EWOULDBLOCK) {
      throw RunLockedError(dir + " is in use by another distill (" + holder + ", " + path +
                           "): wait for it to finish or choose another --output");
    }
    throw Error(path + ": cannot lock: " + std::strerror(err));
  }
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) std::strcpy(host, "unknown host");
  char when[64] = {};
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  const std::string text = "pid " + std::to_string(getpid()) + " on " + host + " since " + when + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) {
    ::close(fd);
    throw Error(path + ": cannot write the run lock: " + std::strerror(errno));
  }
  held.insert(key);  // the descriptor stays open for the rest of the process
}

}  // namespace distill
