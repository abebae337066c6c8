// Lesson 06: lesson 05's edge-triggered server as a reactor (one object per connection, with its
// own handlers, found through data.ptr) that closes connections idle for too long, on time.
// The reactor is in reactor.h and reactor.cpp; this file is the command line and the set-up.
#include <sys/epoll.h>

#include <chrono>

#include "cli.h"
#include "log.h"
#include "net.h"
#include "reactor.h"
#include "signals.h"

namespace {

// Below a millisecond a client would be closed before its echo could come back.
const ServerSpec kSpec{"Lesson 06: edge-triggered epoll echo server that closes idle connections.",
                       7006,
                       {{.name = "--idle-timeout", .kind = LessonFlag::Kind::kNumber,
                         .help = "close a connection idle this long (default 60; 0.001 to 1e6)",
                         .default_value = 60, .min_value = 0.001, .max_value = 1e6}}};

}  // namespace

int main(int argc, char** argv) {
  using namespace reactor;
  protect_standard_streams();  // first: before anything else gets a descriptor (lesson 01)
  Options options = parse_or_exit(argc, argv, kSpec);  // also applies --quiet
  Signals signals(watch_signals());
  std::chrono::duration<double> idle_timeout(options.numbers["--idle-timeout"]);
  Reactor reactor(std::chrono::duration_cast<Timers::Duration>(idle_timeout));
  Listener listener(reactor, listen_or_exit(options.host, options.port, /*nonblocking=*/true));
  if (!reactor.watch(listener.fd(), &listener, EPOLLIN)) die_setup("epoll_ctl(ADD listener)");
  if (!reactor.watch(signals.fd(), &signals, EPOLLIN)) die_setup("epoll_ctl(ADD signalfd)");
  announce_listening(options.host, local_port(listener.fd()));
  return reactor.run(listener, signals);
}
