#include "log.h"

#include <cstdarg>
#include <cstdio>

namespace {
bool g_quiet = false;

void print_line(const char* format, va_list args) {
  // One fprintf per line keeps lines whole even when stderr is shared with other processes.
  char line[512];
  std::vsnprintf(line, sizeof line, format, args);
  std::fprintf(stderr, "server: %s\n", line);
}
}  // namespace

void set_quiet(bool quiet) { g_quiet = quiet; }

void chatter(const char* format, ...) {
  if (g_quiet) return;
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
