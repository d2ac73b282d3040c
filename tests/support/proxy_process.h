// Long-running child processes for integration tests: the real isoproxy
// binary (ProxyProcess) or any helper such as `rfc1006-peer respond`
// (BackgroundProcess). Output is read continuously on a background thread
// into lines; tests wait for a line on a condition variable, never by
// sleeping, and every wait has a deadline. A child still running when its
// object is destroyed is killed (SIGKILL) and reaped, so a hung binary fails
// its test and never the suite. Header-only, Linux (pidfd, /proc).
//
//   ProxyProcess proxy(R"(... TOML ...)");
//   auto port = proxy.listen_port("demo");            // from "listening on 127.0.0.1:40123 (listener demo)"
//   ...
//   proxy.signal(SIGTERM);
//   CHECK(proxy.wait_exit() == 0);
//   CHECK(proxy.wait_for_line(std::regex("close reason=client-eof")));
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "support/binaries.h"

extern char** environ;

namespace isoproxy::test {

using Millis = std::chrono::milliseconds;

namespace detail {
// Raw system calls: glibc 2.36's <sys/pidfd.h> lacks extern "C" (fixed in
// 2.37), so its declarations do not link from C++.
inline int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }
inline int pidfd_send_signal(int pidfd, int sig) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}
// A child on pipes: standard output and error read by the caller, standard
// input a pipe (want_stdin) or /dev/null; default signal dispositions and an
// empty mask whatever the test process changed; environ with `extra_env`
// ("NAME=value") replacing or adding variables; a pidfd to poll for its exit
// (and signal it without a pid-reuse race) and an eventfd to wake the reader.
struct Spawned {
  pid_t pid = -1;
  int pidfd = -1, wake_fd = -1, in_fd = -1, out_fd = -1, err_fd = -1;
  std::string error;  // empty when the child runs
};

inline Spawned spawn_piped(const std::vector<std::string>& argv, std::vector<std::string> extra_env, bool want_stdin) {
  Spawned sp;
  if (argv.empty()) {
    sp.error = "no program given";
    return sp;
  }
  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
  if ((want_stdin && ::pipe2(in, O_CLOEXEC) != 0) || ::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    sp.error = std::string("pipe: ") + std::strerror(errno);
    for (const int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) {
      if (fd >= 0) ::close(fd);
    }
    return sp;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (want_stdin) {
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  } else {
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  }
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);  // dup2 clears O_CLOEXEC on 0, 1 and 2
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view var(*e);
    const bool replaced = std::any_of(extra_env.begin(), extra_env.end(), [&](const std::string& x) {
      const auto eq = x.find('=');
      return var.substr(0, var.find('=')) == std::string_view(x).substr(0, eq);
    });
    if (!replaced) env.push_back(*e);
  }
  for (auto& x : extra_env) env.push_back(x.data());
  env.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, args[0], &fa, &attr, args.data(), env.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (want_stdin) ::close(in[0]);
  ::close(out[1]);
  ::close(err[1]);
  sp.in_fd = in[1];
  sp.out_fd = out[0];
  sp.err_fd = err[0];
  if (rc != 0) {
    sp.error = "spawn " + argv[0] + ": " + std::strerror(rc);
    return sp;
  }
  sp.pidfd = pidfd_open(pid);
  sp.wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (sp.pidfd < 0 || sp.wake_fd < 0) {
    sp.error = std::string("pidfd_open/eventfd: ") + std::strerror(errno);
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return sp;
  }
  sp.pid = pid;
  return sp;
}

}  // namespace detail

// Number of open file descriptors of a process (/proc/PID/fd); nullopt if it is gone.
inline std::optional<std::size_t> count_open_fds(pid_t pid) {
  std::error_code ec;
  std::filesystem::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec);
  if (ec) return std::nullopt;
  std::size_t n = 0;
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (ec) return std::nullopt;
    ++n;
  }
  return n;
}

// Resident set size in KiB (/proc/PID/status VmRSS); nullopt if it is gone.
inline std::optional<std::size_t> rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      std::size_t kib = 0;
      bool digits = false;
      for (const char c : line) {
        if (c >= '0' && c <= '9') {
          kib = kib * 10 + static_cast<std::size_t>(c - '0');
          digits = true;
        }
      }
      if (digits) return kib;
    }
  }
  return std::nullopt;
}

// key=value fields of a log line ("close reason=client-eof bytes_in=44 peer=\"a b\"");
// a quoted value may hold spaces. Words without '=' are skipped.
inline std::map<std::string, std::string> parse_fields(std::string_view line) {
  std::map<std::string, std::string> out;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && line[i] == ' ') ++i;
    const std::size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '=') ++i;
    if (i >= line.size() || line[i] != '=' || i == start) {
      while (i < line.size() && line[i] != ' ') ++i;
      continue;
    }
    std::string key(line.substr(start, i - start));
    ++i;
    std::string value;
    if (i < line.size() && line[i] == '"') {
      ++i;
      while (i < line.size() && line[i] != '"') {
        if (line[i] == '\\' && i + 1 < line.size()) ++i;
        value += line[i++];
      }
      ++i;
    } else {
      while (i < line.size() && line[i] != ' ') value += line[i++];
    }
    out[std::move(key)] = std::move(value);
  }
  return out;
}

// ---------------------------------------------------------------------------
// BackgroundProcess: spawn, read stdout and stderr into lines, signal, reap.

class BackgroundProcess {
 public:
  enum class Stream : std::uint8_t { kOut, kErr };

  // argv[0] is a path (no PATH search). Standard input is /dev/null. Check started().
  // `extra_env` ("NAME=value") is added to this process's environment, replacing
  // a variable of the same name.
  explicit BackgroundProcess(std::vector<std::string> argv, std::vector<std::string> extra_env = {})
      : argv_(std::move(argv)), extra_env_(std::move(extra_env)) {
    spawn();
  }
  BackgroundProcess(const BackgroundProcess&) = delete;
  BackgroundProcess& operator=(const BackgroundProcess&) = delete;

  // Kills a still-running child (SIGKILL), reaps it and joins the reader.
  ~BackgroundProcess() {
    if (reader_.joinable()) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (!exited_) detail::pidfd_send_signal(pidfd_, SIGKILL);
        stopping_ = true;  // don't wait for pipe EOF a grandchild may hold off
      }
      const std::uint64_t one = 1;
      [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof one);
      reader_.join();
    }
    for (const int fd : {out_fd_, err_fd_, pidfd_, wake_fd_}) {
      if (fd >= 0) ::close(fd);
    }
  }

  bool started() const { return pid_ > 0; }
  const std::string& spawn_error() const { return spawn_error_; }
  pid_t pid() const { return pid_; }
  const std::vector<std::string>& argv() const { return argv_; }

  // Sends a signal unless the child is already reaped (a pidfd: never hits a reused pid).
  bool signal(int sig) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!started() || exited_) return false;
    return detail::pidfd_send_signal(pidfd_, sig) == 0;
  }

  // The exit status once the child has exited and its output is read: the
  // exit code, or 128 + the signal number if a signal ended it (as a shell
  // reports it). nullopt if it is still running at the deadline.
  std::optional<int> wait_exit(Millis timeout = Millis(10000)) {
    std::unique_lock<std::mutex> lk(mu_);
    if (!started()) return std::nullopt;
    cv_.wait_for(lk, timeout, [&] { return exited_ && out_closed_ && err_closed_; });
    if (!exited_) return std::nullopt;
    return exit_status_;
  }
  bool running() const {
    std::lock_guard<std::mutex> lk(mu_);
    return started() && !exited_;
  }

  // Lines so far (without the newline; a last unterminated line is added at EOF).
  std::vector<std::string> lines(Stream s) const {
    std::lock_guard<std::mutex> lk(mu_);
    return lines_of(s);
  }
  // All output of a stream as one text, for failure messages (INFO(p.text(...))).
  std::string text(Stream s) const {
    std::lock_guard<std::mutex> lk(mu_);
    std::string all;
    for (const auto& l : lines_of(s)) all += l + '\n';
    return all;
  }

  // Waits until pred(lines of s) holds. Returns false at the deadline, or at
  // once when the child has exited and its stream is drained (nothing more can come).
  bool wait_until(Stream s, const std::function<bool(const std::vector<std::string>&)>& pred,
                  Millis timeout = Millis(10000)) {
    std::unique_lock<std::mutex> lk(mu_);
    bool satisfied = false;
    cv_.wait_for(lk, timeout, [&] {
      satisfied = pred(lines_of(s));
      return satisfied || finished(s);
    });
    return satisfied;
  }

  // The first line (from the start of the output) that matches `re`.
  std::optional<std::string> wait_for_line(Stream s, const std::regex& re, Millis timeout = Millis(10000)) {
    std::optional<std::string> found;
    wait_until(
        s,
        [&](const std::vector<std::string>& ls) {
          for (const auto& l : ls) {
            if (std::regex_search(l, re)) {
              found = l;
              return true;
            }
          }
          return false;
        },
        timeout);
    return found;
  }

  // Once at least n lines match `re`: all matching lines, in order.
  std::optional<std::vector<std::string>> wait_for_lines(Stream s, const std::regex& re, std::size_t n,
                                                         Millis timeout = Millis(10000)) {
    std::vector<std::string> found;
    const bool ok = wait_until(
        s,
        [&](const std::vector<std::string>& ls) {
          found.clear();
          for (const auto& l : ls) {
            if (std::regex_search(l, re)) found.push_back(l);
          }
          return found.size() >= n;
        },
        timeout);
    if (!ok) return std::nullopt;
    return found;
  }

  std::size_t count_lines(Stream s, const std::regex& re) const {
    std::lock_guard<std::mutex> lk(mu_);
    std::size_t n = 0;
    for (const auto& l : lines_of(s)) n += std::regex_search(l, re) ? 1 : 0;
    return n;
  }

  std::optional<std::size_t> open_fds() const { return count_open_fds(pid_); }
  std::optional<std::size_t> rss_kib() const { return isoproxy::test::rss_kib(pid_); }

 private:
  const std::vector<std::string>& lines_of(Stream s) const { return s == Stream::kOut ? out_lines_ : err_lines_; }
  bool finished(Stream s) const { return exited_ && (s == Stream::kOut ? out_closed_ : err_closed_); }

  void spawn() {
    detail::Spawned sp = detail::spawn_piped(argv_, extra_env_, false);
    out_fd_ = sp.out_fd;
    err_fd_ = sp.err_fd;
    pidfd_ = sp.pidfd;
    wake_fd_ = sp.wake_fd;
    if (!sp.error.empty()) {
      spawn_error_ = sp.error;
      return;
    }
    pid_ = sp.pid;
    reader_ = std::thread([this] { read_loop(); });
  }

  void read_loop() {
    std::string partial[2];
    bool open[2] = {true, true};
    bool reaped = false;
    char buf[65536];
    for (;;) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (reaped && (stopping_ || (!open[0] && !open[1]))) return;
      }
      pollfd fds[4] = {{open[0] ? out_fd_ : -1, POLLIN, 0},
                       {open[1] ? err_fd_ : -1, POLLIN, 0},
                       {reaped ? -1 : pidfd_, POLLIN, 0},
                       {wake_fd_, POLLIN, 0}};
      if (::poll(fds, 4, -1) < 0) {
        if (errno == EINTR) continue;
        return;  // cannot happen with valid fds; the destructor still joins
      }
      for (int i = 0; i < 2; ++i) {
        if (!open[i] || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        std::vector<std::string> complete;
        if (n > 0) {
          partial[i].append(buf, static_cast<std::size_t>(n));
          std::size_t start = 0;
          for (std::size_t nl; (nl = partial[i].find('\n', start)) != std::string::npos; start = nl + 1) {
            complete.push_back(partial[i].substr(start, nl - start));
          }
          partial[i].erase(0, start);
        } else {
          open[i] = false;
          if (!partial[i].empty()) complete.push_back(std::move(partial[i]));
          partial[i].clear();
        }
        {
          std::lock_guard<std::mutex> lk(mu_);
          auto& dest = i == 0 ? out_lines_ : err_lines_;
          for (auto& l : complete) dest.push_back(std::move(l));
          if (!open[i]) (i == 0 ? out_closed_ : err_closed_) = true;
        }
        cv_.notify_all();
      }
      if (!reaped && (fds[2].revents & POLLIN) != 0) {
        int status = 0;
        pid_t r;
        do {
          r = ::waitpid(pid_, &status, 0);
        } while (r < 0 && errno == EINTR);
        reaped = true;
        {
          std::lock_guard<std::mutex> lk(mu_);
          exited_ = true;
          if (WIFEXITED(status)) exit_status_ = WEXITSTATUS(status);
          else if (WIFSIGNALED(status)) exit_status_ = 128 + WTERMSIG(status);
        }
        cv_.notify_all();
      }
      if ((fds[3].revents & POLLIN) != 0) {
        std::uint64_t v = 0;
        [[maybe_unused]] const ssize_t n = ::read(wake_fd_, &v, sizeof v);
      }
    }
  }

  std::vector<std::string> argv_;
  std::vector<std::string> extra_env_;
  std::string spawn_error_;
  pid_t pid_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  int pidfd_ = -1;
  int wake_fd_ = -1;
  std::thread reader_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> out_lines_, err_lines_;
  bool out_closed_ = false, err_closed_ = false;
  bool exited_ = false;
  bool stopping_ = false;
  int exit_status_ = -1;
};

// For a test that bounds a child's RSS: under AddressSanitizer, the children
// started while one of these lives keep 8 MiB of freed memory in quarantine
// instead of 256, which would read as growth; recent frees are still caught
// when used. The children may be sanitized when this harness is not (tests/run
// starts the sanitized build's isoproxy from the Release harness), so the
// option is always set; an uninstrumented child ignores it.
class AsanSmallQuarantine {
 public:
  AsanSmallQuarantine() {
    const char* v = std::getenv("ASAN_OPTIONS");
    had_ = v != nullptr;
    saved_ = v != nullptr ? v : "";
    ::setenv("ASAN_OPTIONS", (saved_.empty() ? std::string() : saved_ + ":").append("quarantine_size_mb=8").c_str(), 1);
  }
  ~AsanSmallQuarantine() {
    if (had_) {
      ::setenv("ASAN_OPTIONS", saved_.c_str(), 1);
    } else {
      ::unsetenv("ASAN_OPTIONS");
    }
  }
  AsanSmallQuarantine(const AsanSmallQuarantine&) = delete;
  AsanSmallQuarantine& operator=(const AsanSmallQuarantine&) = delete;

 private:
  bool had_ = false;
  std::string saved_;
};

// ---------------------------------------------------------------------------
// ProxyProcess: `isoproxy run -c FILE` with a TOML text written to a temp file.

struct ListeningLine {
  std::string address;  // "127.0.0.1" / "[::1]" as printed
  std::uint16_t port = 0;
  std::string name;     // from "(listener NAME)", empty if the line has none
};

class ProxyProcess {
 public:
  static std::string default_binary() { return isoproxy_binary(); }

  explicit ProxyProcess(const std::string& toml, std::vector<std::string> extra_args = {},
                        std::string binary = default_binary(), std::vector<std::string> extra_env = {}) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "isoproxy-test-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      error_ = std::string("mkdtemp: ") + std::strerror(errno);
      return;
    }
    dir_ = tmpl;
    config_ = dir_ / "isoproxy.toml";
    if (!write_config(toml)) return;
    if (binary.empty()) {
      error_ = "no isoproxy binary: compile with -DISOPROXY_BINARY=\"path\", set ISOPROXY_TEST_BINARY or pass one";
      return;
    }
    std::vector<std::string> argv = {std::move(binary), "run", "-c", config_.string()};
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    proc_ = std::make_unique<BackgroundProcess>(std::move(argv), std::move(extra_env));
    if (!proc_->started()) error_ = proc_->spawn_error();
  }
  ProxyProcess(const ProxyProcess&) = delete;
  ProxyProcess& operator=(const ProxyProcess&) = delete;
  ~ProxyProcess() {
    proc_.reset();  // kills and reaps first: the config file outlives the child
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  bool started() const { return proc_ && proc_->started(); }
  const std::string& error() const { return error_; }
  pid_t pid() const { return started() ? proc_->pid() : -1; }
  const std::filesystem::path& config_path() const { return config_; }

  // Replaces the config file atomically (write + rename), e.g. before a SIGHUP reload.
  // A config without an [admin] table gets one on an ephemeral port: the
  // default 127.0.0.1:9102 would clash between tests running in parallel.
  bool write_config(const std::string& toml) {
    const auto tmp = dir_ / "isoproxy.toml.new";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (toml.find("[admin]") == std::string::npos) out << "[admin]\nlisten = \"127.0.0.1:0\"\n\n";
      out << toml;
      if (!out.flush()) {
        error_ = "cannot write " + tmp.string();
        return false;
      }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, config_, ec);
    if (ec) {
      error_ = "cannot write " + config_.string() + ": " + ec.message();
      return false;
    }
    return true;
  }

  // Standard error (where isoproxy logs), line by line.
  std::vector<std::string> lines() const { return started() ? proc_->lines(kErr) : std::vector<std::string>{}; }
  std::string text() const { return started() ? proc_->text(kErr) : error_; }
  std::vector<std::string> out_lines() const { return started() ? proc_->lines(kOut) : std::vector<std::string>{}; }

  std::optional<std::string> wait_for_line(const std::regex& re, Millis timeout = Millis(10000)) {
    if (!started()) return std::nullopt;
    return proc_->wait_for_line(kErr, re, timeout);
  }
  std::optional<std::vector<std::string>> wait_for_lines(const std::regex& re, std::size_t n,
                                                         Millis timeout = Millis(10000)) {
    if (!started()) return std::nullopt;
    return proc_->wait_for_lines(kErr, re, n, timeout);
  }
  std::size_t count_lines(const std::regex& re) const { return started() ? proc_->count_lines(kErr, re) : 0; }

  // Every "listening on ADDR:PORT [(listener NAME)]" line so far.
  std::vector<ListeningLine> listeners() const { return parse_listening(lines()); }

  // Waits for `count` listening lines; the port of the first one.
  std::optional<std::uint16_t> wait_listening(Millis timeout = Millis(10000), std::size_t count = 1) {
    if (!started()) return std::nullopt;
    std::optional<std::uint16_t> port;
    proc_->wait_until(
        kErr,
        [&](const std::vector<std::string>& ls) {
          const auto found = parse_listening(ls);
          if (found.size() < count) return false;
          port = found.front().port;
          return true;
        },
        timeout);
    return port;
  }
  // The port of the listener called `name` ("(listener NAME)"), waiting for its line.
  std::optional<std::uint16_t> listen_port(const std::string& name, Millis timeout = Millis(10000)) {
    return find_listener([&](const std::vector<ListeningLine>& found) -> std::optional<std::uint16_t> {
      for (const auto& l : found) {
        if (l.name == name) return l.port;
      }
      return std::nullopt;
    }, timeout);
  }
  // The port of the index-th listening line (0 = the first printed), waiting for it.
  std::optional<std::uint16_t> listen_port(std::size_t index, Millis timeout = Millis(10000)) {
    return find_listener([&](const std::vector<ListeningLine>& found) -> std::optional<std::uint16_t> {
      if (found.size() > index) return found[index].port;
      return std::nullopt;
    }, timeout);
  }

  bool signal(int sig) { return started() && proc_->signal(sig); }
  std::optional<int> wait_exit(Millis timeout = Millis(10000)) {
    return started() ? proc_->wait_exit(timeout) : std::nullopt;
  }
  bool running() const { return started() && proc_->running(); }

  std::optional<std::size_t> open_fds() const { return started() ? proc_->open_fds() : std::nullopt; }
  std::optional<std::size_t> rss_kib() const { return started() ? proc_->rss_kib() : std::nullopt; }

  BackgroundProcess* process() { return proc_.get(); }

  static std::vector<ListeningLine> parse_listening(const std::vector<std::string>& ls) {
    static const std::regex kListening(R"(listening on (\S+):(\d+))");
    static const std::regex kName(R"(\(listener ([^)\s]+)\))");
    std::vector<ListeningLine> out;
    for (const auto& l : ls) {
      std::smatch m;
      if (!std::regex_search(l, m, kListening)) continue;
      if (m[2].length() > 5) continue;
      const unsigned long port = std::stoul(m[2].str());
      if (port > 65535) continue;
      ListeningLine entry{m[1].str(), static_cast<std::uint16_t>(port), {}};
      std::smatch n;
      if (std::regex_search(l, n, kName)) entry.name = n[1].str();
      out.push_back(std::move(entry));
    }
    return out;
  }

 private:
  static constexpr BackgroundProcess::Stream kErr = BackgroundProcess::Stream::kErr;
  static constexpr BackgroundProcess::Stream kOut = BackgroundProcess::Stream::kOut;

  std::optional<std::uint16_t> find_listener(
      const std::function<std::optional<std::uint16_t>(const std::vector<ListeningLine>&)>& pick, Millis timeout) {
    if (!started()) return std::nullopt;
    std::optional<std::uint16_t> port;
    proc_->wait_until(
        kErr,
        [&](const std::vector<std::string>& ls) {
          port = pick(parse_listening(ls));
          return port.has_value();
        },
        timeout);
    return port;
  }

  std::filesystem::path dir_;
  std::filesystem::path config_;
  std::string error_;
  std::unique_ptr<BackgroundProcess> proc_;
};

// The regex of the close line of the session whose client had `client_addr`
// ("127.0.0.1:40000" or "[::1]:40000"), for ProxyProcess::wait_for_line.
inline std::regex close_line_of(const std::string& client_addr) {
  std::string re = R"(\[S\d+\] close reason=.* client=)";
  for (const char c : client_addr) {
    if (c == '.' || c == '[' || c == ']') re += '\\';
    re += c;
  }
  re += ' ';
  return std::regex(re);
}

}  // namespace isoproxy::test
