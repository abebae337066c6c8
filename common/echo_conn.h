// EchoConn: what a readiness-driven echo server knows about one client, and the handlers that
// touch only that. Lessons 02-05 use it (lesson 02's text explains it); each adds its own state.
#pragma once

#include <cstddef>

#include "fd.h"
#include "out_buffer.h"

// The size of one read(): 64 KiB keeps the syscalls per byte low for bulk senders.
constexpr size_t kReadChunk = 64 * 1024;

// One client's socket, the echo it is owed, and whether it has stopped sending. A lesson that
// needs more per connection (epoll registration, edge-triggered bookkeeping) derives from it.
struct EchoConn {
  Fd fd;
  OutputBuffer out;        // echo bytes the socket did not take yet
  bool peer_done = false;  // read() returned 0: the client sends no more (it may still read)
};

// Backpressure: a client whose echo piles up is not read until it drains, so memory stays bounded.
bool wants_read(const EchoConn& conn);

// Only while output is pending: an idle socket is nearly always writable, so asking would wake
// every wait at once.
bool wants_write(const EchoConn& conn);

// The client sent FIN and has everything back: time to close.
bool finished(const EchoConn& conn);

// Sends data at once if nothing is queued ahead of it, and keeps what the socket refuses.
// Returns false if the client is gone (EPIPE, ECONNRESET).
bool echo_back(EchoConn& conn, const char* data, size_t size);

// Level-triggered (lessons 02-04): one read() of what has arrived, echoed back; a FIN sets
// peer_done, EAGAIN is no error. Returns false if the connection failed.
bool on_readable(EchoConn& conn);

// Sends what is queued. Returns false if the client is gone.
bool on_writable(EchoConn& conn);
