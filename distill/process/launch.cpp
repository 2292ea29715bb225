#include "distill/process/launch.h"

#include <netinet/in.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <thread>

#include "distill/process/interrupt.h"
#include "distill/process/spawn_self.h"
#include "models/errors.h"

namespace distill {
namespace {

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error(std::string("--nproc: cannot open a socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    throw Error(std::string("--nproc: cannot find a free port: ") + std::strerror(errno));
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

}  // namespace

int launch_local_ranks(const std::vector<std::string>& args, int nproc, int threads) {
  const std::string port = std::to_string(free_port());
  const interrupt::Scope interruptible;
  std::map<pid_t, int> ranks;  // pid -> rank
  for (int r = 0; r < nproc; ++r) {
    std::vector<std::string> a{"--threads", std::to_string(threads)};
    a.insert(a.end(), args.begin() + 1, args.end());
    SpawnOptions o;
    o.env = {{"RANK", std::to_string(r)},         {"LOCAL_RANK", std::to_string(r)},
             {"WORLD_SIZE", std::to_string(nproc)}, {"LOCAL_WORLD_SIZE", std::to_string(nproc)},
             {"MASTER_ADDR", "127.0.0.1"},          {"MASTER_PORT", port}};
    const pid_t pid = spawn_self(a, o, "rank " + std::to_string(r));
    ranks[pid] = r;
  }
  spdlog::info("launched {} ranks on this machine ({} thread{} each, rendezvous at 127.0.0.1:{})", nproc, threads,
               threads > 1 ? "s" : "", port);
  int code = 0;
  std::string failure;
  bool forwarded = false;
  std::chrono::steady_clock::time_point deadline{};
  while (!ranks.empty()) {
    if (interrupt::requested() && !forwarded) {
      forwarded = true;
      for (auto& [pid, r] : ranks) kill(pid, SIGINT);  // each checkpoints at the same step, then exits 130
    }
    int status = 0;
    const pid_t done = waitpid(-1, &status, WNOHANG);
    if (done <= 0) {
      if (deadline != std::chrono::steady_clock::time_point{} && std::chrono::steady_clock::now() > deadline) {
        for (auto& [pid, r] : ranks) kill(pid, SIGKILL);
        deadline = {};
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    auto it = ranks.find(done);
    if (it == ranks.end()) continue;
    const int rank = it->second, c = exit_code(status);
    ranks.erase(it);
    if (c != 0 && code == 0) {
      code = c;
      failure = "rank " + std::to_string(rank) + " exited with " + std::to_string(c);
      if (!(forwarded && c == 130)) {
        // The others would wait for it until their collectives time out: stop them now.
        for (auto& [pid, r] : ranks) kill(pid, SIGTERM);
        deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      }
    }
  }
  if (code != 0 && code != 130) spdlog::error("{}; the job failed", failure);
  return code;
}

}  // namespace distill
