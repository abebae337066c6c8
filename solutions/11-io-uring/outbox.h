// Outbox: the echo one connection owes, for a server that lets the kernel send it (io_uring).
//
// A readiness server calls send() itself, and the bytes are copied into the kernel before send()
// returns. A completion server hands the kernel a pointer instead, and the kernel reads through it
// until the send completes, maybe much later. So the bytes of a send in flight must stay where they
// are, unchanged, until its completion: they are the current segment, and bytes that arrive in the
// meantime queue behind it in a second string. A std::string that grows moves its bytes, which is
// why lessons 02-06's OutputBuffer (it appends to the string it sends from) cannot be used here.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>

#include "out_buffer.h"

class Outbox {
 public:
  // Above this many bytes owed the server stops receiving from the peer (backpressure).
  static constexpr size_t kHighWater = OutputBuffer::kHighWater;

  size_t pending() const { return segment_.size() - sent_ + queued_.size(); }
  bool empty() const { return pending() == 0; }
  bool over_high_water() const { return pending() >= kHighWater; }
  // Bytes of heap memory held: 0 for a connection that owes nothing.
  size_t held() const { return segment_.capacity() + queued_.capacity() - 2 * std::string().capacity(); }

  // Bytes received, to be echoed after everything already owed. Never touches the segment.
  void append(const char* data, size_t size) { queued_.append(data, size); }

  // The bytes the next send should carry: the unsent rest of the current segment, or once that is
  // all sent, everything queued since, which becomes the new segment. Empty when nothing is owed.
  // The bytes stay put until consume() says a send took them, so call this only while no send is
  // in flight: called again meanwhile, it hands out the same bytes a second time.
  std::string_view next_send() {
    if (sent_ == segment_.size()) {
      segment_.swap(queued_);
      std::string().swap(queued_);  // the old segment, all sent: give its memory back
      sent_ = 0;
    }
    return std::string_view(segment_).substr(sent_);
  }

  // A send completed having taken n bytes of what next_send() returned; a short send takes fewer.
  void consume(size_t n) {
    sent_ += std::min(n, segment_.size() - sent_);
    if (empty()) {  // drained: an idle connection holds no memory
      std::string().swap(segment_);
      std::string().swap(queued_);
      sent_ = 0;
    }
  }

 private:
  std::string segment_;  // what sends are taking; the first sent_ bytes are sent already
  size_t sent_ = 0;
  std::string queued_;   // arrived since the segment began; becomes the next segment
};
