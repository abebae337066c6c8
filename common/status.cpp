#include "status.h"

#include <dirent.h>

#include <string>

#include "log.h"

namespace {
// Entries of /proc/self/fd, not counting the one opendir itself holds; -1 if it cannot be read
// (out of descriptors, say).
int descriptors_open() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int count = 0;
  while (dirent* entry = ::readdir(dir)) count += entry->d_name[0] != '.';
  ::closedir(dir);
  return count - 1;
}
}  // namespace

ServerCounters& server_counters() {
  static ServerCounters counters;
  return counters;
}

void report_status() {
  const ServerCounters& counters = server_counters();
  int open = descriptors_open();
  std::string descriptors = open < 0 ? "?" : std::to_string(open);  // ? when out of descriptors
  warn("status: %llu clients accepted, %llu turned away (out of descriptors), %s descriptors open, "
       "%llu log lines dropped",
       static_cast<unsigned long long>(counters.accepted.load()),
       static_cast<unsigned long long>(counters.turned_away.load()), descriptors.c_str(),
       static_cast<unsigned long long>(log_lines_dropped()));
}
