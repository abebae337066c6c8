// Lesson 02: one thread serves every client with select(): it asks the kernel which sockets are
// ready and touches only those, at the price of fd_sets copied every call and no fd >= FD_SETSIZE.
#include <sys/select.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "acceptor.h"
#include "cli.h"
#include "echo_conn.h"
#include "fd.h"
#include "log.h"
#include "net.h"
#include "signals.h"

namespace {

const ServerSpec kSpec{"Lesson 02: echo server serving many clients with select().", 7002, {}};

// Everything the server knows about one client: its socket, the echo it owes, whether it has sent
// FIN. It and the handlers that touch only it are in common/echo_conn.h (lesson 02 explains them).
using Conn = EchoConn;

// The connections, indexed by fd: select() speaks in fd numbers, so conns[fd] is found without a
// search. A closed slot holds an invalid Fd and is reused, because the kernel always hands out the
// lowest free fd number; no slot is ever >= FD_SETSIZE (add_connection sees to that).
struct Table {
  std::vector<Conn> conns;
};

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
  acceptor.accept_all([&table](Fd client) { add_connection(table, std::move(client)); });
}

// Puts each connection's fd in the sets for what it wants now; returns the highest one (-1: none).
int watch_connections(const Table& table, fd_set* readable, fd_set* writable) {
  // TODO(lesson 02): for each open connection, FD_SET its fd in readable if wants_read() and in
  // writable if wants_write(); return the highest open fd.
  (void)table;
  (void)readable;
  (void)writable;
  (void)wants_read, (void)wants_write;  // given in echo_conn.h, for you to call
  return -1;
}

// Serves every connection select() reported ready, and closes those that failed or are finished.
void serve_ready(Table& table, const fd_set& readable, const fd_set& writable) {
  // TODO(lesson 02): for each open connection, call on_readable() if FD_ISSET(fd, &readable), then
  // on_writable() if FD_ISSET(fd, &writable); remove_connection() if either failed or finished().
  (void)table;
  (void)readable;
  (void)writable;
  (void)on_readable, (void)on_writable, (void)finished;  // given in echo_conn.h, for you to call
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
  Options options = parse_or_exit(argc, argv, kSpec);  // also applies --quiet
  install_signal_handlers();
  const sigset_t* wait_mask = block_stop_signals();
  Acceptor acceptor(listen_or_exit(options.host, options.port, /*nonblocking=*/true));
  announce_listening(options.host, local_port(acceptor.listener()));
  return run(acceptor, wait_mask);
}
