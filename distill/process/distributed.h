// Data-parallel training on PyTorch's c10d: a TCPStore rendezvous and a Gloo process group
// (torch's own engine, as torchrun-launched jobs use it), with what the trainer needs on top:
// parameter broadcast, bucketed gradient all-reduce, scalar reductions, and a configuration check.
// There is no C++ DistributedDataParallel in LibTorch; this is ours.
#pragma once

#include <ATen/Tensor.h>
#include <c10/util/intrusive_ptr.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/errors.h"

namespace c10d {
class Work;  // a started collective (c10d's ProcessGroup headers stay in distributed.cpp)
}

namespace distill {

// A collective failed: a rank died, stopped answering past the timeout, or disagreed.
class DistributedError : public Error {
 public:
  using Error::Error;
};

// torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
struct WorldEnv {
  int rank = 0;                          // this process among all of the job's
  int world_size = 1;                    // processes in the job; > 1 makes training data-parallel
  int local_rank = 0;                    // this process among its machine's
  std::string master_addr = "127.0.0.1"; // host of rank 0's TCPStore
  int master_port = 29500;               // its port
  std::chrono::seconds timeout{300};     // DISTILL_COLLECTIVE_TIMEOUT: the longest a rank waits for the others
  std::chrono::seconds peer_timeout{60}; // DISTILL_PEER_TIMEOUT: a rank whose heartbeat is this old is
                                         // named as stopped and fails the others' waits at once
  bool agent_store = false;              // TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent serves the
                                         // TCPStore at MASTER_ADDR:MASTER_PORT, so every rank is a client
  int restart_count = 0;                 // TORCHELASTIC_RESTART_COUNT: keys live under /worker/attempt_N

  // From the environment; WORLD_SIZE unset means one process. A malformed or inconsistent
  // variable is an InputError naming it.
  static WorldEnv from_environment();
};

class Collective {
 public:
  // Joins the job: rank 0 (or torchrun's agent) serves the TCPStore, every rank connects, builds
  // the Gloo group and starts its heartbeat (a thread that bumps this rank's counter in the store
  // every second and watches the others', so a rank that dies or stops is named by number).
  explicit Collective(const WorldEnv& env);
  ~Collective();
  Collective(const Collective&) = delete;
  Collective& operator=(const Collective&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  bool is_root() const { return env_.rank == 0; }

  // Every rank passes its own `text` (e.g. the resolved configuration); a rank whose text differs
  // from rank 0's makes every rank throw ConfigError naming it.
  void check_same(const std::string& what, const std::string& text);
  // Rank 0's values into every rank's `tensors` (in place), a few flat buckets at a time.
  void broadcast(const std::vector<at::Tensor>& tensors);
  // The sum over ranks, in place, in flat float32 (or the tensors' own dtype) buckets.
  void allreduce_sum(const std::vector<at::Tensor>& tensors);
  std::vector<double> sum_over_ranks(const std::vector<double>& values);
  // Every rank's value, by rank.
  std::vector<double> allgather(double value);
  void barrier();
  // Starts a sum over ranks of `t` in place; the returned function waits for it.
  std::function<void()> start_allreduce(const at::Tensor& t);

 private:
  struct Group;
  [[noreturn]] void fail(const std::string& op, const std::exception& e) const;
  // Waits for `work`, checking the heartbeats every second: a peer silent for peer_timeout fails
  // the wait at once (Gloo alone would wait the whole collective timeout), naming the rank.
  void wait(c10d::Work& work, const std::string& op) const;
  // `tensors` in flat buckets: each bucket's `start` begins a collective on it in place; then every
  // bucket is waited on and copied back.
  void bucketed(const char* op, const std::vector<at::Tensor>& tensors,
                const std::function<c10::intrusive_ptr<c10d::Work>(std::vector<at::Tensor>&)>& start);
  WorldEnv env_;
  std::unique_ptr<Group> group_;
};

// The process's collective when it is one rank of several, else nullptr. Set once by main.
Collective* world();
void set_world(std::unique_ptr<Collective> collective);
// True for rank 0 and for a single process: the one that writes outputs.
bool is_writer();

// DistributedDataParallel's reducer, on c10d: the gradients of `params`, in buckets ordered as
// backward produces them (last parameters first), are summed over the ranks while backward still
// runs: a hook on each parameter copies its gradient into its bucket, and a full bucket's
// all-reduce starts at once. finish() starts what is left, waits, and writes the sums into .grad.
class GradientReducer {
 public:
  GradientReducer(Collective& c, std::vector<std::pair<std::string, at::Tensor>> params, int64_t bucket_bytes = 4 << 20);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;
  // Before the step's last backward (earlier micro-batches accumulate into .grad as usual); or
  // after backward, and finish() at once, to reduce with no overlap.
  void arm();
  // After that backward: every rank's gradient summed into .grad; a parameter no rank produced a
  // gradient for stays without one, as in one process.
  void finish();

 private:
  struct State;
  std::shared_ptr<State> s_;  // the parameters' hooks hold it weakly: they outlive the reducer
};

}  // namespace distill
