#include "log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
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
  // How long a write waits for a reader that is behind (journald busy, a
  // pipe's reader slow) before the lines are dropped. Every worker logs
  // under this sink's mutex: a reader that stopped must not stop the relay.
  static constexpr int kWaitMs = 1000;

  // Writes all of `data`, waiting at most `wait_ms` in all for room; false
  // (and `written` short) if the reader did not make room in time.
  bool write_all(const char* data, std::size_t size, std::size_t& written, int wait_ms) {
    written = 0;
    if (kind_ == Kind::kUnknown) {
      struct stat st{};
      kind_ = ::fstat(STDERR_FILENO, &st) != 0 ? Kind::kOther
              : S_ISSOCK(st.st_mode)           ? Kind::kSocket
              : S_ISFIFO(st.st_mode)           ? Kind::kPipe
                                               : Kind::kOther;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
    while (written < size) {
      ssize_t n;
      if (kind_ == Kind::kOther) {
        n = ::write(STDERR_FILENO, data + written, size - written);  // a file or a terminal
      } else {
        pollfd p{STDERR_FILENO, POLLOUT, 0};
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        const int r = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(0, left.count())));
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) return false;  // no room in time
        if (r < 0 || (p.revents & (POLLERR | POLLNVAL)) != 0) return false;
        // A socket takes what fits without blocking; a pipe with room for
        // one page takes a write of at most PIPE_BUF without blocking.
        n = kind_ == Kind::kSocket
                ? ::send(STDERR_FILENO, data + written, size - written, MSG_DONTWAIT | MSG_NOSIGNAL)
                : ::write(STDERR_FILENO, data + written, std::min<std::size_t>(size - written, PIPE_BUF));
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;  // nowhere to log to
      written += static_cast<std::size_t>(n);
    }
    return true;
  }

  void write_out() {
    if (buf_.empty()) return;
    if (dropped_lines_ > 0) {
      // First say what was lost, once the reader takes lines again.
      const std::string note = std::string(mid_line_ ? "\n" : "") + "isoproxy: " + std::to_string(dropped_lines_) +
                               " log lines dropped: standard error was not read for over " +
                               std::to_string(kWaitMs) + " ms\n";
      std::size_t w = 0;
      if (!write_all(note.data(), note.size(), w, 0)) {
        count_dropped(buf_.data(), buf_.size());
        buf_.clear();
        return;
      }
      dropped_lines_ = 0;
      mid_line_ = false;
    }
    std::size_t w = 0;
    // While lines are being dropped, no waiting: the reader is known stuck.
    if (!write_all(buf_.data(), buf_.size(), w, dropped_since_ok_ ? 0 : kWaitMs)) {
      // The line cut short goes too; it is counted with the rest.
      count_dropped(buf_.data() + w, buf_.size() - w);
      if (w > 0) mid_line_ = buf_[w - 1] != '\n';
      dropped_since_ok_ = true;
    } else {
      dropped_since_ok_ = false;
    }
    buf_.clear();
    if (buf_.capacity() > kMaxHeld) buf_.shrink_to_fit();
  }
  void count_dropped(const char* data, std::size_t size) {
    for (std::size_t i = 0; i < size; ++i) dropped_lines_ += data[i] == '\n';
  }

  enum class Kind { kUnknown, kSocket, kPipe, kOther };
  Kind kind_ = Kind::kUnknown;
  std::string buf_;
  bool deferred_ = false;
  std::uint64_t dropped_lines_ = 0;
  bool dropped_since_ok_ = false;
  bool mid_line_ = false;  // the last write stopped inside a line
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

bool Throttle::due(std::uint64_t now_ms, std::uint64_t& held) {
  if (logged_ && now_ms - last_ms_ < 1000) {
    ++held_;
    return false;
  }
  logged_ = true;
  last_ms_ = now_ms;
  held = held_;
  held_ = 0;
  return true;
}

bool SharedThrottle::due(std::uint64_t& held) {
  const auto now = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count()) + 1;
  std::uint64_t last = last_ms_.load(std::memory_order_relaxed);
  // One thread wins the second; the others count themselves held.
  if ((last != 0 && now - last < 1000) || !last_ms_.compare_exchange_strong(last, now, std::memory_order_relaxed)) {
    held_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  held = held_.exchange(0, std::memory_order_relaxed);
  return true;
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
