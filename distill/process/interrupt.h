// Ctrl-C (SIGINT) and SIGTERM as a request to stop, received by one watcher thread.
//
// Why not a signal handler: oneDNN's JIT sgemm moves the stack pointer off the thread's stack while
// it runs (valgrind reports a switch to a heap address), and a handler delivered to that thread
// pushes its frame there, corrupting memory.
// Measured with a no-op SIGUSR1 handler signalled every 2 ms during training: wrong losses, NaN
// gradients, "index out of range" and segfaults in autograd; none with OpenBLAS's sgemm. So the
// signals are blocked in every thread and taken with sigwait by a thread that computes nothing.
#pragma once

namespace distill::interrupt {

// Call first in main, before any other thread exists (threads inherit the blocked mask, and so do
// the stage processes it execs). Without it (tests, library use) a Scope falls back to a handler.
void start_watcher();

// While a Scope is alive, SIGINT/SIGTERM set requested() and a second one ends the process; with
// no Scope alive a signal ends the process as it would by default (exit 130 / 143).
class Scope {
 public:
  Scope();
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
};

// A stop was requested since the outermost live Scope began.
bool requested();

}  // namespace distill::interrupt
