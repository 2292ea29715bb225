// One process at a time per output directory: OUTPUT/.lock, held with flock.
#pragma once

#include <string>

#include "models/errors.h"

namespace distill {

// Another live process holds the directory; the message names it (pid, host, since when).
class RunLockedError : public Error {
 public:
  using Error::Error;
};

// Takes `dir`/.lock for the rest of this process (the kernel releases it when the process ends,
// kill -9 included, so a crashed run never leaves a stale lock) and writes "pid host time" into it.
// Taking a directory this process already holds is a no-op. Child processes started afterwards
// inherit the lock, so a run's stage processes keep it even if their parent dies. Throws
// RunLockedError when another process holds it, Error when the file cannot be made.
void lock_run_directory(const std::string& dir);

}  // namespace distill
