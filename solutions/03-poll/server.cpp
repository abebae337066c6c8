// Lesson 03: the same loop with poll(): a pollfd array that survives each call, no FD_SETSIZE.
// Still, every call hands the kernel the whole array and the kernel checks every entry: O(n).
#include <poll.h>
#include <sys/socket.h>

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

const ServerSpec kSpec{"Lesson 03: echo server serving many clients with poll().", 7003, {}};

// Everything the server knows about one client: its socket, the echo it owes, whether it has sent
// FIN. It and the handlers that touch only it are in common/echo_conn.h (lesson 02 explains them).
using Conn = EchoConn;

// pollfds[i] and conns[i] are the same connection: poll() takes a dense array of fds, so the state
// lives in a parallel array, and both stay dense (see remove_connection). Entry 0 is the listener;
// its Conn is an unused placeholder that keeps the indexes aligned.
struct Table {
  std::vector<pollfd> pollfds;
  std::vector<Conn> conns;
};

// Appends a new connection to both arrays, at the same index. Any fd number will do: a pollfd
// holds the number itself, where an fd_set has a bit at that position.
void add_connection(Table& table, Fd client) {
  int fd = client.get();
  table.conns.emplace_back().fd = std::move(client);
  table.pollfds.push_back({fd, POLLIN, 0});  // nothing is owed to a new client yet: read only
  chatter("client connected (fd %d)", fd);
}

// Closes the connection at index and moves the last entry into its place, in both arrays, so the
// array stays without holes. The entry moved in has not been served yet: look at index again.
void remove_connection(Table& table, size_t index) {
  chatter("client closed (fd %d)", table.pollfds[index].fd);
  if (index + 1 < table.conns.size()) {
    table.conns[index] = std::move(table.conns.back());  // closes the removed connection's socket
    table.pollfds[index] = table.pollfds.back();
  }
  table.conns.pop_back();
  table.pollfds.pop_back();
}

// Accepts every client waiting in the queue: one turn of the loop per client would be wasteful.
void accept_clients(Acceptor& acceptor, Table& table) {
  acceptor.accept_all([&table](Fd client) { add_connection(table, std::move(client)); });
}

// The events to ask poll() for on this connection, from what it wants now.
short events_for(const Conn& conn) {
  return static_cast<short>((wants_read(conn) ? POLLIN : 0) | (wants_write(conn) ? POLLOUT : 0));
}

// Serves every connection poll() reported ready, closes those that failed or are finished, and
// updates the events of the others (only serving a connection changes what it wants).
void serve_ready(Table& table) {
  for (size_t i = 1; i < table.conns.size();) {  // 1: entry 0 is the listener
    Conn& conn = table.conns[i];
    short revents = table.pollfds[i].revents;
    // No case for POLLERR/POLLHUP: a reset socket also reports the POLLIN or POLLOUT it was asked
    // for, and that read or write meets the error. (Every live connection asks for one of them.)
    bool ok = true;
    if (revents & POLLIN) ok = on_readable(conn);
    if (ok && (revents & POLLOUT)) ok = on_writable(conn);
    if (!ok || finished(conn)) {
      remove_connection(table, i);  // the last entry moved into i: do not skip it
      continue;
    }
    table.pollfds[i].events = events_for(conn);
    ++i;
  }
}

// The event loop: waits for readiness and serves what is ready, until a stop signal. Returns the
// exit code.
int run(Acceptor& acceptor, const sigset_t* wait_mask) {
  Table table;
  table.pollfds.push_back({acceptor.listener(), POLLIN, 0});
  table.conns.emplace_back();  // the listener's placeholder
  while (!stop_requested()) {
    // poll() reads events and writes only revents, so the array is kept from call to call.
    // SIGINT/SIGTERM are blocked except inside ppoll: one that arrived since the check above is
    // still pending and interrupts the call at once, instead of waiting for the next client.
    if (::ppoll(table.pollfds.data(), table.pollfds.size(), nullptr, wait_mask) < 0) {
      if (errno == EINTR) continue;  // a signal: the loop condition decides
      warn("ppoll: %s", std::strerror(errno));
      return 1;
    }
    serve_ready(table);
    if (table.pollfds[0].revents & POLLIN) accept_clients(acceptor, table);
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
