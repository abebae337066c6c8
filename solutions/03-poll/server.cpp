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
// lives in a parallel array, and both stay dense (see remove_connection). Entry 0 is the listener
// and entry 1 the signalfd; their Conns are unused placeholders that keep the indexes aligned.
constexpr size_t kListenerEntry = 0, kSignalEntry = 1, kFirstConnection = 2;
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
  for (size_t i = kFirstConnection; i < table.conns.size();) {
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

// The event loop: waits for readiness and serves what is ready, until a stop signal arrives on
// signals (a signalfd, watched like a socket). Returns the exit code.
int run(Acceptor& acceptor, int signals) {
  Table table;
  table.pollfds = {{acceptor.listener(), POLLIN, 0}, {signals, POLLIN, 0}};
  table.conns.resize(kFirstConnection);  // the placeholders
  for (;;) {
    // poll() reads events and writes only revents, so the array is kept from call to call. The
    // listener is not watched while the Acceptor rests (out of descriptors with no spare, see
    // common/acceptor.h): it would stay readable and make every call return at once.
    table.pollfds[kListenerEntry].events = acceptor.resting() ? 0 : POLLIN;
    if (::poll(table.pollfds.data(), table.pollfds.size(), acceptor.rest_ms()) < 0) {
      if (errno == EINTR) continue;  // a signal we do not handle, such as SIGCONT
      warn("poll: %s", std::strerror(errno));
      return 1;
    }
    if ((table.pollfds[kSignalEntry].revents & POLLIN) && handle_signals(signals)) return 0;
    serve_ready(table);
    if ((table.pollfds[kListenerEntry].revents & POLLIN) || acceptor.rest_ms() == 0) {
      accept_clients(acceptor, table);
    }
  }  // on return, the table's destructor closes every connection
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
