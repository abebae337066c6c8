// Lesson 01: an iterative echo server. It serves one client at a time, start to finish; every
// other client waits in the kernel's accept queue meanwhile. That wait is what lessons 02-06 remove.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <poll.h>
#include <string>

#include "cli.h"
#include "fd.h"
#include "log.h"
#include "net.h"
#include "signals.h"

namespace {

const ServerSpec kSpec{"Lesson 01: blocking, iterative echo server (one client at a time).", 7001, {}};

// socket -> setsockopt(SO_REUSEADDR) -> bind -> listen. Exits 1 naming the failed call.
Fd listen_on(const std::string& host, int port) {
  SocketAddress address;
  make_address(host, port, &address);  // given: the parser has already checked the host
  // TODO(lesson 01): socket(), setsockopt(SO_REUSEADDR), bind() to address, listen(SOMAXCONN);
  // on failure call die_setup() with the call's name (and describe(host, port) for bind).
  return Fd{};
}

// Blocks until a client connects. Returns an invalid Fd if a stop signal interrupted the wait.
Fd accept_client(int listener) {
  // TODO(lesson 01): loop on accept4(SOCK_CLOEXEC); on EINTR return Fd{} if stop_requested();
  // back off on EMFILE/ENFILE instead of spinning; any other error loses one client, not the server.
  (void)listener;
  return Fd{};
}

// Writes all of data: write() may accept only part of it when the socket buffer is nearly full.
// Returns false if the peer is gone (EPIPE, ECONNRESET) or a stop signal arrived.
[[maybe_unused]] bool write_all(int fd, const char* data, size_t size) {
  // TODO(lesson 01): call write() until all size bytes are out; retry EINTR unless stopping.
  (void)fd;
  (void)data;
  (void)size;
  return false;
}

// Echoes until the client half-closes (read returns 0), the connection fails, or we must stop.
void serve_client(int fd) {
  // TODO(lesson 01): read() into a buffer and write_all() it back until read returns 0 (FIN),
  // fails, or is interrupted by a stop signal (EINTR with stop_requested()).
  (void)fd;
}

}  // namespace

int main(int argc, char** argv) {
  Options options = parse_or_exit(argc, argv, kSpec);
  set_quiet(options.quiet);
  install_signal_handlers();
  Fd listener = listen_on(options.host, options.port);
  if (!listener) {
    warn("listen_on() returned no listening socket (is its TODO filled in?)");
    return 1;
  }
  announce_listening(options.host, local_port(listener.get()));
  // Known gap of a blocking server: a signal that lands just before accept() enters the kernel
  // is seen only after the next client. Lesson 02's pselect() closes that window.
  while (!stop_requested()) {
    Fd client = accept_client(listener.get());
    if (!client) break;  // only when a stop signal arrived
    chatter("client connected (fd %d)", client.get());
    serve_client(client.get());
    chatter("client done (fd %d)", client.get());
  }  // the Fd destructor closes the connection on every path
  return 0;
}
