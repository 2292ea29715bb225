#include "distill/pipeline/stage_jobs.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <cstring>
#include <map>

#include "distill/process/interrupt.h"
#include "distill/process/spawn_self.h"
#include "distill/training/trainer.h"
#include "models/errors.h"

namespace distill {
namespace {

struct Child {
  size_t job = 0;
  pid_t pid = -1;
  int fd = -1;               // read end of its stderr
  std::string pending;       // an unfinished line
  std::string last_error;    // its last "error: ..." line
};

std::string job_name(const StageJob& j) {
  std::string name = (j.stage == "dense" ? std::string("dense counterpart") : j.stage) + " of seed " + std::to_string(j.seed_index + 1);
  // A sweep's jobs come from several runs: name the run (its output directory).
  if (!j.config_file.empty()) name += " (" + std::filesystem::path(j.config_file).parent_path().filename().string() + ")";
  return name;
}

// One relayed line: "level<TAB>message" from a child's logger, anything else as it is.
void relay(Child& child, const std::string& line) {
  const auto tab = line.find('\t');
  if (tab != std::string::npos) {
    const auto level = spdlog::level::from_str(line.substr(0, tab));
    spdlog::log(level == spdlog::level::off ? spdlog::level::info : level, "{}", line.substr(tab + 1));
    return;
  }
  if (line.rfind("error: ", 0) == 0) {
    child.last_error = line.substr(7);
    spdlog::error("{}", child.last_error);
  } else if (!line.empty()) {
    spdlog::info("{}", line);
  }
}

void drain(Child& child, bool all) {
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(child.fd, buffer, sizeof buffer);
    if (n > 0) {
      child.pending.append(buffer, static_cast<size_t>(n));
      size_t end;
      while ((end = child.pending.find('\n')) != std::string::npos) {
        relay(child, child.pending.substr(0, end));
        child.pending.erase(0, end + 1);
      }
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;  // EAGAIN (nothing more now) or EOF
  }
  if (all && !child.pending.empty()) {
    relay(child, child.pending);
    child.pending.clear();
  }
}

Child launch(const StageJob& job, size_t index, const std::string& config, bool resume, int threads) {
  int fds[2];
  if (pipe(fds) != 0) throw Error(std::string("cannot start a stage process: pipe: ") + std::strerror(errno));
  std::vector<std::string> args{"--threads", std::to_string(threads), "stage", job.config_file.empty() ? config : job.config_file,
                                "--seed-index", std::to_string(job.seed_index), "--stage", job.stage};
  if (resume) args.push_back("--resume");
  if (job.pretraining) args.push_back("--pretraining");
  SpawnOptions o;
  o.stderr_fd = fds[1];
  o.close_fd = fds[0];
  o.stdout_to_null = true;
  pid_t pid = -1;
  try {
    pid = spawn_self(args, o, "a stage process");
  } catch (...) {
    close(fds[0]);
    close(fds[1]);
    throw;
  }
  close(fds[1]);
  fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
  spdlog::info("started the {} (process {}, {} thread{})", job_name(job), pid, threads, threads > 1 ? "s" : "");
  return {index, pid, fds[0], "", ""};
}

}  // namespace

void use_child_logging() {
  auto logger = spdlog::stderr_logger_mt("distill-stage");
  logger->set_pattern("%l\t%v");
  spdlog::set_default_logger(logger);
}

void run_stage_jobs(const std::vector<StageJob>& jobs, const std::string& config, bool resume, int workers, int threads) {
  const interrupt::Scope interruptible;

  std::vector<int> state(jobs.size(), 0);  // 0 waiting, 1 running, 2 done
  std::map<pid_t, Child> running;
  std::string failure;
  bool stopping = false;
  auto stop_all = [&] {
    if (stopping) return;
    stopping = true;
    for (auto& [pid, c] : running) kill(pid, SIGINT);  // they checkpoint and exit, as on Ctrl-C
  };
  try {
    for (;;) {
      if (interrupt::requested()) stop_all();
      // Start what may start.
      for (size_t j = 0; !stopping && j < jobs.size() && static_cast<int>(running.size()) < workers; ++j) {
        if (state[j] != 0) continue;
        bool ready = true;
        for (size_t a : jobs[j].after) ready = ready && state[a] == 2;
        if (!ready) continue;
        auto child = launch(jobs[j], j, config, resume, threads);
        running.emplace(child.pid, std::move(child));
        state[j] = 1;
      }
      if (running.empty()) break;
      // Relay output until something happens.
      std::vector<pollfd> fds;
      for (auto& [pid, c] : running) fds.push_back({c.fd, POLLIN, 0});
      poll(fds.data(), fds.size(), 200);
      for (auto& [pid, c] : running) drain(c, false);
      int status = 0;
      const pid_t done = waitpid(-1, &status, WNOHANG);
      if (done <= 0) continue;
      auto it = running.find(done);
      if (it == running.end()) continue;
      Child child = std::move(it->second);
      running.erase(it);
      drain(child, true);
      close(child.fd);
      const auto& job = jobs[child.job];
      const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      if (code == 0) {
        state[child.job] = 2;
        spdlog::info("the {} finished", job_name(job));
      } else if (code == 130 && (stopping || interrupt::requested())) {
        state[child.job] = 2;  // stopped on request, checkpoint saved
      } else {
        if (failure.empty()) {
          failure = "the " + job_name(job) + " failed (exit " + std::to_string(code) + ")" +
                    (child.last_error.empty() ? "" : ": " + child.last_error);
        }
        stop_all();
      }
    }
  } catch (...) {
    stop_all();
    for (auto& [pid, c] : running) waitpid(pid, nullptr, 0);
    throw;
  }
  if (!failure.empty()) throw Error(failure);
  if (interrupt::requested()) throw InterruptedError("interrupted: every running stage saved a checkpoint; continue with --resume");
}

}  // namespace distill
