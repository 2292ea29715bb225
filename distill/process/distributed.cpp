#include "distill/process/distributed.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <thread>
#include <tuple>

namespace distill {
namespace {

constexpr int64_t kBucketBytes = 32 << 20;  // per flat all-reduce: large enough to amortise latency
constexpr std::chrono::seconds kBeat{1};     // heartbeat period, and how often a wait looks at them
using Clock = std::chrono::steady_clock;

int env_int(const char* name, int fallback, int lo, int hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || errno != 0 || x < lo || x > hi) {
    throw InputError(std::string("environment variable ") + name + "=\"" + v + "\": expected an integer in [" +
                     std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return static_cast<int>(x);
}

std::unique_ptr<Collective> g_world;

// Buckets of consecutive tensors of one dtype, each at most kBucketBytes (a larger tensor alone).
std::vector<std::vector<at::Tensor>> buckets(const std::vector<at::Tensor>& tensors) {
  std::vector<std::vector<at::Tensor>> out;
  int64_t bytes = 0;
  for (const auto& t : tensors) {
    const int64_t n = t.numel() * static_cast<int64_t>(t.element_size());
    if (out.empty() || bytes + n > kBucketBytes || out.back().front().scalar_type() != t.scalar_type()) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().push_back(t);
    bytes += n;
  }
  return out;
}

// What an exception says, without the C++ backtrace a c10::Error carries.
std::string message_of(const std::exception& e) {
  if (auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

// A connection to the job's TCPStore. torchrun's agent serves it when TORCHELASTIC_USE_AGENT_STORE
// is set, under the restart's prefix (as torch.distributed's env:// rendezvous does); else rank 0.
c10::intrusive_ptr<c10d::Store> connect_store(const WorldEnv& env, bool counted) {
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(env.master_port);
  so.isServer = counted && !env.agent_store && env.rank == 0;
  if (counted) so.numWorkers = static_cast<size_t>(env.world_size);
  so.waitWorkers = counted;  // the server waits for every rank's first connection
  so.timeout = env.timeout;
  auto store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  if (!env.agent_store) return store;
  return c10::make_intrusive<c10d::PrefixStore>("/worker/attempt_" + std::to_string(env.restart_count), store);
}

// Every rank's heartbeat: a thread bumps this rank's counter in the store each beat and reads every
// rank's, remembering when each last moved. It has its own store connection (a TCPStore client is
// not safe to share between threads) and never blocks a collective: waits only read what it saw.
class Liveness {
 public:
  static constexpr int kStore = -1;  // in silent(): the store itself stopped answering

  Liveness(c10::intrusive_ptr<c10d::Store> store, int rank, int world_size)
      : store_(std::move(store)), rank_(rank), value_(static_cast<size_t>(world_size), -1),
        moved_(static_cast<size_t>(world_size), Clock::now()), store_ok_(Clock::now()) {
    thread_ = std::thread([this] { run(); });
  }
  ~Liveness() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  // The other ranks whose counter had not moved for `age` when the store last answered, kStore
  // first when the store's connection broke or it has not answered for `age`. A rank is judged by
  // the store's clock, not the wall's: when the store's host dies, its counter stops a beat before
  // the store's connection reports the error, and naming the host rank then would blame a rank
  // for what is the store's loss (nobody's counter can be read without it).
  std::vector<int> silent(Clock::duration age) const {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<int> out;
    if (!store_error_.empty() || Clock::now() - store_ok_ > age) out.push_back(kStore);
    for (size_t r = 0; r < moved_.size(); ++r)
      if (static_cast<int>(r) != rank_ && store_ok_ - moved_[r] > age) out.push_back(static_cast<int>(r));
    return out;
  }
  std::string store_error() const {
    std::lock_guard<std::mutex> l(mu_);
    return store_error_;
  }

 private:
  static std::string key(size_t r) { return "distill/heartbeat/" + std::to_string(r); }

  void run() {
    std::vector<int64_t> seen(value_.size());
    for (;;) {
      try {
        store_->add(key(static_cast<size_t>(rank_)), 1);
        for (size_t r = 0; r < seen.size(); ++r) seen[r] = store_->add(key(r), 0);  // add 0: read, never block
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> l(mu_);
        store_error_ = message_of(e);
        return;  // the connection is gone for good: store_ok_ ages from here
      }
      std::unique_lock<std::mutex> l(mu_);
      const auto now = Clock::now();
      store_ok_ = now;
      for (size_t r = 0; r < seen.size(); ++r)
        if (seen[r] != value_[r]) value_[r] = seen[r], moved_[r] = now;
      if (cv_.wait_for(l, kBeat, [this] { return stop_; })) return;
    }
  }

  c10::intrusive_ptr<c10d::Store> store_;
  const int rank_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::vector<int64_t> value_;          // each rank's counter as last read
  std::vector<Clock::time_point> moved_;  // when it last changed
  Clock::time_point store_ok_;          // the last beat the store answered
  std::string store_error_;             // why it stopped answering, once it has
  std::thread thread_;
};

std::string seconds_text(Clock::duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::seconds>(d).count()) + " s";
}

}  // namespace

WorldEnv WorldEnv::from_environment() {
  WorldEnv e;
  e.world_size = env_int("WORLD_SIZE", 1, 1, 1 << 16);
  e.rank = env_int("RANK", 0, 0, e.world_size - 1);
  e.local_rank = env_int("LOCAL_RANK", e.rank, 0, e.world_size - 1);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", e.master_port, 1, 65535);
  e.timeout = std::chrono::seconds(env_int("DISTILL_COLLECTIVE_TIMEOUT", static_cast<int>(e.timeout.count()), 1, 86400));
  e.peer_timeout = std::chrono::seconds(env_int("DISTILL_PEER_TIMEOUT", static_cast<int>(e.peer_timeout.count()), 3, 86400));
  if (const char* a = std::getenv("TORCHELASTIC_USE_AGENT_STORE"); a && *a) {
    const std::string v = a;
    if (v != "True" && v != "False")
      throw InputError("environment variable TORCHELASTIC_USE_AGENT_STORE=\"" + v + "\": expected True or False (torchrun sets it)");
    e.agent_store = v == "True";
    e.restart_count = env_int("TORCHELASTIC_RESTART_COUNT", 0, 0, 1 << 20);
  }
  if (e.world_size > 1 && !std::getenv("RANK")) {
    throw InputError("environment variable WORLD_SIZE=" + std::to_string(e.world_size) +
                     " without RANK: launch with torchrun, or with distill --nproc N on one machine");
  }
  return e;
}

struct Collective::Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::unique_ptr<Liveness> liveness;  // last: stopped before the group goes
};

Collective::Collective(const WorldEnv& env) : env_(env), group_(std::make_unique<Group>()) {
  try {
    group_->store = connect_store(env, true);
    auto opts = c10d::ProcessGroupGloo::Options::create(env.timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    opts->threads = 1;
    group_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(group_->store, env.rank, env.world_size, opts);
    group_->liveness = std::make_unique<Liveness>(connect_store(env, false), env.rank, env.world_size);
  } catch (const std::exception& e) {
    throw DistributedError("rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
                           ": cannot join the job at " + env.master_addr + ":" + std::to_string(env.master_port) +
                           " within " + std::to_string(env.timeout.count()) + " s: " + e.what());
  }
}

Collective::~Collective() = default;

namespace {

// Who stopped, in words, from the heartbeats: the store's host first (nobody can be read without it).
std::string stopped_ranks(const WorldEnv& env, const Liveness& live, const std::vector<int>& silent, Clock::duration age) {
  if (silent.empty()) return {};
  if (silent.front() == Liveness::kStore) {
    const std::string host = env.agent_store ? "torchrun's agent" : "rank 0";
    const std::string why = live.store_error();
    return "the rendezvous store at " + env.master_addr + ":" + std::to_string(env.master_port) + " (served by " + host +
           ") " + (why.empty() ? "has not answered for " + seconds_text(age) + ": " + host + " is stopped or hung"
                               : "is gone (" + why + "): " + host + " died or was killed");
  }
  std::string ranks;
  for (int r : silent) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
  return std::string(silent.size() > 1 ? "ranks " : "rank ") + ranks + (silent.size() > 1 ? " have" : " has") +
         " stopped: no heartbeat for " + seconds_text(age) + " or more (died, killed, stopped or unreachable)";
}

}  // namespace

void Collective::fail(const std::string& op, const std::exception& e) const {
  const std::string msg = message_of(e);
  // A dead peer shows first as a broken connection; its heartbeat tells which rank it was within a
  // few beats. A rank whose heartbeat goes on is alive but did not take part in time.
  std::string who;
  const auto until = Clock::now() + 5 * kBeat;
  while (who.empty() && Clock::now() < until) {
    who = stopped_ranks(env_, *group_->liveness, group_->liveness->silent(3 * kBeat), 3 * kBeat);
    if (who.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (who.empty())
    who = "every rank's heartbeat goes on, so one of them is alive but did not take part within " +
          std::to_string(env_.timeout.count()) + " s (DISTILL_COLLECTIVE_TIMEOUT) or failed on its own";
  throw DistributedError("rank " + std::to_string(env_.rank) + ": " + op + " failed: " + who + " [Gloo: " + msg + "]");
}

void Collective::wait(c10d::Work& work, const std::string& op) const {
  for (;;) {
    try {
      work.wait(std::chrono::duration_cast<std::chrono::milliseconds>(kBeat));
      return;
    } catch (const std::exception& e) {
      if (work.isCompleted()) fail(op, e);  // else the beat passed with the collective still running
    }
    const auto silent = group_->liveness->silent(env_.peer_timeout);
    if (!silent.empty())
      throw DistributedError("rank " + std::to_string(env_.rank) + ": " + op + " abandoned: " +
                             stopped_ranks(env_, *group_->liveness, silent, env_.peer_timeout) +
                             " (DISTILL_PEER_TIMEOUT=" + std::to_string(env_.peer_timeout.count()) + ")");
  }
}

void Collective::check_same(const std::string& what, const std::string& text) {
  try {
    group_->store->set(what + "/" + std::to_string(env_.rank), std::vector<uint8_t>(text.begin(), text.end()));
    std::vector<int> differ;
    const auto root = group_->store->get(what + "/0");
    for (int r = 1; r < env_.world_size; ++r)
      if (group_->store->get(what + "/" + std::to_string(r)) != root) differ.push_back(r);
    barrier();
    if (!differ.empty()) {
      std::string ranks;
      for (int r : differ) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
      throw ConfigError("ranks disagree on the " + what + ": rank(s) " + ranks +
                        " differ from rank 0; every rank must run the same command on the same configuration");
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("comparing the " + what, e);
  }
}

void Collective::bucketed(const char* op, const std::vector<at::Tensor>& tensors,
                          const std::function<c10::intrusive_ptr<c10d::Work>(std::vector<at::Tensor>&)>& start) {
  try {
    // Every bucket started, then waited on: Gloo works on them while this thread waits.
    std::vector<std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, c10::intrusive_ptr<c10d::Work>>> pending;
    for (auto& bucket : buckets(tensors)) {
      std::vector<at::Tensor> flat;
      for (const auto& t : bucket) flat.push_back(t.detach().reshape({-1}));
      std::vector<at::Tensor> buf{at::cat(flat)};
      auto work = start(buf);
      pending.emplace_back(std::move(bucket), std::move(buf), std::move(work));
    }
    at::NoGradGuard ng;
    for (auto& [bucket, buf, work] : pending) {
      wait(*work, op);
      int64_t at = 0;
      for (const auto& t : bucket) {
        t.detach().copy_(buf[0].narrow(0, at, t.numel()).view(t.sizes()));
        at += t.numel();
      }
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(op, e);
  }
}

void Collective::broadcast(const std::vector<at::Tensor>& tensors) {
  c10d::BroadcastOptions o;
  o.rootRank = 0;
  bucketed("broadcast", tensors, [&](std::vector<at::Tensor>& buf) { return group_->pg->broadcast(buf, o); });
}

void Collective::allreduce_sum(const std::vector<at::Tensor>& tensors) {
  bucketed("all-reduce", tensors, [&](std::vector<at::Tensor>& buf) { return group_->pg->allreduce(buf); });
}

std::vector<double> Collective::sum_over_ranks(const std::vector<double>& values) {
  auto t = at::tensor(values, at::kDouble);
  allreduce_sum(std::vector<at::Tensor>{t});
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

std::vector<double> Collective::allgather(double value) {
  std::vector<double> v(static_cast<size_t>(env_.world_size), 0.0);
  v[static_cast<size_t>(env_.rank)] = value;
  return sum_over_ranks(v);
}

std::function<void()> Collective::start_allreduce(const at::Tensor& t) {
  try {
    std::vector<at::Tensor> buf{t};
    auto work = group_->pg->allreduce(buf);
    return [this, work] { wait(*work, "all-reduce"); };
  } catch (const std::exception& e) {
    fail("all-reduce", e);
  }
}

void Collective::barrier() {
  c10::intrusive_ptr<c10d::Work> work;
  try {
    work = group_->pg->barrier();
  } catch (const std::exception& e) {
    fail("barrier", e);
  }
  wait(*work, "barrier");
}

Collective* world() { return g_world.get(); }
void set_world(std::unique_ptr<Collective> collective) { g_world = std::move(collective); }
bool is_writer() { return !g_world || g_world->is_root(); }

struct GradientReducer::State {
  struct Bucket {
    std::vector<size_t> members;   // parameter indices
    std::vector<int64_t> offsets;  // of each member in `flat`
    at::Tensor flat;               // float32
    size_t ready = 0;
    std::function<void()> wait;    // set once launched
  };
  Collective* c = nullptr;
  std::vector<at::Tensor> params;  // the trainable ones
  std::vector<Bucket> buckets;
  std::vector<size_t> bucket_of, slot_of;
  std::vector<float> defined;
  bool armed = false;
  size_t next = 0;  // buckets start strictly in index order, the same on every rank, however
                    // each rank's backward happens to fill them (Gloo pairs collectives by order)

  void launch_ready() {
    while (next < buckets.size() && buckets[next].ready == buckets[next].members.size()) {
      buckets[next].wait = c->start_allreduce(buckets[next].flat);
      ++next;
    }
  }
  void on_gradient(size_t i, const at::Tensor& incoming) {
    if (!armed) return;
    const auto& p = params[i];
    Bucket& b = buckets[bucket_of[i]];
    auto slot = b.flat.narrow(0, b.offsets[slot_of[i]], p.numel());
    // What .grad will hold after this backward: earlier micro-batches' sum plus this one.
    if (p.grad().defined()) slot.copy_((p.grad() + incoming).reshape({-1}));
    else slot.copy_(incoming.reshape({-1}));
    defined[i] = 1.0f;
    ++b.ready;
    launch_ready();
  }
};

GradientReducer::GradientReducer(Collective& c, std::vector<std::pair<std::string, at::Tensor>> params, int64_t bucket_bytes)
    : s_(std::make_shared<State>()) {
  s_->c = &c;
  for (const auto& [name, p] : params)
    if (p.requires_grad()) s_->params.push_back(p);
  const size_t n = s_->params.size();
  s_->bucket_of.resize(n);
  s_->slot_of.resize(n);
  s_->defined.assign(n, 0.0f);
  // Backward produces gradients roughly in reverse order of the parameters' registration.
  int64_t bytes = 0;
  for (size_t k = n; k-- > 0;) {
    const auto& p = s_->params[k];
    if (s_->buckets.empty() || bytes + p.numel() * 4 > bucket_bytes) {
      s_->buckets.emplace_back();
      bytes = 0;
    }
    auto& b = s_->buckets.back();
    s_->bucket_of[k] = s_->buckets.size() - 1;
    s_->slot_of[k] = b.members.size();
    b.offsets.push_back(bytes / 4);
    b.members.push_back(k);
    bytes += p.numel() * 4;
  }
  for (auto& b : s_->buckets) {
    int64_t total = 0;
    for (size_t m : b.members) total += s_->params[m].numel();
    b.flat = at::zeros({total}, at::kFloat);
  }
  for (size_t k = 0; k < n; ++k) {
    std::weak_ptr<State> weak = s_;
    s_->params[k].register_hook([weak, k](const at::Tensor& g) {
      if (auto st = weak.lock()) st->on_gradient(k, g);
      return at::Tensor();
    });
  }
}

GradientReducer::~GradientReducer() = default;

void GradientReducer::arm() {
  for (auto& b : s_->buckets) {
    b.flat.zero_();
    b.ready = 0;
    b.wait = nullptr;
  }
  std::fill(s_->defined.begin(), s_->defined.end(), 0.0f);
  s_->next = 0;
  s_->armed = true;
}

void GradientReducer::finish() {
  s_->armed = false;
  // Parameters this rank's backward did not reach: their earlier micro-batches' gradient, or zeros.
  for (size_t k = 0; k < s_->params.size(); ++k) {
    if (s_->defined[k] != 0.0f) continue;
    const auto& p = s_->params[k];
    auto& b = s_->buckets[s_->bucket_of[k]];
    if (p.grad().defined()) {
      b.flat.narrow(0, b.offsets[s_->slot_of[k]], p.numel()).copy_(p.grad().reshape({-1}));
      s_->defined[k] = 1.0f;
    }
    ++b.ready;
  }
  s_->launch_ready();
  auto had = at::tensor(s_->defined, at::kFloat);
  auto wait_had = s_->c->start_allreduce(had);
  for (auto& b : s_->buckets) b.wait();
  wait_had();
  const float* h = had.data_ptr<float>();
  at::NoGradGuard ng;
  for (size_t k = 0; k < s_->params.size(); ++k) {
    auto& p = s_->params[k];
    if (h[k] == 0.0f) {
      p.mutable_grad() = at::Tensor();
      continue;
    }
    const auto& b = s_->buckets[s_->bucket_of[k]];
    auto sum = b.flat.narrow(0, b.offsets[s_->slot_of[k]], p.numel()).view(p.sizes());
    if (p.grad().defined()) p.mutable_grad().copy_(sum);
    else p.mutable_grad() = sum.clone();
  }
}

}  // namespace distill
