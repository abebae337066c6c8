// Socket set-up shared by the servers: addresses, the listening socket, and the readiness line.
// Lesson 01 writes socket/bind/listen itself; later lessons call listen_or_exit.
#pragma once

#include <sys/socket.h>

#include <string>

#include "fd.h"

// A numeric IPv4 or IPv6 address with a port, ready for bind() or connect().
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;

  int family() const { return storage.ss_family; }
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

// Parses a numeric host ("127.0.0.1", "::1"); returns false if it is not an address.
bool make_address(const std::string& host, int port, SocketAddress* address);

// "127.0.0.1:7001" or "[::1]:7001", for messages.
std::string describe(const std::string& host, int port);

// A listening TCP socket (SO_REUSEADDR, CLOEXEC, backlog SOMAXCONN; non-blocking if asked).
// On failure returns an invalid Fd and sets *error to "CALL HOST:PORT: reason".
Fd listen_tcp(const std::string& host, int port, bool nonblocking, std::string* error);

// listen_tcp, or the error on stderr and exit 1 (the contract's "setup failed").
Fd listen_or_exit(const std::string& host, int port, bool nonblocking);

// The port a socket is bound to: how a server started with --port 0 learns its real port.
int local_port(int fd);

// Prints the readiness line "listening on HOST:PORT" on stdout and flushes it at once, because
// tests and scripts wait for exactly this line before they connect. Exits 1 if it cannot.
void announce_listening(const std::string& host, int port);

// Prints "CALL: reason" (with context, if given) on stderr and exits 1. For set-up failures.
[[noreturn]] void die_setup(const std::string& call, const std::string& context = "");

// Adds O_NONBLOCK to the file status flags (F_GETFL, not F_GETFD, which returns FD_CLOEXEC).
bool set_nonblocking(int fd);
