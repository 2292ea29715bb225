#include "distill/process/interrupt.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <mutex>
#include <thread>

namespace distill::interrupt {
namespace {

std::atomic<int> g_depth{0};           // live Scopes
std::atomic<bool> g_requested{false};  // a stop was asked for while a Scope was live
std::atomic<bool> g_watching{false};   // the watcher thread owns SIGINT/SIGTERM
std::mutex g_scope_mutex;              // fallback handlers: install/restore once
struct sigaction g_previous_int, g_previous_term;

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// Ends the process as the signal's default action would (the shell then reports 128 + sig).
[[noreturn]] void die_of(int sig) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
  raise(sig);
  _exit(128 + sig);
}

void on_stop_signal(int sig) {
  if (g_depth.load() > 0 && !g_requested.exchange(true)) return;
  die_of(sig);
}

extern "C" void on_stop_signal_c(int sig) { on_stop_signal(sig); }

}  // namespace

void start_watcher() {
  if (g_watching.exchange(true)) return;
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // A background job of a non-interactive shell starts with SIGINT ignored, and an ignored signal
  // is discarded before sigwait could see it: install a disposition (the handler never runs while
  // the signals are blocked everywhere).
  struct sigaction act {};
  act.sa_handler = on_stop_signal_c;
  sigemptyset(&act.sa_mask);
  sigaction(SIGINT, &act, nullptr);
  sigaction(SIGTERM, &act, nullptr);
  std::thread([set] {
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0) continue;
      on_stop_signal(sig);
    }
  }).detach();
}

Scope::Scope() {
  if (g_depth.fetch_add(1) == 0) g_requested = false;
  if (g_watching) return;
  std::lock_guard<std::mutex> lock(g_scope_mutex);
  if (g_depth.load() == 1) {
    struct sigaction act {};
    act.sa_handler = on_stop_signal_c;
    sigemptyset(&act.sa_mask);
    sigaction(SIGINT, &act, &g_previous_int);
    sigaction(SIGTERM, &act, &g_previous_term);
  }
}

Scope::~Scope() {
  if (!g_watching) {
    std::lock_guard<std::mutex> lock(g_scope_mutex);
    if (g_depth.load() == 1) {
      sigaction(SIGINT, &g_previous_int, nullptr);
      sigaction(SIGTERM, &g_previous_term, nullptr);
    }
  }
  g_depth.fetch_sub(1);
}

bool requested() { return g_requested.load(); }

}  // namespace distill::interrupt
