#include "log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>

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

// Standard error, written with write(2) directly, optionally batched.
class StderrSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  void set_deferred(bool on) {
    std::lock_guard<std::mutex> lock(mutex_);
    deferred_ = on;
    if (!on) write_out();
  }
  void flush_now() {
    std::lock_guard<std::mutex> lock(mutex_);
    write_out();
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    buf_.append(formatted.data(), formatted.size());
    // Bounded: a loop iteration that logs a lot writes as it goes.
    if (!deferred_ || msg.level >= spdlog::level::warn || buf_.size() >= kMaxHeld) write_out();
  }
  void flush_() override {
    if (!deferred_) write_out();
  }

 private:
  static constexpr std::size_t kMaxHeld = 64 * 1024;
  void write_out() {
    std::size_t off = 0;
    while (off < buf_.size()) {
      const ssize_t n = ::write(STDERR_FILENO, buf_.data() + off, buf_.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // nowhere to log to: the lines are dropped, never held without bound
      off += static_cast<std::size_t>(n);
    }
    buf_.clear();
    if (buf_.capacity() > kMaxHeld) buf_.shrink_to_fit();
  }
  std::string buf_;
  bool deferred_ = false;
};

std::shared_ptr<StderrSink>& stderr_sink() {
  static std::shared_ptr<StderrSink> sink;
  return sink;
}

}  // namespace

void defer(bool on) {
  if (auto& s = stderr_sink()) s->set_deferred(on);
}

void flush() {
  if (auto& s = stderr_sink()) s->flush_now();
}

bool set_level(std::string_view level) {
  const auto l = spdlog::level::from_str(std::string(level));
  // from_str answers "off" for anything it does not know.
  if (l == spdlog::level::off && level != "off") return false;
  spdlog::set_level(l);
  return true;
}

bool init(std::string_view level) {
  auto sink = std::make_shared<StderrSink>();
  stderr_sink() = sink;
  auto logger = std::make_shared<spdlog::logger>("isoproxy", sink);
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
  std::string out;
  quote_to(out, v);
  return out;
}

void quote_to(std::string& out, std::string_view v) {
  // A bare "-" says "absent" in these lines (calling=-): a value that is
  // the text "-" is quoted, so the two cannot be taken for each other.
  bool plain = !v.empty() && v != "-";
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) plain = false;
  }
  if (plain) {
    out += v;
    return;
  }
  out.push_back('"');
  for (char c : v) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(static_cast<unsigned char>(c) < 0x20 ? '?' : c);
  }
  out.push_back('"');
}

}  // namespace isoproxy::log
