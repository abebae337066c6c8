#include "log.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>

namespace {
std::atomic<bool> g_quiet{false};
std::atomic<uint64_t> g_dropped{0};
bool g_stderr_is_socket = false;  // set once at start-up, before any thread exists

// One write per line keeps lines whole even when stderr is shared with other processes or threads
// (a pipe takes up to PIPE_BUF = 4096 bytes in one piece).
void print_line(const char* format, va_list args) {
  char line[512];
  int length = std::snprintf(line, sizeof line, "server: ");
  length += std::vsnprintf(line + length, sizeof line - length, format, args);
  if (length > static_cast<int>(sizeof line) - 2) length = sizeof line - 2;  // cut, not lost
  line[length++] = '\n';
  // On a socket (systemd's journal, for one) MSG_DONTWAIT makes this one call non-blocking.
  ssize_t n = g_stderr_is_socket ? ::send(STDERR_FILENO, line, length, MSG_DONTWAIT | MSG_NOSIGNAL)
                                 : ::write(STDERR_FILENO, line, length);
  if (n != length) g_dropped.fetch_add(1, std::memory_order_relaxed);
}

void open_if_closed(int fd) {
  if (::fcntl(fd, F_GETFD) >= 0 || errno != EBADF) return;
  // open() returns the lowest free number; the lower standard descriptors are open by now.
  int null = ::open("/dev/null", O_RDWR);
  if (null >= 0 && null != fd) ::close(null);  // fd was taken meanwhile: nothing left to do
}

// O_NONBLOCK is a flag of the open file, which the shell, make or a supervisor may share with us:
// setting it on fd 2 itself could make *their* writes fail. A pipe, FIFO or terminal opened again
// through /proc is a new open file of our own, so the flag stays ours.
void make_stderr_nonblocking() {
  struct stat about {};
  if (::fstat(STDERR_FILENO, &about) < 0) return;
  if (S_ISSOCK(about.st_mode)) {
    g_stderr_is_socket = true;
  } else if (S_ISFIFO(about.st_mode) || S_ISCHR(about.st_mode)) {
    int fd = ::open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return;  // a pipe with no reader left (ENXIO): writes fail with EPIPE, never block
    ::dup2(fd, STDERR_FILENO);
    ::close(fd);
  }  // a regular file never makes a write wait for a reader
}
}  // namespace

void protect_standard_streams() {
  for (int fd : {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO}) open_if_closed(fd);
  make_stderr_nonblocking();
  ::signal(SIGPIPE, SIG_IGN);
}

void set_quiet(bool quiet) { g_quiet.store(quiet, std::memory_order_relaxed); }

void chatter(const char* format, ...) {
  if (g_quiet.load(std::memory_order_relaxed)) return;
  va_list args;
  va_start(args, format);
  print_line(format, args);
  va_end(args);
}

void warn(const char* format, ...) {
  va_list args;
  va_start(args, format);
  print_line(format, args);
  va_end(args);
}

uint64_t log_lines_dropped() { return g_dropped.load(std::memory_order_relaxed); }
