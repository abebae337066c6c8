// OutputBuffer: bytes a server owes a peer but could not write yet (the socket buffer was full).
// An empty buffer owns no heap memory, so the many idle connections of a server cost little.
#pragma once

#include <cstddef>
#include <string>

class OutputBuffer {
 public:
  // Above this many unsent bytes a server stops reading from the peer (backpressure), so a
  // client that sends without reading cannot make the server's memory grow without bound.
  static constexpr size_t kHighWater = 256 * 1024;

  bool empty() const { return pending() == 0; }
  size_t pending() const { return data_.size() - offset_; }
  bool over_high_water() const { return pending() >= kHighWater; }
  // Bytes held in memory: the unsent ones, and sent ones not discarded yet.
  size_t held() const { return data_.size(); }

  // Keeps data behind what is pending. Bytes already sent are discarded first, so the buffer
  // never holds more than the unsent bytes plus this append: a peer that reads steadily but
  // slower than it sends never lets the buffer drain, and would otherwise grow it forever.
  void append(const char* data, size_t size);

  enum class Flush { kDone, kBlocked, kFailed };
  // Writes as much as the non-blocking socket takes. kDone: nothing left; kBlocked: the socket
  // buffer is full (wait for writability); kFailed: the peer is gone (errno says why).
  Flush flush_to(int fd);

 private:
  std::string data_;
  size_t offset_ = 0;  // bytes of data_ already written; erasing the front on every write is O(n)
};

// One send() of data on a non-blocking socket (EINTR retried, never SIGPIPE): it may take less.
// Returns the bytes written, or -1 with errno set (EAGAIN means nothing could be written).
long write_some(int fd, const char* data, size_t size);
