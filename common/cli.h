// The command line every server in this repository shares (the contract in the README):
// [--host ADDR] [--port N] [--quiet] [--help] plus the flags a lesson adds.
#pragma once

#include <map>
#include <string>
#include <vector>

// A flag a lesson adds: a switch (no value), a number in a range (--idle-timeout 1.5,
// --workers 4), or one word of a fixed list (--listener reuseport). Written with designated
// initializers: {.name = "--workers", .kind = LessonFlag::Kind::kNumber, ...}.
struct LessonFlag {
  enum class Kind { kSwitch, kNumber, kChoice };
  std::string name;  // with the dashes: "--idle-timeout"
  Kind kind = Kind::kSwitch;
  std::string help = {};
  // kNumber: the value when the flag is absent, and the range accepted (inclusive).
  double default_value = 0;
  double min_value = 0;
  double max_value = 0;
  bool whole = false;               // kNumber: whole numbers only (a count)
  std::string unit = "SECONDS";     // kNumber: how the value is named in the usage text
  std::vector<std::string> choices = {};  // kChoice: the words accepted; the first is the default
};

struct ServerSpec {
  std::string summary;  // one line: what this server demonstrates
  int default_port = 0;
  std::vector<LessonFlag> lesson_flags;
};

struct Options {
  std::string host = "127.0.0.1";  // loopback: never every interface unless asked
  int port = 0;
  bool quiet = false;
  std::map<std::string, double> numbers;       // lesson flags of kind kNumber
  std::map<std::string, bool> switches;        // lesson flags of kind kSwitch
  std::map<std::string, std::string> choices;  // lesson flags of kind kChoice
};

struct ParseOutcome {
  enum class Action { kRun, kHelp, kUsageError } action = Action::kRun;
  Options options;
  std::string error;  // one line, for kUsageError
};

// Parses args (without the program name). Pure: prints nothing and never exits, so it can be
// unit-tested; parse_or_exit does the printing and exiting.
ParseOutcome parse_options(const std::vector<std::string>& args, const ServerSpec& spec);

std::string usage_text(const std::string& program, const ServerSpec& spec);

// text with every control character (newline, escape, ...) written as \n, \t or \xNN, so a bad
// value quoted in a message cannot split it into several lines or drive the terminal.
std::string printable(const std::string& text);

// For a server's main: --help prints usage and exits 0; a usage error prints one line to stderr
// and exits 2; otherwise applies --quiet (set_quiet) and returns the options.
Options parse_or_exit(int argc, char** argv, const ServerSpec& spec);
