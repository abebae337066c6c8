// Lesson 02: one thread serves every client with select(): it asks the kernel which sockets are
// ready and touches only those, at the price of fd_sets copied every call and no fd >= FD_SETSIZE.
#include <sys/select.h>
#include <sys/time.h>
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
  int fd = client.get();
  if (fd >= FD_SETSIZE) {
    chatter("fd %d is at or past select()'s limit FD_SETSIZE = %d: closing that connection", fd,
            FD_SETSIZE);
    return;  // client's destructor closes the socket
  }
  if (static_cast<size_t>(fd) >= table.conns.size()) table.conns.resize(fd + 1);
  table.conns[fd].fd = std::move(client);
  chatter("client connected (fd %d)", fd);
}

// Closes the connection on fd and empties its slot (the Fd closes the socket).
void remove_connection(Table& table, int fd) {
  chatter("client closed (fd %d)", fd);
  table.conns[fd] = Conn{};
}

// Accepts every client waiting in the queue: one turn of the loop per client would be wasteful.
void accept_clients(Acceptor& acceptor, Table& table) {
  acceptor.accept_all([&table](Fd client) { add_connection(table, std::move(client)); });
}

// Puts each connection's fd in the sets for what it wants now; returns the highest one (-1: none).
int watch_connections(const Table& table, fd_set* readable, fd_set* writable) {
  int max_fd = -1;
  for (int fd = 0; fd < static_cast<int>(table.conns.size()); ++fd) {
    const Conn& conn = table.conns[fd];
    if (!conn.fd) continue;
    if (wants_read(conn)) FD_SET(fd, readable);
    if (wants_write(conn)) FD_SET(fd, writable);
    max_fd = fd;
  }
  return max_fd;
}

// Serves every connection select() reported ready, and closes those that failed or are finished.
void serve_ready(Table& table, const fd_set& readable, const fd_set& writable) {
  for (int fd = 0; fd < static_cast<int>(table.conns.size()); ++fd) {
    Conn& conn = table.conns[fd];
    if (!conn.fd) continue;
    bool ok = true;
    if (FD_ISSET(fd, &readable)) ok = on_readable(conn);
    if (ok && FD_ISSET(fd, &writable)) ok = on_writable(conn);
    if (!ok || finished(conn)) remove_connection(table, fd);
  }
}

// How long select() may sleep: until a descriptor is ready (nullptr), unless the Acceptor rests
// (out of descriptors with no spare, see common/acceptor.h) and wants to try again in a while.
timeval* wait_timeout(const Acceptor& acceptor, timeval* storage) {
  int ms = acceptor.rest_ms();
  if (ms < 0) return nullptr;
  *storage = timeval{ms / 1000, (ms % 1000) * 1000};
  return storage;
}

// The event loop: waits for readiness and serves what is ready, until a stop signal arrives on
// signals (a signalfd, watched like a socket). Returns the exit code.
int run(Acceptor& acceptor, int signals) {
  Table table;
  for (;;) {
    // select() overwrites the sets with its answer, so they are built afresh before every call.
    fd_set readable, writable;
    FD_ZERO(&readable);
    FD_ZERO(&writable);
    FD_SET(signals, &readable);
    if (!acceptor.resting()) FD_SET(acceptor.listener(), &readable);
    int max_fd = std::max({signals, acceptor.listener(),
                           watch_connections(table, &readable, &writable)});
    timeval timeout;
    if (::select(max_fd + 1, &readable, &writable, nullptr, wait_timeout(acceptor, &timeout)) < 0) {
      if (errno == EINTR) continue;  // a signal we do not handle, such as SIGCONT
      warn("select: %s", std::strerror(errno));
      return 1;
    }
    if (FD_ISSET(signals, &readable) && handle_signals(signals)) return 0;  // the table closes all
    serve_ready(table, readable, writable);
    if (FD_ISSET(acceptor.listener(), &readable) || acceptor.rest_ms() == 0) {
      accept_clients(acceptor, table);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  protect_standard_streams();  // first: before anything else gets a descriptor (lesson 01)
  Options options = parse_or_exit(argc, argv, kSpec);  // also applies --quiet
  Fd signals = watch_signals();
  Acceptor acceptor(listen_or_exit(options.host, options.port, /*nonblocking=*/true));
  announce_listening(options.host, local_port(acceptor.listener()));
  return run(acceptor, signals.get());
}
