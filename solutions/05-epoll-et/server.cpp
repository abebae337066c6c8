// Lesson 05: the epoll server made edge-triggered. Each socket is registered once and never
// modified; an edge is announced once, so the server itself remembers what is left to read.
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <list>
#include <vector>

#include "acceptor.h"
#include "cli.h"
#include "echo_conn.h"
#include "epoll_setup.h"
#include "fd.h"
#include "log.h"
#include "net.h"
#include "signals.h"

namespace {

const ServerSpec kSpec{"Lesson 05: echo server serving many clients with edge-triggered epoll.",
                       7005,
                       {{.name = "--et-read-once",
                         .help = "DELIBERATELY BROKEN, for the stall demonstration: one read per "
                                 "edge"}}};

// Events taken per epoll_wait: the length of our array, never the number of connections. The
// kernel fills at most this many; the other ready sockets stay ready for the next call.
constexpr int kMaxEvents = 256;
// Fairness: reads one connection gets per turn. Draining a fast sender to EAGAIN could keep
// everyone else waiting; past this bound it goes to the back of Table::ready.
constexpr int kReadsPerTurn = 4;

// Everything the server knows about one client: lesson 02's EchoConn (common/echo_conn.h) and
// what edge-triggering makes it remember. epoll hands its address back in data.ptr.
struct Conn : EchoConn {
  // An edge said input is waiting and no read has found its end yet. Bytes already queued raise no
  // new edge, so after a read stopped early (fairness, backpressure) this flag is all that says so.
  bool readable = false;
  // An event reported a FIN, urgent data or an error: a short read may stop in front of them,
  // so from now on only 0 or EAGAIN proves the input drained (see on_readable).
  bool read_to_eagain = false;
  bool queued = false;  // on Table::ready
  std::list<Conn>::iterator self;  // where it sits in Table::conns, to unlink it in O(1)
};

// The epoll instance and the connections it watches. A list, because a Conn must never move
// while epoll holds its address (a vector would move them all when it grows).
struct Table {
  Fd epoll;
  std::list<Conn> conns;
  std::list<Conn> closed;  // closed during this batch of events, freed once the batch is done
  std::vector<Conn*> ready;  // connections that stopped at the fairness bound, served next batch
  bool read_once = false;    // --et-read-once: the deliberate bug of the stall demonstration
  Fd signals;                // the signalfd; its event's data.ptr is &signals, which is not a Conn
};

// Input may be waiting and backpressure allows reading it. Asked after every write too: that is
// how reading resumes once output drains, with no new edge for the bytes that waited meanwhile.
bool should_read(const Conn& conn) { return conn.readable && wants_read(conn); }

// Reads and echoes until the input is drained, or max_reads reads (fairness), or backpressure.
// Edge-triggered: bytes left unread are not announced again, so conn.readable stays set until a
// read proves the input drained. Returns false if the connection failed.
bool on_readable(Conn& conn, int max_reads) {
  char buffer[kReadChunk];
  for (int reads = 0; reads < max_reads && should_read(conn);) {
    ssize_t n = ::read(conn.fd.get(), buffer, sizeof buffer);
    if (n > 0) {
      ++reads;
      if (!echo_back(conn, buffer, static_cast<size_t>(n))) return false;
      // A short read took all the data TCP held, and any byte arriving later raises a new edge, so
      // the read that would say EAGAIN is skipped. Not if a FIN or urgent data may wait behind it.
      if (static_cast<size_t>(n) < sizeof buffer && !conn.read_to_eagain) conn.readable = false;
    } else if (n == 0) {
      conn.peer_done = true;  // FIN: stop reading; close once everything owed is sent
      conn.readable = false;
    } else if (int error = errno; error == EAGAIN) {
      conn.readable = false;  // drained: the next byte to arrive raises a new edge
    } else if (error != EINTR) {
      chatter("read fd %d: %s", conn.fd.get(), std::strerror(error));
      return false;
    }
  }
  return true;
}

// Registers conn with epoll once for its whole life, for everything it will ever want, edge-
// triggered: no epoll_ctl per message, nor per backpressure episode. EPOLLRDHUP reports the
// peer's FIN and EPOLLPRI urgent data, both of which can hide behind a short read.
// Returns false if epoll_ctl failed (ENOMEM, or ENOSPC: max_user_watches).
bool watch_connection(int epoll, Conn& conn) {
  epoll_event event{};
  event.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET;
  event.data.ptr = &conn;
  return ::epoll_ctl(epoll, EPOLL_CTL_ADD, conn.fd.get(), &event) == 0;
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

// Accepts every client waiting in the queue. Edge-triggered, this is a must: clients left in the
// queue raise no new edge, and would wait until yet another client connects.
void accept_clients(Acceptor& acceptor, Table& table) {
  acceptor.accept_all([&table](Fd client) { add_connection(table, std::move(client)); });
}

// Serves one connection: an event epoll reported (events), or its turn from Table::ready (events
// 0). Closes it if it failed or is finished; queues it again if it stopped at the fairness bound.
void serve_ready(Table& table, Conn& conn, uint32_t events) {
  // An edge is the only news there will be: write it down. EPOLLERR and EPOLLHUP come even
  // unasked; the read or write they lead to meets the error and closes the connection.
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLPRI | EPOLLERR | EPOLLHUP)) conn.readable = true;
  if (events & (EPOLLRDHUP | EPOLLPRI | EPOLLERR | EPOLLHUP)) conn.read_to_eagain = true;
  bool ok = true;
  // EPOLLOUT comes with nearly every edge; it matters only while output is pending.
  if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && wants_write(conn)) ok = on_writable(conn);
  if (ok && should_read(conn)) ok = on_readable(conn, table.read_once ? 1 : kReadsPerTurn);
  if (table.read_once) conn.readable = false;  // the deliberate bug: forget what is left unread
  if (!ok || finished(conn)) {
    remove_connection(table, conn);
  } else if (should_read(conn) && !conn.queued) {
    conn.queued = true;
    table.ready.push_back(&conn);
  }
}

// Creates the epoll instance and registers the listener (data.ptr null: the one entry that is not
// a Conn or the signalfd) and the signalfd (data.ptr &table.signals, so the table must not move),
// edge-triggered like the rest: accept_all and handle_signals both read until EAGAIN.
void set_up_epoll(Table& table, int listener, Fd signals) {
  table.epoll = epoll_or_exit();
  uint32_t events = EPOLLIN | EPOLLET;
  watch_or_exit(table.epoll.get(), listener, events, nullptr, "listener");
  table.signals = std::move(signals);
  watch_or_exit(table.epoll.get(), table.signals.get(), events, &table.signals, "signalfd");
}

// Hands one event to its handler: the listener's (data.ptr null) to accept_clients, a Conn's to
// serve_ready, unless that Conn was closed earlier in this batch. Returns true once it has.
bool dispatch(Acceptor& acceptor, Table& table, const epoll_event& event) {
  auto* conn = static_cast<Conn*>(event.data.ptr);
  if (conn == nullptr) accept_clients(acceptor, table);
  else if (conn->fd) serve_ready(table, *conn, event.events);
  return true;
}

// Gives each connection queued at the fairness bound one more turn, in the order they queued.
// Those that stop at the bound again queue for the next batch, behind the new events.
void serve_queued(Table& table, std::vector<Conn*>& turns) {
  turns.swap(table.ready);
  for (Conn* conn : turns) {
    conn->queued = false;
    if (conn->fd) serve_ready(table, *conn, 0);  // skip one an event closed in this batch
  }
  turns.clear();
}

// The event loop: waits for readiness and serves what is ready, until a stop signal arrives on
// the signalfd. Returns the exit code.
int run(Acceptor& acceptor, Table& table) {
  epoll_event events[kMaxEvents];
  std::vector<Conn*> turns;
  for (;;) {
    // Queued connections hold input no edge will announce again: while there are any, only look
    // for new events (timeout 0), never sleep. Otherwise sleep until an event, or until the
    // Acceptor's rest is over (out of descriptors with no spare, see common/acceptor.h).
    int timeout = table.ready.empty() ? acceptor.rest_ms() : 0;
    int ready = ::epoll_wait(table.epoll.get(), events, kMaxEvents, timeout);
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
    serve_queued(table, turns);
    // Only now may closed connections be freed: until the batch is done, a later event or the
    // ready list could still hold the address of one closed earlier (see the lesson text).
    table.closed.clear();
    if (stop) return 0;  // the table's destructor closes every connection
    // Clients queued meanwhile raise no new edge: once the rest is over, try again.
    if (acceptor.rest_ms() == 0) accept_clients(acceptor, table);
  }
}

}  // namespace

int main(int argc, char** argv) {
  protect_standard_streams();  // first: before anything else gets a descriptor (lesson 01)
  Options options = parse_or_exit(argc, argv, kSpec);  // also applies --quiet
  Fd signals = watch_signals();
  Fd listening = listen_or_exit(options.host, options.port, /*nonblocking=*/true);
  Table table;
  table.read_once = options.switches["--et-read-once"];
  set_up_epoll(table, listening.get(), std::move(signals));
  Acceptor acceptor(std::move(listening));  // its spare last: the one descriptor it can do without
  announce_listening(options.host, local_port(acceptor.listener()));
  return run(acceptor, table);
}
