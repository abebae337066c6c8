// Lesson 03: the same loop with poll(): a pollfd array that survives each call, no FD_SETSIZE.
// Still, every call hands the kernel the whole array and the kernel checks every entry: O(n).
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

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

const ServerSpec kSpec{"Lesson 03: echo server serving many clients with poll().", 7003, {}};

// One read per readiness report; 64 KiB keeps the syscalls per byte low for bulk senders.
constexpr size_t kReadChunk = 64 * 1024;

// Everything the server knows about one client.
struct Conn {
  Fd fd;
  OutputBuffer out;        // echo bytes the socket did not take yet
  bool peer_done = false;  // read() returned 0: the client sends no more (it may still read)
};

// pollfds[i] and conns[i] are the same connection: poll() takes a dense array of fds, so the state
// lives in a parallel array, and both stay dense (see remove_connection). Entry 0 is the listener;
// its Conn is an unused placeholder that keeps the indexes aligned.
struct Table {
  std::vector<pollfd> pollfds;
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

// Appends a new connection to both arrays, at the same index. Any fd number will do: a pollfd
// holds the number itself, where an fd_set has a bit at that position.
void add_connection(Table& table, Fd client) {
  // TODO(lesson 03): append a Conn owning client to table.conns and, at the same index, a pollfd
  // {fd, POLLIN, 0} to table.pollfds.
  (void)table;
  (void)client;
}

// Closes the connection at index and moves the last entry into its place, in both arrays, so the
// array stays without holes. The entry moved in has not been served yet: look at index again.
void remove_connection(Table& table, size_t index) {
  // TODO(lesson 03): move the last entry of both arrays into index (unless index is the last), then
  // pop_back() both; moving a Conn over another closes the overwritten one's socket.
  (void)table;
  (void)index;
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

// The events to ask poll() for on this connection, from what it wants now.
short events_for(const Conn& conn) {
  // TODO(lesson 03): return POLLIN if wants_read(conn), plus POLLOUT if wants_write(conn).
  (void)conn;
  (void)wants_read, (void)wants_write;  // given above, for you to call
  return 0;
}

// Serves every connection poll() reported ready, closes those that failed or are finished, and
// updates the events of the others (only serving a connection changes what it wants).
void serve_ready(Table& table) {
  // TODO(lesson 03): for each entry from index 1 on, call on_readable() if pollfds[i].revents has
  // POLLIN, then on_writable() if POLLOUT; remove_connection() if either failed or finished() (and
  // look at index i again), otherwise set pollfds[i].events = events_for(conn).
  (void)table;
  (void)on_readable, (void)on_writable, (void)finished;  // given above, for you to call
  (void)remove_connection;
  (void)events_for;
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
  Options options = parse_or_exit(argc, argv, kSpec);
  set_quiet(options.quiet);
  install_signal_handlers();
  const sigset_t* wait_mask = block_stop_signals();
  Acceptor acceptor(listen_or_exit(options.host, options.port, /*nonblocking=*/true));
  announce_listening(options.host, local_port(acceptor.listener()));
  return run(acceptor, wait_mask);
}
