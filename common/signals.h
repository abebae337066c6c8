// Signals every server handles the same way: SIGINT/SIGTERM ask for a clean stop (exit 0),
// SIGPIPE is ignored so a write to a vanished peer fails with EPIPE instead of killing us.
#pragma once

#include <signal.h>

// Installs the handlers without SA_RESTART, so a blocked accept()/read() returns EINTR and
// the caller gets to look at stop_requested().
void install_signal_handlers();

bool stop_requested();

// For event loops: blocks SIGINT/SIGTERM and returns the mask that unblocks them, to pass to
// pselect/ppoll/epoll_pwait. The signal can then arrive only while the loop sleeps, so it can
// never slip in between checking stop_requested() and going to sleep.
const sigset_t* block_stop_signals();
