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
  Fd listener(::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener) die_setup("socket");
  // Lets a restarted server bind while connections of the previous run are in TIME_WAIT.
  int on = 1;
  if (::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0)
    die_setup("setsockopt(SO_REUSEADDR)");
  if (::bind(listener.get(), address.get(), address.length) < 0) die_setup("bind", describe(host, port));
  // The backlog bounds the queue of connections the kernel has completed but we have not accepted.
  if (::listen(listener.get(), SOMAXCONN) < 0) die_setup("listen");
  return listener;
}

// Blocks until a client connects.
Fd accept_client(int listener) {
  bool said = false;  // out of resources: said once per wait, not at every retry
  for (;;) {
    int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) return Fd(fd);
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      // Out of resources: accept would fail again at once. Back off instead of spinning.
      if (!said) warn("accept: %s; retrying every 100 ms", std::strerror(errno));
      said = true;
      ::poll(nullptr, 0, 100);
    }
    // Anything else (EINTR; ECONNABORTED: the client gave up while queued) loses one client, not us.
  }
}

// Writes all of data: write() may accept only part of it when the socket buffer is nearly full.
// Returns false if the peer is gone (EPIPE, ECONNRESET).
bool write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// Echoes until the client half-closes (read returns 0) or the connection fails.
void serve_client(int fd) {
  char buffer[16 * 1024];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n > 0) {
      if (!write_all(fd, buffer, static_cast<size_t>(n))) return;
    } else if (n == 0) {
      return;  // FIN: the client sends no more, and everything it sent has been echoed
    } else if (errno != EINTR) {
      chatter("read: %s", std::strerror(errno));  // ECONNRESET: the client reset the connection
      return;
    }
  }
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
