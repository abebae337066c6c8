// Messages on stderr. stdout carries only the readiness line, so scripts can read it.
//
// A log must never stop the service: a line that stderr cannot take at once (a full pipe nobody
// reads, a terminal paused with Ctrl-S) is dropped and counted, never waited for.
#pragma once

#include <cstdint>

// The first call of every server, before it opens any descriptor of its own:
// - opens each of descriptors 0, 1, 2 that is closed onto /dev/null. Otherwise the first socket
//   would get number 2, and every log line would be written into that client's echo;
// - makes writes to stderr non-blocking (see the file comment), without touching the flags of
//   the open file other processes may share with us;
// - ignores SIGPIPE, so that even a usage error written to a pipe nobody reads ends with the
//   contract's exit code, not killed by the signal.
void protect_standard_streams();

// --quiet silences chatter (per-connection messages); warnings always print.
void set_quiet(bool quiet);

[[gnu::format(printf, 1, 2)]] void chatter(const char* format, ...);
[[gnu::format(printf, 1, 2)]] void warn(const char* format, ...);

// Lines dropped so far because stderr could not take them at once.
uint64_t log_lines_dropped();
