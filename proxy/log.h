// Logging: spdlog to standard error (journald collects it under systemd;
// there each line starts with its syslog priority instead of a timestamp).
// Levels are checked before formatting (spdlog does this for its macros and
// functions); session lines are prefixed with [S<id>].
#pragma once

#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

namespace isoproxy::log {

// "trace", "debug", "info", "warn", "error"; false for anything else.
bool init(std::string_view level);
bool set_level(std::string_view level);

// While deferred, info and debug lines collect in memory and go out in one
// write() when flush() is called: the daemon calls it once per event-loop
// iteration, before the loop waits, so a line is out before the process
// sleeps, and a burst of closes costs one write, not one each. Warnings and
// errors are written at once (with what waited before them).
void defer(bool on);
void flush();

// One line a second at most for an event a peer or a storm can repeat at
// will, with a count of those held back in between. Throttle serves one
// event loop (times from uv_now); SharedThrottle an event every worker
// meets (its own clock).
class Throttle {
 public:
  // Whether to log now; if so, `held` is how many were not logged since the last line.
  bool due(std::uint64_t now_ms, std::uint64_t& held);

 private:
  bool logged_ = false;
  std::uint64_t last_ms_ = 0;
  std::uint64_t held_ = 0;
};

class SharedThrottle {
 public:
  bool due(std::uint64_t& held);

 private:
  std::atomic<std::uint64_t> last_ms_{0};  // 0: never (the clock starts above 0)
  std::atomic<std::uint64_t> held_{0};
};

// Quotes a value for key=value log fields when it has spaces, quotes or is empty,
// or is "-" (which the fields write for a value that is absent).
std::string quote(std::string_view v);
// The same, appended to `out`.
void quote_to(std::string& out, std::string_view v);

}  // namespace isoproxy::log
