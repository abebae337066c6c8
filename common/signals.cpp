#include "signals.h"

#include <unistd.h>

namespace {
volatile sig_atomic_t g_stop = 0;
sigset_t g_wait_mask;

void on_stop_signal(int) { g_stop = 1; }

void exit_at_once(int) { _exit(0); }  // async-signal-safe, unlike exit()
}  // namespace

void install_signal_handlers(OnStop on_stop) {
  struct sigaction action {};
  action.sa_handler = on_stop == OnStop::kSetFlag ? on_stop_signal : exit_at_once;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: interrupt blocking calls
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

bool stop_requested() { return g_stop != 0; }

const sigset_t* block_stop_signals() {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigprocmask(SIG_BLOCK, &stop_signals, &g_wait_mask);
  sigdelset(&g_wait_mask, SIGINT);
  sigdelset(&g_wait_mask, SIGTERM);
  return &g_wait_mask;
}
