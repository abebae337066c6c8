// Lesson 07: the echo server on libevent (evconnlistener + bufferevent), a mature event library.
// It meets the same contract as lessons 02-06, and `make bench` measures them against it.
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "cli.h"
#include "fd.h"
#include "log.h"
#include "net.h"
#include "status.h"

namespace {

const ServerSpec kSpec{
    "Lesson 07: echo server on libevent (bufferevents), the yardstick for `make bench`.", 7007, {}};

// Backpressure: stop reading a connection while its unsent output holds kHighWater bytes or more,
// and read again once writing has drained it to kLowWater. Memory per connection stays bounded.
constexpr size_t kHighWater = 256 * 1024;
constexpr size_t kLowWater = kHighWater / 4;
// After EMFILE, the listener rests this long instead of failing accept() in a tight loop.
constexpr timeval kAcceptPause{0, 100 * 1000};

// Given: owners that free each libevent object exactly once, like Fd does for descriptors.
template <auto Free>
struct Freer {
  template <class T>
  void operator()(T* object) const { Free(object); }
};
using EventBase = std::unique_ptr<event_base, Freer<event_base_free>>;
using Event = std::unique_ptr<event, Freer<event_free>>;
using Listener = std::unique_ptr<evconnlistener, Freer<evconnlistener_free>>;
using BufferEvent = std::unique_ptr<bufferevent, Freer<bufferevent_free>>;

struct Server;

struct Connection {
  Server* server = nullptr;
  BufferEvent events;      // owns the socket too (BEV_OPT_CLOSE_ON_FREE)
  bool peer_done = false;  // the client half-closed: close once everything owed is sent
};

// Declared in teardown order, reversed: connections go first, the event base last.
struct Server {
  EventBase base;
  Listener listener;
  Event resume_accepting;
  bool accepts_paused = false;    // out of descriptors since the last accept: said once
  std::vector<Event> on_signals;  // SIGINT, SIGTERM, SIGHUP stop; SIGUSR1 reports status
  std::map<Connection*, std::unique_ptr<Connection>> connections;
};

// Given: frees the bufferevent, which closes the socket.
void close_connection(Connection* connection) {
  chatter("connection closed (fd %d)",
          static_cast<int>(bufferevent_getfd(connection->events.get())));
  connection->server->connections.erase(connection);
}

// The echo: hand everything read over to the output (evbuffer moves its chunks, no copy), and
// stop reading while the output holds kHighWater bytes or more (the client is not reading).
void on_read(bufferevent* events, void* /*arg*/) {
  evbuffer* output = bufferevent_get_output(events);
  evbuffer_add_buffer(output, bufferevent_get_input(events));
  if (evbuffer_get_length(output) >= kHighWater) bufferevent_disable(events, EV_READ);
}

// Called after a write leaves kLowWater bytes or fewer unsent (the write watermark).
void on_drained(bufferevent* events, void* arg) {
  auto* connection = static_cast<Connection*>(arg);
  if (connection->peer_done) {
    if (evbuffer_get_length(bufferevent_get_output(events)) == 0) close_connection(connection);
  } else if (!(bufferevent_get_enabled(events) & EV_READ)) {
    bufferevent_enable(events, EV_READ);
  }
}

// Given: EOF is the client's half-close (send what is owed, then close); errors close at once.
void on_event(bufferevent* events, short what, void* arg) {
  auto* connection = static_cast<Connection*>(arg);
  if (what & BEV_EVENT_ERROR) {
    chatter("connection error: %s", std::strerror(EVUTIL_SOCKET_ERROR()));
    close_connection(connection);
  } else if (what & BEV_EVENT_EOF) {
    connection->peer_done = true;
    bufferevent_disable(events, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(events)) == 0) close_connection(connection);
  }
}

void on_accept(evconnlistener*, evutil_socket_t fd, sockaddr* /*peer*/, int /*peer_length*/,
               void* arg) {
  auto* server = static_cast<Server*>(arg);
  BufferEvent events(bufferevent_socket_new(server->base.get(), fd, BEV_OPT_CLOSE_ON_FREE));
  if (!events) {
    warn("bufferevent_socket_new failed; dropping the connection");
    Fd drop(fd);
    return;
  }
  auto connection = std::make_unique<Connection>();
  connection->server = server;
  connection->events = std::move(events);
  bufferevent* raw = connection->events.get();
  bufferevent_setcb(raw, on_read, on_drained, on_event, connection.get());
  bufferevent_setwatermark(raw, EV_WRITE, kLowWater, 0);
  bufferevent_enable(raw, EV_READ);
  server_counters().accepted.fetch_add(1, std::memory_order_relaxed);
  server->accepts_paused = false;
  chatter("client connected (fd %d)", static_cast<int>(fd));
  server->connections.emplace(connection.get(), std::move(connection));
}

// Out of descriptors (EMFILE) the pending connection keeps the listener readable, so libevent
// would call accept() again at once, forever. Rest the listener instead and try again later.
void on_accept_error(evconnlistener* listener, void* arg) {
  auto* server = static_cast<Server*>(arg);
  int error = EVUTIL_SOCKET_ERROR();
  if (!server->accepts_paused) {
    chatter("accept: %s; pausing accepts for 100 ms at a time", std::strerror(error));
  }
  server->accepts_paused = true;
  evconnlistener_disable(listener);
  evtimer_add(server->resume_accepting.get(), &kAcceptPause);
}

void on_resume_accepting(evutil_socket_t, short, void* arg) {
  evconnlistener_enable(static_cast<Server*>(arg)->listener.get());
}

// libevent's signal events: its own handler writes to a socketpair the loop watches, the same
// idea as lesson 02's signalfd, so a busy loop sees the signal too.
void on_signal(evutil_socket_t signal_number, short, void* arg) {
  if (signal_number == SIGUSR1) report_status();
  else event_base_loopbreak(static_cast<Server*>(arg)->base.get());
}

void set_up(Server& server, const Options& options) {
  server.base.reset(event_base_new());
  if (!server.base) die_setup("event_base_new");
  Fd listening = listen_or_exit(options.host, options.port, /*nonblocking=*/true);
  int port = local_port(listening.get());
  // Backlog 0: the socket is already listening. The listener now owns (and will close) it.
  unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC;
  server.listener.reset(
      evconnlistener_new(server.base.get(), on_accept, &server, flags, 0, listening.get()));
  if (!server.listener) die_setup("evconnlistener_new");
  listening.release();
  evconnlistener_set_error_cb(server.listener.get(), on_accept_error);
  server.resume_accepting.reset(evtimer_new(server.base.get(), on_resume_accepting, &server));
  if (!server.resume_accepting) die_setup("evtimer_new");
  for (int signal_number : {SIGINT, SIGTERM, SIGHUP, SIGUSR1}) {
    Event& event = server.on_signals.emplace_back(
        evsignal_new(server.base.get(), signal_number, on_signal, &server));
    if (!event || evsignal_add(event.get(), nullptr) < 0) die_setup("evsignal_new");
  }
  announce_listening(options.host, port);
}

}  // namespace

int main(int argc, char** argv) {
  protect_standard_streams();  // first: before anything else gets a descriptor (lesson 01)
  Options options = parse_or_exit(argc, argv, kSpec);  // also applies --quiet
  // libevent writes with writev(), not send(MSG_NOSIGNAL): a vanished peer would raise SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  Server server;
  set_up(server, options);
  if (event_base_dispatch(server.base.get()) < 0) die_setup("event_base_dispatch");
  chatter("stopping with %zu connections open", server.connections.size());
  return 0;  // ~Server frees the connections (closing their sockets), then the event base
}
