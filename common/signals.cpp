#include "signals.h"

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <iterator>

#include "net.h"
#include "status.h"

namespace {
constexpr int kStopSignals[] = {SIGINT, SIGTERM, SIGHUP};

void exit_at_once(int) { _exit(0); }  // async-signal-safe, unlike exit()

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  for (int stop : kStopSignals) sigaddset(&set, stop);
  return set;
}

sigset_t watched_signals() {
  sigset_t set = stop_signals();
  sigaddset(&set, SIGUSR1);
  return set;
}
}  // namespace

void install_exit_handlers() {
  struct sigaction action {};
  action.sa_handler = exit_at_once;
  sigemptyset(&action.sa_mask);
  for (int stop : kStopSignals) sigaction(stop, &action, nullptr);
  signal(SIGUSR1, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
}

StopSignalsExitAtOnce::StopSignalsExitAtOnce() {
  static_assert(std::size(kStopSignals) == std::size(decltype(saved_actions_){}));
  struct sigaction action {};
  action.sa_handler = exit_at_once;
  sigemptyset(&action.sa_mask);
  for (size_t i = 0; i < std::size(kStopSignals); ++i) {
    sigaction(kStopSignals[i], &action, &saved_actions_[i]);
  }
  // A stop signal already pending is delivered here, at once.
  sigset_t stops = stop_signals();
  pthread_sigmask(SIG_UNBLOCK, &stops, &saved_mask_);
}

StopSignalsExitAtOnce::~StopSignalsExitAtOnce() {
  pthread_sigmask(SIG_SETMASK, &saved_mask_, nullptr);  // first: none may reach the old handler
  for (size_t i = 0; i < std::size(kStopSignals); ++i) {
    sigaction(kStopSignals[i], &saved_actions_[i], nullptr);
  }
}

Fd watch_signals() {
  signal(SIGPIPE, SIG_IGN);
  sigset_t set = watched_signals();
  // Blocked, a signal is not delivered to a handler but stays pending, which is what makes the
  // signalfd readable. Threads inherit the mask, so none of them takes the signal away either.
  if (int error = pthread_sigmask(SIG_BLOCK, &set, nullptr); error != 0) {
    errno = error;
    die_setup("pthread_sigmask");
  }
  Fd fd(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!fd) die_setup("signalfd");
  return fd;
}

bool handle_signals(int signal_fd) {
  bool stop = false;
  signalfd_siginfo info;
  while (::read(signal_fd, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
    if (info.ssi_signo == SIGUSR1) report_status();
    else stop = true;
  }
  return stop;
}
