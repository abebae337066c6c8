// Signals every server handles the same way: SIGINT/SIGTERM ask for a clean stop (exit 0),
// SIGPIPE is ignored so a write to a vanished peer fails with EPIPE instead of killing us.
#pragma once

#include <signal.h>

// What a stop signal does. kSetFlag: the handler sets a flag that the event loop checks
// (without SA_RESTART, so a blocked call returns EINTR). kExitAtOnce: the handler calls _exit(0)
// and the kernel closes every socket; for a blocking server, which cannot wait for a signal and
// a socket at once, this is the only race-free way (a flag set just before read() blocks is
// missed until the peer sends something).
enum class OnStop { kSetFlag, kExitAtOnce };

void install_signal_handlers(OnStop on_stop = OnStop::kSetFlag);

bool stop_requested();

// For event loops: blocks SIGINT/SIGTERM and returns the mask that unblocks them, to pass to
// pselect/ppoll/epoll_pwait. The signal can then arrive only while the loop sleeps, so it can
// never slip in between checking stop_requested() and going to sleep.
const sigset_t* block_stop_signals();
