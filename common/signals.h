// Signals, the same in every server. Stop signals (SIGINT, SIGTERM, and SIGHUP, sent when the
// terminal that started the server goes away) end it with exit 0. SIGUSR1 asks for one status
// line on stderr. SIGPIPE is ignored, so a write to a vanished peer fails with EPIPE instead of
// killing the process.
#pragma once

#include <signal.h>

#include "fd.h"

// For lesson 01, a blocking server: it cannot wait for a socket and a signal at once, so a stop
// signal's handler calls _exit(0) and the kernel closes every socket (a flag set just before
// read() blocks would be missed until the peer sends something). SIGUSR1 is ignored.
void install_exit_handlers();

// For event loops (lessons 02 on): blocks the stop signals and SIGUSR1 in the calling thread,
// and in every thread it starts later, and returns a signalfd that is readable while one of them
// is pending. Watched beside the sockets, a signal is one more ready descriptor: it cannot slip in
// between a check and the wait, and a loop that never sleeps still sees it (lesson 02 explains
// why pselect cannot promise that). Exits 1 if it cannot (a setup failure).
Fd watch_signals();

// While it lives, a stop signal ends the process at once with exit 0, as in lesson 01, even after
// watch_signals() has blocked it for the signalfd. For the one blocking step before the event loop
// runs: the readiness line, which waits as long as a full pipe on stdout is not read. Blocked
// throughout, a stop signal would wait that long too.
class StopSignalsExitAtOnce {
 public:
  StopSignalsExitAtOnce();
  ~StopSignalsExitAtOnce();  // blocks them again first, then restores their handlers
  StopSignalsExitAtOnce(const StopSignalsExitAtOnce&) = delete;
  StopSignalsExitAtOnce& operator=(const StopSignalsExitAtOnce&) = delete;

 private:
  sigset_t saved_mask_;
  struct sigaction saved_actions_[3];
};

// Takes every signal pending on the signalfd: prints the status line for SIGUSR1, and returns
// true if a stop signal was among them.
bool handle_signals(int signal_fd);
