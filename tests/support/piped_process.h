// A child process driven through pipes, for interactive tools such as
// `openssl s_server` and `openssl s_client`: bytes written to its standard
// input, its standard output kept as bytes (binary-safe) and its standard
// error as text, both read continuously on a background thread. Waits are on
// a condition variable with a deadline, never sleeps. A child still running
// when the object is destroyed is killed (SIGKILL, by its pidfd) and reaped.
//
//   PipedProcess srv({openssl, "s_server", "-accept", "127.0.0.1:0", ...});
//   auto line = srv.wait_for_out_text(std::regex(R"(ACCEPT \S+:(\d+))"));
//   srv.write(bytes);                         // to its standard input
//   srv.wait_for_out_bytes(frame);            // once it has printed them
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "proxy_process.h"

extern char** environ;

namespace isoproxy::test {

// The full path of `name` on PATH, or empty.
inline std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return {};
  std::string p = path;
  std::size_t start = 0;
  while (start <= p.size()) {
    const std::size_t end = p.find(':', start);
    const std::string dir = p.substr(start, end == std::string::npos ? std::string::npos : end - start);
    const std::string full = dir + "/" + name;
    if (!dir.empty() && ::access(full.c_str(), X_OK) == 0) return full;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return {};
}

class PipedProcess {
 public:
  using Millis = std::chrono::milliseconds;

  // argv[0] is a path. Check started().
  explicit PipedProcess(std::vector<std::string> argv) : argv_(std::move(argv)) { spawn(); }
  PipedProcess(const PipedProcess&) = delete;
  PipedProcess& operator=(const PipedProcess&) = delete;
  ~PipedProcess() {
    if (reader_.joinable()) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (!exited_) ::syscall(SYS_pidfd_send_signal, pidfd_, SIGKILL, nullptr, 0);
        stopping_ = true;
      }
      const std::uint64_t one = 1;
      [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof one);
      reader_.join();
    }
    for (const int fd : {in_fd_, out_fd_, err_fd_, pidfd_, wake_fd_}) {
      if (fd >= 0) ::close(fd);
    }
  }

  bool started() const { return pid_ > 0; }
  const std::string& error() const { return error_; }
  pid_t pid() const { return pid_; }

  // Writes every byte to the child's standard input (false if it closed it).
  bool write(const std::vector<std::uint8_t>& bytes, Millis timeout = Millis(5000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::size_t off = 0;
    while (off < bytes.size()) {
      if (in_fd_ < 0) return false;
      const ssize_t n = ::write(in_fd_, bytes.data() + off, bytes.size() - off);
      if (n > 0) {
        off += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) {
        const auto left = std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now()).count();
        if (left <= 0) return false;
        pollfd p{in_fd_, POLLOUT, 0};
        ::poll(&p, 1, static_cast<int>(left));
        continue;
      }
      return false;
    }
    return true;
  }
  void close_stdin() {
    if (in_fd_ >= 0) ::close(in_fd_);
    in_fd_ = -1;
  }

  // Everything written to standard output so far.
  std::vector<std::uint8_t> out() const {
    std::lock_guard<std::mutex> lk(mu_);
    return out_;
  }
  std::string err() const {
    std::lock_guard<std::mutex> lk(mu_);
    return err_;
  }

  // Waits until standard output holds `needle` at or after `from`; its offset.
  std::optional<std::size_t> wait_for_out_bytes(const std::vector<std::uint8_t>& needle, std::size_t from = 0,
                                                Millis timeout = Millis(10000)) {
    std::optional<std::size_t> at;
    wait([&] {
      if (out_.size() < from + needle.size()) return false;
      auto it = std::search(out_.begin() + static_cast<std::ptrdiff_t>(from), out_.end(), needle.begin(), needle.end());
      if (it == out_.end()) return false;
      at = static_cast<std::size_t>(it - out_.begin());
      return true;
    }, timeout);
    return at;
  }
  // Waits until standard output has at least n bytes.
  bool wait_for_out_size(std::size_t n, Millis timeout = Millis(10000)) {
    return wait([&] { return out_.size() >= n; }, timeout);
  }
  // Waits until standard output, read as text, matches `re`; the match and
  // its groups.
  std::optional<std::vector<std::string>> wait_for_out_text(const std::regex& re, Millis timeout = Millis(10000)) {
    std::optional<std::vector<std::string>> found;
    wait([&] {
      const std::string text(out_.begin(), out_.end());
      std::smatch m;
      if (!std::regex_search(text, m, re)) return false;
      found.emplace();
      for (const auto& g : m) found->push_back(g.str());
      return true;
    }, timeout);
    return found;
  }
  // Waits until standard error matches `re`.
  bool wait_for_err(const std::regex& re, Millis timeout = Millis(10000)) {
    return wait([&] { return std::regex_search(err_, re); }, timeout);
  }
  // The exit status (128 + signal if killed) once it has exited; nullopt at the deadline.
  std::optional<int> wait_exit(Millis timeout = Millis(10000)) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait_for(lk, timeout, [&] { return exited_ && out_closed_ && err_closed_; });
    if (!exited_) return std::nullopt;
    return status_;
  }
  bool running() const {
    std::lock_guard<std::mutex> lk(mu_);
    return started() && !exited_;
  }
  bool kill(int sig = SIGKILL) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!started() || exited_) return false;
    return ::syscall(SYS_pidfd_send_signal, pidfd_, sig, nullptr, 0) == 0;
  }

 private:
  template <typename Pred>
  bool wait(Pred pred, Millis timeout) {
    std::unique_lock<std::mutex> lk(mu_);
    bool ok = false;
    cv_.wait_for(lk, timeout, [&] {
      ok = pred();
      return ok || (exited_ && out_closed_ && err_closed_);
    });
    return ok;
  }

  void spawn() {
    detail::Spawned sp = detail::spawn_piped(argv_, {}, true);
    in_fd_ = sp.in_fd;
    out_fd_ = sp.out_fd;
    err_fd_ = sp.err_fd;
    pidfd_ = sp.pidfd;
    wake_fd_ = sp.wake_fd;
    if (in_fd_ >= 0) ::fcntl(in_fd_, F_SETFL, O_NONBLOCK);
    if (!sp.error.empty()) {
      error_ = sp.error;
      return;
    }
    pid_ = sp.pid;
    reader_ = std::thread([this] { read_loop(); });
  }

  void read_loop() {
    bool open[2] = {true, true};
    bool reaped = false;
    std::vector<std::uint8_t> buf(65536);
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
        return;
      }
      for (int i = 0; i < 2; ++i) {
        if (!open[i] || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        const ssize_t n = ::read(fds[i].fd, buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        {
          std::lock_guard<std::mutex> lk(mu_);
          if (n > 0) {
            if (i == 0) out_.insert(out_.end(), buf.begin(), buf.begin() + n);
            else err_.append(reinterpret_cast<const char*>(buf.data()), static_cast<std::size_t>(n));
          } else {
            open[i] = false;
            (i == 0 ? out_closed_ : err_closed_) = true;
          }
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
          status_ = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
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
  std::string error_;
  pid_t pid_ = -1;
  int in_fd_ = -1, out_fd_ = -1, err_fd_ = -1, pidfd_ = -1, wake_fd_ = -1;
  std::thread reader_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::uint8_t> out_;
  std::string err_;
  bool out_closed_ = false, err_closed_ = false, exited_ = false, stopping_ = false;
  int status_ = -1;
};

}  // namespace isoproxy::test
