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

// Blocks until a client connects.
Fd accept_client(int listener) {
  // TODO(lesson 01): loop on accept4(SOCK_CLOEXEC) until it returns a client; back off on
  // EMFILE/ENFILE instead of spinning (and say so once, not at every retry); any other error
  // loses one client, not the server.
  (void)listener;
  return Fd{};
}

// Writes all of data: write() may accept only part of it when the socket buffer is nearly full.
// Returns false if the peer is gone (EPIPE, ECONNRESET).
[[maybe_unused]] bool write_all(int fd, const char* data, size_t size) {
  // TODO(lesson 01): call write() until all size bytes are out; retry EINTR.
  (void)fd;
  (void)data;
  (void)size;
  return false;
}

// Echoes until the client half-closes (read returns 0) or the connection fails.
void serve_client(int fd) {
  // TODO(lesson 01): read() into a buffer and write_all() it back until read returns 0 (FIN)
  // or fails (retry EINTR).
  (void)fd;
}

}  // namespace

int main(int argc, char** argv) {
  protect_standard_streams();  // first: before anything else gets a descriptor (see the text)
  Options options = parse_or_exit(argc, argv, kSpec);  // also applies --quiet
  // SIGINT/SIGTERM/SIGHUP end the process at once (see common/signals.h for why a blocking server
  // cannot do better); the kernel closes the listener and the client's connection.
  install_exit_handlers();
  Fd listener = listen_on(options.host, options.port);
  if (!listener) {
    warn("listen_on() returned no listening socket (is its TODO filled in?)");
    return 1;
  }
  announce_listening(options.host, local_port(listener.get()));
  for (;;) {
    Fd client = accept_client(listener.get());
    if (!client) {
      warn("accept_client() returned no client (is its TODO filled in?)");
      return 1;
    }
    chatter("client connected (fd %d)", client.get());
    serve_client(client.get());
    chatter("client done (fd %d)", client.get());
  }  // the Fd destructor closes each connection on every path
}
