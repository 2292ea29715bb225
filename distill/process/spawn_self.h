// Starting copies of this executable: the stage processes of `distill run` and the ranks of
// `distill --nproc N` are both this binary with other arguments.
#pragma once

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

namespace distill {

struct SpawnOptions {
  std::vector<std::pair<std::string, std::string>> env;  // set (or replaced) in the child's environment
  int stderr_fd = -1;                                     // >= 0: the child's stderr
  int close_fd = -1;                                      // >= 0: closed in the child (the pipe's other end)
  bool stdout_to_null = false;                            // the child's stdout to /dev/null
};

// Starts this executable with `args` (argv[1...]) and returns its pid. Everything the child needs
// is built before fork, so the child only redirects and execs. `what` names the purpose in errors.
pid_t spawn_self(const std::vector<std::string>& args, const SpawnOptions& options, const std::string& what);

}  // namespace distill
