// Training independent stages side by side, each in a child process of this executable with a
// share of the threads. A LibTorch process parallelises these small models poorly over threads:
// two one-thread processes do ~1.4x the work of one two-thread process on this project's machine.
#pragma once

#include <string>
#include <vector>

#include "distill/pipeline/stage_training.h"

namespace distill {

// Runs every job as `distill --threads T stage CONFIG --seed-index I --stage S [--resume]`, at
// most `workers` at a time, each after the jobs it waits for. The children's log lines are
// relayed to this process's log. A failed child stops the others (they checkpoint, as on
// Ctrl-C) and throws Error naming the stage and its error; Ctrl-C stops them all and throws
// InterruptedError. `config_file` is the resolved configuration every child reads.
void run_stage_jobs(const std::vector<StageJob>& jobs, const std::string& config_file, bool resume, int workers,
                    int threads);

// In a child process: logs as "level<TAB>message" lines on stderr for the parent to relay.
void use_child_logging();

}  // namespace distill
