// The command line every server in this repository shares (see DESIGN.md, "The server
// contract"): [--host ADDR] [--port N] [--quiet] [--help] plus the flags a lesson adds.
#pragma once

#include <map>
#include <string>
#include <vector>

// A flag a lesson adds: a switch (no value) or a positive number such as --idle-timeout 1.5.
struct LessonFlag {
  enum class Kind { kSwitch, kPositiveNumber };
  std::string name;  // with the dashes: "--idle-timeout"
  Kind kind = Kind::kSwitch;
  std::string help;
  double default_value = 0;  // for numbers
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
  std::map<std::string, double> numbers;  // lesson flags of kind kPositiveNumber
  std::map<std::string, bool> switches;   // lesson flags of kind kSwitch
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

// For a server's main: --help prints usage and exits 0; a usage error prints one line to stderr
// and exits 2; otherwise applies --quiet (set_quiet) and returns the options.
Options parse_or_exit(int argc, char** argv, const ServerSpec& spec);
