#include "log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

namespace isoproxy::log {

namespace {

// True when standard error is the journal's stream: systemd sets
// $JOURNAL_STREAM to its "DEVICE:INODE" (systemd.exec(5)). Compared with
// stderr itself, so that a child of the service writing elsewhere is not fooled.
bool stderr_is_journal() {
  const char* v = std::getenv("JOURNAL_STREAM");
  unsigned long long dev = 0, ino = 0;
  if (v == nullptr || std::sscanf(v, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st{};
  return ::fstat(STDERR_FILENO, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

// "<N>", the syslog priority journald reads off the start of each line
// (sd-daemon(3)), so that `journalctl -p warning` selects by level.
class SyslogPriority final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    const char* p = "<6>";
    switch (msg.level) {
      case spdlog::level::trace:
      case spdlog::level::debug: p = "<7>"; break;
      case spdlog::level::warn: p = "<4>"; break;
      case spdlog::level::err: p = "<3>"; break;
      case spdlog::level::critical: p = "<2>"; break;
      default: break;
    }
    dest.append(p, p + 3);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<SyslogPriority>(); }
};

}  // namespace

bool set_level(std::string_view level) {
  const auto l = spdlog::level::from_str(std::string(level));
  // from_str answers "off" for anything it does not know.
  if (l == spdlog::level::off && level != "off") return false;
  spdlog::set_level(l);
  return true;
}

bool init(std::string_view level) {
  auto logger = spdlog::stderr_logger_mt("isoproxy");  // workers log from their own threads
  if (stderr_is_journal()) {
    // The journal stamps each line itself; it takes the level as a priority.
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<SyslogPriority>('*').set_pattern("%*%l %v");
    logger->set_formatter(std::move(formatter));
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %v");
  }
  logger->flush_on(spdlog::level::trace);  // a log line is seen as soon as it is written
  spdlog::set_default_logger(logger);
  return set_level(level);
}

std::string quote(std::string_view v) {
  bool plain = !v.empty();
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) plain = false;
  }
  if (plain) return std::string(v);
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(static_cast<unsigned char>(c) < 0x20 ? '?' : c);
  }
  out.push_back('"');
  return out;
}

}  // namespace isoproxy::log
