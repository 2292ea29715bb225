#include "distill/distributed.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cerrno>
#include <cstdlib>
#include <algorithm>
#include <limits>
#include <tuple>

namespace distill {
namespace {

constexpr int64_t kBucketBytes = 32 << 20;  // per flat all-reduce: large enough to amortise latency

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

}  // namespace

WorldEnv WorldEnv::from_environment() {
  WorldEnv e;
  e.world_size = env_int("WORLD_SIZE", 1, 1, 1 << 16);
  e.rank = env_int("RANK", 0, 0, e.world_size - 1);
  e.local_rank = env_int("LOCAL_RANK", e.rank, 0, e.world_size - 1);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", e.master_port, 1, 65535);
  e.timeout = std::chrono::seconds(env_int("DISTILL_COLLECTIVE_TIMEOUT", static_cast<int>(e.timeout.count()), 1, 86400));
  if (e.world_size > 1 && !std::getenv("RANK")) {
    throw InputError("environment variable WORLD_SIZE=" + std::to_string(e.world_size) +
                     " without RANK: launch with torchrun, or with distill --nproc N on one machine");
  }
  return e;
}

struct Collective::Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

Collective::Collective(const WorldEnv& env) : env_(env), group_(std::make_unique<Group>()) {
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(env.master_port);
    so.isServer = env.rank == 0;
    so.numWorkers = static_cast<size_t>(env.world_size);
    so.waitWorkers = true;
    so.timeout = env.timeout;
    group_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    auto opts = c10d::ProcessGroupGloo::Options::create(env.timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    opts->threads = 1;
    group_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(group_->store, env.rank, env.world_size, opts);
  } catch (const std::exception& e) {
    throw DistributedError("rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
                           ": cannot join the job at " + env.master_addr + ":" + std::to_string(env.master_port) +
                           " within " + std::to_string(env.timeout.count()) + " s: " + e.what());
  }
}

Collective::~Collective() = default;

void Collective::fail(const std::string& op, const std::exception& e) const {
  std::string msg = e.what();
  if (auto* c = dynamic_cast<const c10::Error*>(&e)) msg = c->what_without_backtrace();
  throw DistributedError("rank " + std::to_string(env_.rank) + ": " + op + " failed: " + msg +
                         " (another rank died, or did not answer within " + std::to_string(env_.timeout.count()) +
                         " s, DISTILL_COLLECTIVE_TIMEOUT)");
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
      work->wait();
      int64_t at = 0;
      for (const auto& t : bucket) {
        t.detach().copy_(buf[0].narrow(0, at, t.numel()).view(t.sizes()));
        at += t.numel();
      }
    }
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
    return [this, work] {
      try {
        work->wait();
      } catch (const std::exception& e) {
        fail("all-reduce", e);
      }
    };
  } catch (const std::exception& e) {
    fail("all-reduce", e);
  }
}

void Collective::barrier() {
  try {
    group_->pg->barrier()->wait();
  } catch (const std::exception& e) {
    fail("barrier", e);
  }
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
