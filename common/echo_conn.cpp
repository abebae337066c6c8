#include "echo_conn.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "log.h"

bool wants_read(const EchoConn& conn) { return !conn.peer_done && !conn.out.over_high_water(); }

bool wants_write(const EchoConn& conn) { return !conn.out.empty(); }

bool finished(const EchoConn& conn) { return conn.peer_done && conn.out.empty(); }

bool echo_back(EchoConn& conn, const char* data, size_t size) {
  size_t sent = 0;
  if (conn.out.empty()) {  // queued bytes must leave first, or the echo would come back reordered
    long n = write_some(conn.fd.get(), data, size);
    if (n < 0 && errno != EAGAIN) return false;
    sent = n < 0 ? 0 : static_cast<size_t>(n);
  }
  conn.out.append(data + sent, size - sent);
  return true;
}

bool on_readable(EchoConn& conn) {
  char buffer[kReadChunk];
  ssize_t n;
  do n = ::read(conn.fd.get(), buffer, sizeof buffer);
  while (n < 0 && errno == EINTR);
  if (n > 0) return echo_back(conn, buffer, static_cast<size_t>(n));
  if (n == 0) {
    conn.peer_done = true;  // FIN: stop reading; close once everything owed is sent
    return true;
  }
  int error = errno;
  if (error == EAGAIN) return true;  // readiness is a hint, not a promise (see select(2), BUGS)
  chatter("read fd %d: %s", conn.fd.get(), std::strerror(error));
  return false;
}

bool on_writable(EchoConn& conn) {
  return conn.out.flush_to(conn.fd.get()) != OutputBuffer::Flush::kFailed;
}
