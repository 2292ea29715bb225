// distill --nproc N: a data-parallel job of N ranks on this machine, launched as torchrun would
// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, MASTER_PORT a free port).
#pragma once

#include <string>
#include <vector>

namespace distill {

// Runs `args` (the command line without --nproc, argv[0] first) as ranks 0..nproc-1 with
// `threads` intra-op threads each, relays Ctrl-C to them, and returns the job's exit code: 0 when
// every rank succeeded, else the first failure's (the others are stopped, then killed after 30 s).
int launch_local_ranks(const std::vector<std::string>& args, int nproc, int threads);

}  // namespace distill
