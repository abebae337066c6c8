// Lesson 11's Outbox: the echo a connection owes when the kernel reads it through a pointer (an
// io_uring send). The bytes of a send in flight never move; a short send goes on where it stopped;
// bytes queued meanwhile follow in order; a drained Outbox holds no memory.
#include <doctest/doctest.h>

#include <string>
#include <string_view>

#include "11-io-uring/outbox.h"
#include "probe.h"

TEST_CASE("outbox_bytes_queued_during_a_send_never_move_the_bytes_it_is_reading") {
  Outbox out;
  out.append("first", 5);
  std::string_view in_flight = out.next_send();  // the kernel now reads through this pointer
  const char* where = in_flight.data();
  std::string more = byte_pattern(1 << 20);  // enough to reallocate any string it were appended to
  out.append(more.data(), more.size());
  CHECK_MESSAGE(in_flight.data() == where, "the bytes of the send in flight moved");
  CHECK(std::string(where, 5) == "first");
  CHECK(out.pending() == 5 + more.size());
}

TEST_CASE("outbox_a_short_send_goes_on_where_it_stopped_before_anything_queued_behind_it") {
  Outbox out;
  out.append("abcdef", 6);
  CHECK(out.next_send() == "abcdef");
  out.append("XYZ", 3);  // arrives while the send is in flight
  out.consume(2);        // the send completed short: 2 of 6 bytes
  CHECK(out.next_send() == "cdef");
  out.consume(4);
  CHECK(out.next_send() == "XYZ");
  out.consume(3);
  CHECK(out.empty());
  CHECK(out.next_send().empty());
}

TEST_CASE("outbox_delivers_many_pieces_in_order_whatever_the_send_sizes") {
  Outbox out;
  std::string data = byte_pattern(300000), delivered;
  size_t appended = 0, step = 1;
  while (delivered.size() < data.size()) {
    size_t piece = std::min<size_t>(step * 97 % 5000 + 1, data.size() - appended);
    out.append(data.data() + appended, piece);
    appended += piece;
    std::string_view bytes = out.next_send();
    size_t taken = std::min(bytes.size(), step * 31 % 7000 + 1);  // sends of every size, many short
    delivered.append(bytes.substr(0, taken));
    out.consume(taken);
    ++step;
  }
  CHECK_MESSAGE(delivered == data, "bytes were lost, repeated or reordered");
}

TEST_CASE("outbox_holds_no_memory_once_drained") {
  Outbox out;
  std::string data = byte_pattern(100000);
  out.append(data.data(), data.size());
  CHECK(out.held() > 0);
  out.consume(out.next_send().size());
  CHECK(out.empty());
  CHECK_MESSAGE(out.held() == 0, "an idle connection should hold no echo memory");
}

TEST_CASE("outbox_high_water_counts_every_byte_owed") {
  Outbox out;
  std::string data(Outbox::kHighWater - 1, 'x');
  out.append(data.data(), data.size());
  out.next_send();  // in flight, still owed
  CHECK_FALSE(out.over_high_water());
  out.append("y", 1);
  CHECK(out.over_high_water());
}
