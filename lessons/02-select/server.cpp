// Lesson 02: one thread serves every client with select(): it asks the kernel which sockets are
// ready and touches only those, at the price of fd_sets copied every call and no fd >= FD_SETSIZE.
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "acceptor.h"
#include "cli.h"
#include "fd.h"
#include "log.h"
#include "net.h"
#include "out_buffer.h"
#include "signals.h"

namespace {

const ServerSpec kSpec{"Lesson 02: echo server serving many clients with select().", 7002, {}};

// One read per readiness report; 64 KiB keeps the syscalls per byte low for bulk senders.
constexpr size_t kReadChunk = 64 * 1024;

// Everything the server knows about one client.
struct Conn {
  Fd fd;
  OutputBuffer out;        // echo bytes the socket did not take yet
  bool peer_done = false;  // read() returned 0: the client sends no more (it may still read)
};

// The connections, indexed by fd: select() speaks in fd numbers, so conns[fd] is found without a
// search. A closed slot holds an invalid Fd and is reused, because the kernel always hands out the
// lowest free fd number; no slot is ever >= FD_SETSIZE (add_connection sees to that).
struct Table {
  std::vector<Conn> conns;
};

// Backpressure: a client whose echo piles up is not read until it drains, so memory stays bounded.
bool wants_read(const Conn& conn) { return !conn.peer_done && !conn.out.over_high_water(); }
// Only while output is pending: an idle socket is nearly always writable, so asking would wake
// every wait at once.
bool wants_write(const Conn& conn) { return !conn.out.empty(); }
// The client sent FIN and has everything back: time to close.
bool finished(const Conn& conn) { return conn.peer_done && conn.out.empty(); }

// Sends data at once if nothing is queued ahead of it, and keeps what the socket refuses.
// Returns false if the client is gone (EPIPE, ECONNRESET).
bool echo_back(Conn& conn, const char* data, size_t size) {
  size_t sent = 0;
  if (conn.out.empty()) {  // queued bytes must leave first, or the echo would come back reordered
    long n = write_some(conn.fd.get(), data, size);
    if (n < 0 && errno != EAGAIN) return false;
    sent = n < 0 ? 0 : static_cast<size_t>(n);
  }
  conn.out.append(data + sent, size - sent);
  return true;
}

// Reads what has arrived and echoes it. Returns false if the connection failed.
bool on_readable(Conn& conn) {
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

// Sends what is queued. Returns false if the client is gone.
bool on_writable(Conn& conn) {
  return conn.out.flush_to(conn.fd.get()) != OutputBuffer::Flush::kFailed;
}

// Stores a new connection in its fd's slot. select() cannot watch an fd >= FD_SETSIZE: FD_SET would
// write past the end of the fd_set. So such a client is turned away (closed at once: it sees EOF).
void add_connection(Table& table, Fd client) {
  // TODO(lesson 02): if client.get() >= FD_SETSIZE, warn() naming the fd and FD_SETSIZE and return
  // (the Fd closes it); otherwise grow table.conns if needed and move client into conns[fd].fd.
  (void)table;
  (void)client;
}

// Closes the connection on fd and empties its slot (the Fd closes the socket).
void remove_connection(Table& table, int fd) {
  // TODO(lesson 02): reset the slot table.conns[fd] to an empty Conn{}, which closes the socket.
  (void)table;
  (void)fd;
}

// Accepts every client waiting in the queue: one turn of the loop per client would be wasteful.
void accept_clients(Acceptor& acceptor, Table& table) {
  for (;;) {
    Fd client;
    switch (acceptor.accept_one(&client)) {
      case Acceptor::Result::kAccepted:
        add_connection(table, std::move(client));
        break;
      case Acceptor::Result::kRejected:  // out of fds: that client was turned away; try the next
      case Acceptor::Result::kRetry:
        break;
      case Acceptor::Result::kEmpty:
        return;
    }
  }
}

// Puts each connection's fd in the sets for what it wants now; returns the highest one (-1: none).
int watch_connections(const Table& table, fd_set* readable, fd_set* writable) {
  // TODO(lesson 02): for each open connection, FD_SET its fd in readable if wants_read() and in
  // writable if wants_write(); return the highest open fd.
  (void)table;
  (void)readable;
  (void)writable;
  (void)wants_read, (void)wants_write;  // given above, for you to call
  return -1;
}

// Serves every connection select() reported ready, and closes those that failed or are finished.
void serve_ready(Table& table, const fd_set& readable, const fd_set& writable) {
  // TODO(lesson 02): for each open connection, call on_readable() if FD_ISSET(fd, &readable), then
  // on_writable() if FD_ISSET(fd, &writable); remove_connection() if either failed or finished().
  (void)table;
  (void)readable;
  (void)writable;
  (void)on_readable, (void)on_writable, (void)finished;  // given above, for you to call
  (void)remove_connection;
}

// The event loop: waits for readiness and serves what is ready, until a stop signal. Returns the
// exit code.
int run(Acceptor& acceptor, const sigset_t* wait_mask) {
  Table table;
  while (!stop_requested()) {
    // select() overwrites the sets with its answer, so they are built afresh before every call.
    fd_set readable, writable;
    FD_ZERO(&readable);
    FD_ZERO(&writable);
    FD_SET(acceptor.listener(), &readable);
    int max_fd = std::max(acceptor.listener(), watch_connections(table, &readable, &writable));
    // SIGINT/SIGTERM are blocked except inside pselect: one that arrived since the check above is
    // still pending and interrupts the call at once, instead of waiting for the next client.
    if (::pselect(max_fd + 1, &readable, &writable, nullptr, nullptr, wait_mask) < 0) {
      if (errno == EINTR) continue;  // a signal: the loop condition decides
      warn("pselect: %s", std::strerror(errno));
      return 1;
    }
    serve_ready(table, readable, writable);
    if (FD_ISSET(acceptor.listener(), &readable)) accept_clients(acceptor, table);
  }
  return 0;  // the table's destructor closes every connection
}

}  // namespace

int main(int argc, char** argv) {
  Options options = parse_or_exit(argc, argv, kSpec);
  set_quiet(options.quiet);
  install_signal_handlers();
  const sigset_t* wait_mask = block_stop_signals();
  Acceptor acceptor(listen_or_exit(options.host, options.port, /*nonblocking=*/true));
  announce_listening(options.host, local_port(acceptor.listener()));
  return run(acceptor, wait_mask);
}
