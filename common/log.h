// Messages on stderr. stdout carries only the readiness line, so scripts can read it.
#pragma once

// --quiet silences chatter (per-connection messages); warnings always print.
void set_quiet(bool quiet);

[[gnu::format(printf, 1, 2)]] void chatter(const char* format, ...);
[[gnu::format(printf, 1, 2)]] void warn(const char* format, ...);
