#include "distill/process/spawn_self.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "models/errors.h"

extern char** environ;

namespace distill {

pid_t spawn_self(const std::vector<std::string>& args, const SpawnOptions& o, const std::string& what) {
  std::error_code ec;
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) throw Error("cannot find this executable (/proc/self/exe) to start " + what + ": " + ec.message());
  std::vector<std::string> argv_s{exe};  // the name it shows; what runs is /proc/self/exe (below)
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<std::string> env_s;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    bool replaced = false;
    for (const auto& [k, v] : o.env) replaced = replaced || kv.rfind(k + "=", 0) == 0;
    if (!replaced) env_s.push_back(kv);
  }
  for (const auto& [k, v] : o.env) env_s.push_back(k + "=" + v);
  std::vector<char*> argv, envp;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) throw Error("cannot start " + what + ": fork: " + std::strerror(errno));
  if (pid == 0) {
    if (o.stderr_fd >= 0) dup2(o.stderr_fd, STDERR_FILENO);
    if (o.stdout_to_null) {
      const int null = open("/dev/null", O_WRONLY);
      if (null >= 0) dup2(null, STDOUT_FILENO);
    }
    if (o.close_fd >= 0) close(o.close_fd);
    if (o.stderr_fd >= 0) close(o.stderr_fd);
    // This very image, even when the file was rebuilt or removed since the run started (its path
    // then names a new binary, or nothing): a run never mixes two builds.
    execve("/proc/self/exe", argv.data(), envp.data());
    static const char msg[] = "distill: cannot execute /proc/self/exe for a child process\n";
    (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
    _exit(127);
  }
  return pid;
}

}  // namespace distill
