#include "out_buffer.h"

#include <sys/socket.h>

#include <cerrno>

long write_some(int fd, const char* data, size_t size) {
  for (;;) {
    // send(MSG_NOSIGNAL) rather than write(): a vanished peer gives EPIPE, never SIGPIPE.
    // One call only: after a short write the socket buffer is full, and a second call would
    // just spend a syscall to learn EAGAIN.
    ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n >= 0 || errno != EINTR) return n;
  }
}

void OutputBuffer::append(const char* data, size_t size) {
  // Moving the unsent bytes to the front costs a copy of at most kHighWater bytes, and only for a
  // peer that is behind already; erasing the sent ones as each send returns would copy every time.
  if (offset_ > 0) {
    data_.erase(0, offset_);
    offset_ = 0;
  }
  data_.append(data, size);
}

OutputBuffer::Flush OutputBuffer::flush_to(int fd) {
  if (!empty()) {
    long n = write_some(fd, data_.data() + offset_, pending());
    if (n < 0) return errno == EAGAIN ? Flush::kBlocked : Flush::kFailed;
    offset_ += static_cast<size_t>(n);
    if (!empty()) return Flush::kBlocked;
  }
  // Drained: give the memory back, so a connection that was busy once costs nothing when idle.
  std::string().swap(data_);
  offset_ = 0;
  return Flush::kDone;
}
