// Lesson 04: one thread serves every client with level-triggered epoll. The kernel keeps the list
// of watched sockets, so each wait costs only the ready ones, and each event carries its Conn*.
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <list>

#include "acceptor.h"
#include "cli.h"
#include "echo_conn.h"
#include "epoll_setup.h"
#include "fd.h"
#include "log.h"
#include "net.h"
#include "signals.h"

namespace {

const ServerSpec kSpec{"Lesson 04: echo server serving many clients with level-triggered epoll.",
                       7004, {}};

// Events taken per epoll_wait: the length of our array, never the number of connections. The
// kernel fills at most this many; the other ready sockets stay ready for the next call.
constexpr int kMaxEvents = 256;

// Everything the server knows about one client: lesson 02's EchoConn (common/echo_conn.h) and
// its epoll registration. epoll hands its address back in data.ptr.
struct Conn : EchoConn {
  uint32_t watching = 0;   // the events registered with epoll now: epoll_ctl only on a change
  std::list<Conn>::iterator self;  // where it sits in Table::conns, to unlink it in O(1)
};

// The epoll instance and the connections it watches. A list, because a Conn must never move
// while epoll holds its address (a vector would move them all when it grows).
struct Table {
  Fd epoll;
  std::list<Conn> conns;
  std::list<Conn> closed;  // closed during this batch of events, freed once the batch is done
  Fd signals;              // the signalfd; its event's data.ptr is &signals, which is not a Conn
  bool listener_watched = true;
};

// Registers conn with epoll, once for its whole life: readable, with its address as the cookie
// every event will carry. Returns false if epoll_ctl failed (ENOMEM, or ENOSPC: max_user_watches).
bool watch_connection(int epoll, Conn& conn) {
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.ptr = &conn;
  if (::epoll_ctl(epoll, EPOLL_CTL_ADD, conn.fd.get(), &event) < 0) return false;
  conn.watching = EPOLLIN;
  return true;
}

// Stores a new connection and registers it with epoll.
void add_connection(Table& table, Fd client) {
  Conn& conn = table.conns.emplace_front();
  conn.self = table.conns.begin();
  conn.fd = std::move(client);
  errno = 0;  // a watch_connection that fails without calling epoll_ctl leaves no reason
  if (!watch_connection(table.epoll.get(), conn)) {
    warn("epoll_ctl(ADD) fd %d: %s; closing that connection", conn.fd.get(),
         errno != 0 ? std::strerror(errno) : "not called (is watch_connection's TODO filled in?)");
    table.conns.erase(conn.self);  // the Fd closes the socket; the client sees EOF
    return;
  }
  chatter("client connected (fd %d)", conn.fd.get());
}

// Unregisters and closes the connection. Its memory lives on until the batch is done (see run).
void remove_connection(Table& table, Conn& conn) {
  chatter("client closed (fd %d)", conn.fd.get());
  // DEL before close: close() alone removes the fd from epoll only when no other descriptor
  // (dup, fork) refers to the same socket; otherwise events would keep coming for freed memory.
  ::epoll_ctl(table.epoll.get(), EPOLL_CTL_DEL, conn.fd.get(), nullptr);
  conn.fd.reset();
  table.closed.splice(table.closed.end(), table.conns, conn.self);  // moves the node, not the Conn
}

// Accepts every client waiting in the queue: one epoll_wait per client would be wasteful.
void accept_clients(Acceptor& acceptor, Table& table) {
  acceptor.accept_all([&table](Fd client) { add_connection(table, std::move(client)); });
}

// The events to ask epoll for on this connection, from what it wants now. Level-triggered like
// poll(): an EPOLLOUT left armed on a socket with room would be reported by every epoll_wait.
uint32_t events_for(const Conn& conn) {
  return (wants_read(conn) ? EPOLLIN : 0u) | (wants_write(conn) ? EPOLLOUT : 0u);
}

// Brings conn's registration in line with what it wants. A ping-pong message changes nothing,
// so it costs no epoll_ctl; only backed-up output (arm EPOLLOUT), drained output (disarm it) and
// backpressure (drop EPOLLIN) do. Returns false if epoll_ctl failed.
bool update_events(int epoll, Conn& conn) {
  uint32_t wanted = events_for(conn);
  if (wanted == conn.watching) return true;
  epoll_event event{};
  event.events = wanted;
  event.data.ptr = &conn;
  if (::epoll_ctl(epoll, EPOLL_CTL_MOD, conn.fd.get(), &event) < 0) return false;
  conn.watching = wanted;
  return true;
}

// Serves one connection epoll reported ready, and closes it if it failed or is finished; else
// updates its events (only serving a connection changes what it wants).
void serve_ready(Table& table, Conn& conn, uint32_t events) {
  // EPOLLERR and EPOLLHUP come even unasked. Hand them to the read or write the connection wants,
  // which meets the error and closes it; ignored, they would wake every epoll_wait, forever.
  if (events & (EPOLLERR | EPOLLHUP)) events |= conn.watching;
  bool ok = true;
  if (events & EPOLLIN) ok = on_readable(conn);
  if (ok && (events & EPOLLOUT)) ok = on_writable(conn);
  if (!ok || finished(conn) || !update_events(table.epoll.get(), conn)) {
    remove_connection(table, conn);
  }
}

// Creates the epoll instance and registers the listener (data.ptr null: the one entry that is not
// a Conn or the signalfd) and the signalfd (data.ptr &table.signals, so the table must not move).
void set_up_epoll(Table& table, int listener, Fd signals) {
  table.epoll = epoll_or_exit();
  watch_or_exit(table.epoll.get(), listener, EPOLLIN, nullptr, "listener");
  table.signals = std::move(signals);
  watch_or_exit(table.epoll.get(), table.signals.get(), EPOLLIN, &table.signals, "signalfd");
}

// The listener is not watched while the Acceptor rests (out of descriptors with no spare, see
// common/acceptor.h): level-triggered, it stays readable and every epoll_wait would return at once.
void watch_listener_unless_resting(Table& table, const Acceptor& acceptor) {
  bool wanted = !acceptor.resting();
  if (wanted == table.listener_watched) return;
  epoll_event event{};
  event.events = wanted ? EPOLLIN : 0u;
  event.data.ptr = nullptr;
  if (::epoll_ctl(table.epoll.get(), EPOLL_CTL_MOD, acceptor.listener(), &event) == 0) {
    table.listener_watched = wanted;
  }
}

// Hands one event to its handler: the listener's (data.ptr null) to accept_clients, a Conn's to
// serve_ready, unless that Conn was closed earlier in this batch. Returns true once it has.
bool dispatch(Acceptor& acceptor, Table& table, const epoll_event& event) {
  auto* conn = static_cast<Conn*>(event.data.ptr);
  if (conn == nullptr) accept_clients(acceptor, table);
  else if (conn->fd) serve_ready(table, *conn, event.events);
  return true;
}

// The event loop: waits for readiness and serves what is ready, until a stop signal arrives on
// the signalfd. Returns the exit code.
int run(Acceptor& acceptor, Table& table) {
  epoll_event events[kMaxEvents];
  for (;;) {
    int ready = ::epoll_wait(table.epoll.get(), events, kMaxEvents, acceptor.rest_ms());
    if (ready < 0) {
      if (errno == EINTR) continue;  // a signal we do not handle, such as SIGCONT
      warn("epoll_wait: %s", std::strerror(errno));
      return 1;
    }
    bool stop = false;
    for (int i = 0; i < ready; ++i) {
      if (events[i].data.ptr == &table.signals) {
        stop = handle_signals(table.signals.get());
      } else if (!dispatch(acceptor, table, events[i])) {
        warn("dispatch() handled no event (is its TODO filled in?)");
        return 1;
      }
    }
    // Only now may closed connections be freed: until the batch is done, a later event could
    // still hold the address of one closed earlier (see the lesson text).
    table.closed.clear();
    if (stop) return 0;  // the table's destructor closes every connection
    if (acceptor.rest_ms() == 0) accept_clients(acceptor, table);  // the rest is over: try again
    watch_listener_unless_resting(table, acceptor);
  }
}

}  // namespace

int main(int argc, char** argv) {
  protect_standard_streams();  // first: before anything else gets a descriptor (lesson 01)
  Options options = parse_or_exit(argc, argv, kSpec);  // also applies --quiet
  Fd signals = watch_signals();
  Fd listening = listen_or_exit(options.host, options.port, /*nonblocking=*/true);
  Table table;
  set_up_epoll(table, listening.get(), std::move(signals));
  Acceptor acceptor(std::move(listening));  // its spare last: the one descriptor it can do without
  announce_listening(options.host, local_port(acceptor.listener()));
  return run(acceptor, table);
}
