// Probes for watching the kernel from a test program: pipes, socket pairs and loopback TCP
// connections owned by Fd, epoll registrations, event masks by name, and the kernel's version.
#pragma once

#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <string_view>

#include "fd.h"

// Every probe throws std::system_error naming the call when the kernel refuses: a test that
// cannot build its situation must fail loudly, not observe something else.

struct Pipe {
  Fd read_end;
  Fd write_end;
};
// pipe2(O_NONBLOCK | O_CLOEXEC): reads and writes never block the test.
Pipe make_pipe();

struct Connection {
  Fd near;  // the side the test watches (for TCP, the accepted socket: the server's view)
  Fd far;   // the peer (for TCP, the client that connected)
};
// socketpair(AF_UNIX, type), both ends non-blocking.
Connection make_socketpair(int type);

// A non-blocking TCP listener on 127.0.0.1 and a port the kernel picks.
Fd listen_loopback();
// A non-blocking listener on 127.0.0.1:port with SO_REUSEPORT (port 0: the kernel picks), so
// several sockets can listen on one port and the kernel spreads connections among them.
Fd listen_loopback_reuseport(int port);
// A connected TCP client (blocking connect, then non-blocking), to 127.0.0.1:port.
Fd connect_loopback(int port);
// An established TCP connection over loopback; both ends non-blocking.
Connection make_tcp_connection();
// Closes with an RST instead of a FIN (SO_LINGER with a zero timeout), like a crashed peer.
void abort_connection(Fd* socket);
// Connections the kernel has completed and queued on a listener, not yet accepted (TCP_INFO).
int accept_queue_length(int listener);

// One write() of text; returns what write() returned.
ssize_t write_text(int fd, std::string_view text);
// One read() of at most max bytes into a scratch buffer; returns what read() returned.
ssize_t read_count(int fd, size_t max = 64 * 1024);
// Bytes waiting to be read (FIONREAD).
int bytes_waiting(int fd);
// Everything a non-blocking fd has to read now (reads until EAGAIN or EOF).
std::string read_available(int fd);
// size bytes that do not repeat every 256, so a test sees bytes reordered, lost or duplicated.
std::string byte_pattern(size_t size);

Fd make_epoll();
// EPOLL_CTL_ADD with data.fd = fd.
void watch(int epfd, int fd, uint32_t events);
// How many events epoll_wait returns now (timeout 0) or within timeout_ms.
int ready_count(int epfd, int timeout_ms = 0);
// The mask of the one event epoll_wait returns within timeout_ms; 0 if none.
uint32_t wait_for_mask(int epfd, int timeout_ms);
// poll() until fd shows one of `events`, at most timeout_ms: lets a state settle (a FIN or an
// RST crossing loopback) before a test looks at it through epoll. poll() does not touch epoll's
// ready list, so it does not change what epoll_wait will report.
bool settle(int fd, short events, int timeout_ms);

// The smallest epoll situation: a pipe whose read end its own epoll instance watches.
struct WatchedPipe {
  explicit WatchedPipe(uint32_t events);
  void put_byte();                // writes one byte into the pipe
  int wait(int timeout_ms = 0);   // ready_count on the epoll instance
  Pipe pipe;
  Fd epoll;
};

// An epoll event mask, printed by name: "EPOLLIN|EPOLLRDHUP".
struct EventMask {
  uint32_t bits = 0;
  friend bool operator==(EventMask, EventMask) = default;
};
std::string event_names(uint32_t bits);
std::ostream& operator<<(std::ostream& out, EventMask mask);

// An errno value, printed by name: "ENODEV".
struct ErrnoName {
  int value = 0;
  friend bool operator==(ErrnoName, ErrnoName) = default;
};
std::ostream& operator<<(std::ostream& out, ErrnoName error);

struct KernelVersion {
  int major = 0;
  int minor = 0;
  auto operator<=>(const KernelVersion&) const = default;
};
// "5.13.0-40-generic" -> {5, 13}; {0, 0} if unreadable.
KernelVersion parse_kernel_release(const std::string& release);
KernelVersion running_kernel();
std::string running_kernel_release();

// Sets the soft RLIMIT_NOFILE for one scope and restores the old limits when the scope ends.
class ScopedFdLimit {
 public:
  explicit ScopedFdLimit(rlim_t soft);
  ~ScopedFdLimit();
  ScopedFdLimit(const ScopedFdLimit&) = delete;
  ScopedFdLimit& operator=(const ScopedFdLimit&) = delete;

 private:
  rlimit saved_{};
};
// The descriptor number the next open() would get: every number below it is in use.
int lowest_free_fd();

// Checks condition every millisecond until it holds (true) or timeout_ms passes (false). Only for
// states that no descriptor reports (a queue's length, another thread's state): poll, do not sleep.
bool wait_until(const std::function<bool()>& condition, int timeout_ms);
