#include "net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "log.h"
#include "signals.h"

bool make_address(const std::string& host, int port, SocketAddress* address) {
  *address = SocketAddress{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address->storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&address->storage);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    address->length = sizeof(sockaddr_in);
    return true;
  }
  if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    address->length = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

std::string describe(const std::string& host, int port) {
  bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Fd listen_tcp(const std::string& host, int port, bool nonblocking, std::string* error) {
  auto fail = [&](const char* call) {
    *error = std::string(call) + " " + describe(host, port) + ": " + std::strerror(errno);
    return Fd{};
  };
  SocketAddress address;
  if (!make_address(host, port, &address)) {
    errno = EINVAL;
    return fail("parse address");
  }
  int type = SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0);
  Fd fd(::socket(address.family(), type, 0));
  if (!fd) return fail("socket");
  // Without SO_REUSEADDR a restarted server cannot bind while old connections sit in TIME_WAIT.
  int on = 1;
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0) return fail("setsockopt");
  if (::bind(fd.get(), address.get(), address.length) < 0) return fail("bind");
  if (::listen(fd.get(), SOMAXCONN) < 0) return fail("listen");
  return fd;
}

Fd listen_or_exit(const std::string& host, int port, bool nonblocking) {
  std::string error;
  Fd fd = listen_tcp(host, port, nonblocking, &error);
  if (!fd) {
    warn("%s", error.c_str());
    std::exit(1);
  }
  return fd;
}

int local_port(int fd) {
  sockaddr_storage storage{};
  socklen_t length = sizeof storage;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &length) < 0) return -1;
  if (storage.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&storage)->sin_port);
}

void announce_listening(const std::string& host, int port) {
  StopSignalsExitAtOnce meanwhile;  // a full pipe on stdout must not hold up a stop (see signals.h)
  std::printf("listening on %s:%d\n", host.c_str(), port);
  // Whoever started us waits for this line; if it cannot be written (stdout is /dev/full, or a
  // pipe whose reader is gone), nobody would ever learn the server is up: that is a failed setup.
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) die_setup("write readiness line to stdout");
}

void die_setup(const std::string& call, const std::string& context) {
  int saved = errno;
  warn("%s%s%s: %s", call.c_str(), context.empty() ? "" : " ", context.c_str(),
       std::strerror(saved));
  std::exit(1);
}

bool set_nonblocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  return flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}
