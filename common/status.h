// What a server says about itself when asked (SIGUSR1): counters that any part of it bumps, from
// any thread.
#pragma once

#include <atomic>
#include <cstdint>

struct ServerCounters {
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> turned_away{0};  // accepted and closed at once: out of descriptors
};

ServerCounters& server_counters();

// One line on stderr: clients accepted and turned away, descriptors open, log lines dropped.
void report_status();
