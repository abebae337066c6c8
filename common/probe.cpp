#include "probe.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ostream>
#include <stdexcept>
#include <system_error>
#include <thread>

#include "net.h"

namespace {
[[noreturn]] void fail(const char* call) {
  throw std::system_error(errno, std::generic_category(), call);
}

int checked(int result, const char* call) {
  if (result < 0) fail(call);
  return result;
}
}  // namespace

Pipe make_pipe() {
  int fds[2];
  checked(::pipe2(fds, O_NONBLOCK | O_CLOEXEC), "pipe2");
  return Pipe{Fd(fds[0]), Fd(fds[1])};
}

Connection make_socketpair(int type) {
  int fds[2];
  checked(::socketpair(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), "socketpair");
  return Connection{Fd(fds[0]), Fd(fds[1])};
}

Fd listen_loopback() {
  std::string error;
  Fd listener = listen_tcp("127.0.0.1", 0, true, &error);
  if (!listener) throw std::runtime_error(error);
  return listener;
}

Fd listen_loopback_reuseport(int port) {
  SocketAddress address;
  make_address("127.0.0.1", port, &address);
  Fd listener(checked(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), "socket"));
  int on = 1;
  checked(::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on),
          "setsockopt(SO_REUSEPORT)");
  checked(::bind(listener.get(), address.get(), address.length), "bind");
  checked(::listen(listener.get(), SOMAXCONN), "listen");
  return listener;
}

Fd connect_loopback(int port) {
  SocketAddress address;
  make_address("127.0.0.1", port, &address);
  Fd client(checked(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
  checked(::connect(client.get(), address.get(), address.length), "connect");
  if (!set_nonblocking(client.get())) fail("fcntl(O_NONBLOCK)");
  return client;
}

Connection make_tcp_connection() {
  Fd listener = listen_loopback();
  Fd client = connect_loopback(local_port(listener.get()));
  // connect() returns once the SYN-ACK arrives; the server side joins the accept queue when our
  // ACK is processed, which may happen a moment later, so wait for the listener to be readable.
  if (!settle(listener.get(), POLLIN, 2000)) throw std::runtime_error("accept queue stayed empty");
  int accepted = ::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  Fd server(checked(accepted, "accept4"));
  return Connection{std::move(server), std::move(client)};
}

void abort_connection(Fd* socket) {
  linger abort_on_close{1, 0};
  checked(::setsockopt(socket->get(), SOL_SOCKET, SO_LINGER, &abort_on_close,
                       sizeof abort_on_close), "setsockopt(SO_LINGER)");
  socket->reset();
}

int accept_queue_length(int listener) {
  // For a listening socket, TCP_INFO reports the accept queue's length in tcpi_unacked.
  tcp_info info{};
  socklen_t length = sizeof info;
  checked(::getsockopt(listener, IPPROTO_TCP, TCP_INFO, &info, &length), "getsockopt(TCP_INFO)");
  return static_cast<int>(info.tcpi_unacked);
}

ssize_t write_text(int fd, std::string_view text) { return ::write(fd, text.data(), text.size()); }

ssize_t read_count(int fd, size_t max) {
  static thread_local char scratch[64 * 1024];
  return ::read(fd, scratch, std::min(max, sizeof scratch));
}

int bytes_waiting(int fd) {
  int count = 0;
  checked(::ioctl(fd, FIONREAD, &count), "ioctl(FIONREAD)");
  return count;
}

std::string read_available(int fd) {
  std::string all;
  char chunk[64 * 1024];
  for (ssize_t n; (n = ::read(fd, chunk, sizeof chunk)) > 0;) {
    all.append(chunk, static_cast<size_t>(n));
  }
  return all;
}

std::string byte_pattern(size_t size) {
  std::string bytes(size, '\0');
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(i * 7 + i / 251);
  return bytes;
}

Fd make_epoll() { return Fd(checked(::epoll_create1(EPOLL_CLOEXEC), "epoll_create1")); }

void watch(int epfd, int fd, uint32_t events) {
  epoll_event event{};
  event.events = events;
  event.data.fd = fd;
  checked(::epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event), "epoll_ctl(ADD)");
}

int ready_count(int epfd, int timeout_ms) {
  epoll_event events[64];
  return checked(::epoll_wait(epfd, events, 64, timeout_ms), "epoll_wait");
}

uint32_t wait_for_mask(int epfd, int timeout_ms) {
  epoll_event event{};
  return checked(::epoll_wait(epfd, &event, 1, timeout_ms), "epoll_wait") == 1 ? event.events : 0;
}

bool settle(int fd, short events, int timeout_ms) {
  pollfd entry{fd, events, 0};
  return checked(::poll(&entry, 1, timeout_ms), "poll") == 1;
}

WatchedPipe::WatchedPipe(uint32_t events) : pipe(make_pipe()), epoll(make_epoll()) {
  watch(epoll.get(), pipe.read_end.get(), events);
}

void WatchedPipe::put_byte() {
  if (write_text(pipe.write_end.get(), "x") != 1) fail("write(pipe)");
}

int WatchedPipe::wait(int timeout_ms) { return ready_count(epoll.get(), timeout_ms); }

std::string event_names(uint32_t bits) {
  static const struct { uint32_t bit; const char* name; } kNames[] = {
      {EPOLLIN, "EPOLLIN"},   {EPOLLPRI, "EPOLLPRI"},       {EPOLLOUT, "EPOLLOUT"},
      {EPOLLERR, "EPOLLERR"}, {EPOLLHUP, "EPOLLHUP"},       {EPOLLRDHUP, "EPOLLRDHUP"},
      {EPOLLRDNORM, "EPOLLRDNORM"}, {EPOLLWRNORM, "EPOLLWRNORM"},
  };
  std::string text;
  for (const auto& [bit, name] : kNames) {
    if ((bits & bit) == 0) continue;
    text += (text.empty() ? "" : "|") + std::string(name);
    bits &= ~bit;
  }
  if (bits != 0) {
    char rest[16];
    std::snprintf(rest, sizeof rest, "0x%x", bits);
    text += (text.empty() ? "" : "|") + std::string(rest);
  }
  return text.empty() ? "0 (no events)" : text;
}

std::ostream& operator<<(std::ostream& out, EventMask mask) {
  return out << event_names(mask.bits);
}

std::ostream& operator<<(std::ostream& out, ErrnoName error) {
  const char* name = error.value > 0 ? ::strerrorname_np(error.value) : nullptr;
  return name ? out << name : out << error.value;
}

KernelVersion parse_kernel_release(const std::string& release) {
  KernelVersion version;
  if (std::sscanf(release.c_str(), "%d.%d", &version.major, &version.minor) != 2) return {};
  return version;
}

std::string running_kernel_release() {
  utsname names{};
  return ::uname(&names) == 0 ? names.release : "";
}

KernelVersion running_kernel() { return parse_kernel_release(running_kernel_release()); }

ScopedFdLimit::ScopedFdLimit(rlim_t soft) {
  checked(::getrlimit(RLIMIT_NOFILE, &saved_), "getrlimit");
  rlimit lowered = saved_;
  lowered.rlim_cur = soft;
  checked(::setrlimit(RLIMIT_NOFILE, &lowered), "setrlimit");
}

ScopedFdLimit::~ScopedFdLimit() { ::setrlimit(RLIMIT_NOFILE, &saved_); }

int lowest_free_fd() {
  int fd = checked(::open("/dev/null", O_RDONLY | O_CLOEXEC), "open(/dev/null)");
  ::close(fd);
  return fd;
}

bool wait_until(const std::function<bool()>& condition, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}
