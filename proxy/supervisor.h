// The Supervisor owns what there is one of per process (DESIGN.md §4): the
// main loop with the admin endpoint, the signals (SIGHUP reload, SIGTERM and
// SIGINT drain, SIGUSR1 access-log reopen), sd_notify, the start-up checks
// and the listener sockets' binding; and the workers (`workers = N`), each a
// Server on its own thread and loop. It talks to a worker only through
// Server::post(): a worker's state is read and changed on its own loop.
#pragma once

#include <uv.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string_view>
#include <optional>
#include <thread>
#include <vector>

#include "admin.h"
#include "admin_http.h"
#include "conf/config.h"
#include "result.h"
#include "server.h"
#include "shared.h"

namespace isoproxy {

// Raises the soft RLIMIT_NOFILE toward the hard limit, to what
// `max_sessions` may need; what is still short, said as a warning.
std::optional<std::string> fit_fd_limit(std::uint32_t max_sessions);

class Supervisor {
 public:
  explicit Supervisor(std::shared_ptr<const conf::Config> config);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Checks the config against this host (fixed source IPs are local), opens
  // the admin endpoint, binds every listener for every worker, installs the
  // signal handlers. Errors are one line each. No thread is started yet, so
  // that `--user` can drop privileges first.
  Status<> start();
  // Starts the worker threads and runs the main loop until every worker has
  // drained; returns the process exit status.
  int run();
  // Stops serving as SIGTERM does.
  void shutdown() { begin_drain(); }

  const conf::Config& config() const { return *config_; }
  unsigned workers() const { return static_cast<unsigned>(servers_.size()); }
  Shared& shared() { return shared_; }
  // How a reload ended, for POST /reload (SIGHUP only logs it).
  struct ReloadOutcome {
    enum class Kind { kDone, kFailed, kIncomplete, kRefused } kind = Kind::kDone;
    std::vector<std::string> errors;  // kFailed, kRefused: why; kIncomplete: the workers still on the old one
    std::vector<std::string> warnings;  // kDone, kIncomplete: the configuration's, and an access log kept as it was
  };
  ReloadOutcome request_reload();

  // How long the admin endpoint waits for a worker's part of an answer.
  static constexpr std::chrono::milliseconds kWorkerAnswer{2000};
  // Runs `fn` on every worker's loop and waits for the answers; a worker that
  // did not answer within kWorkerAnswer (or has stopped) has no value. Called
  // on the main loop, which holds no lock a worker waits for.
  template <class T>
  std::vector<std::optional<T>> gather(std::function<T(Server&)> fn);

 private:
  void on_signal(int signum);
  void begin_drain();
  ReloadOutcome reload(std::string_view trigger);  // "SIGHUP" or "POST /reload", for the log
  void maybe_stop();
  void on_worker_done();
  // Host checks and the sockets of the listeners `config` adds or changes
  // (relative to `current`), per worker; nothing is left open on failure.
  Result<std::vector<Server::Sockets>> prepare(const conf::Config& config, const conf::Config* current);
  void log_config(const conf::Config& config);
  // Warns a day before a loaded CRL's nextUpdate and when it passes (OpenSSL
  // then refuses every certificate the CRL covers), and arms crl_timer_ for
  // the next such moment. At start and after every reload.
  void watch_crls();

  uv_loop_t loop_{};
  std::shared_ptr<const conf::Config> config_;
  Shared shared_;
  std::vector<std::unique_ptr<Server>> servers_;
  std::vector<std::thread> threads_;
  std::vector<int> loop_close_results_;
  std::mutex done_mutex_;
  unsigned workers_done_ = 0;     // their loops have ended
  unsigned workers_drained_ = 0;  // their sessions are gone (hold_after_drain)
  bool workers_released_ = false;
  uv_async_t done_async_{};
  uv_signal_t sigterm_{}, sigint_{}, sighup_{}, sigusr1_{};
  uv_prepare_t log_flush_{};  // writes the log lines of each loop iteration (log::defer)
  uv_timer_t stop_timer_{};  // draining: looks again until the admin endpoint has closed
  uv_timer_t crl_timer_{};   // watch_crls()
  std::set<std::string> crls_said_;  // what watch_crls() has warned about since the last load
  bool draining_ = false;
  bool started_threads_ = false;
  bool handles_closed_ = false;
  bool stopping_ = false;  // our handles are closing
  Admin admin_{*this};
  std::unique_ptr<AdminHttpServer> admin_http_;
  std::string admin_listen_started_;  // [admin] listen at start ("" for off): a reload cannot move it
};

template <class T>
std::vector<std::optional<T>> Supervisor::gather(std::function<T(Server&)> fn) {
  struct State {
    std::mutex m;
    std::condition_variable cv;
    std::vector<std::optional<T>> parts;
    std::size_t left = 0;
  };
  auto st = std::make_shared<State>();
  st->parts.resize(servers_.size());
  if (!started_threads_) {
    // No thread runs the workers' loops (start-up, or after a failed start).
    for (std::size_t i = 0; i < servers_.size(); ++i) st->parts[i] = fn(*servers_[i]);
    return std::move(st->parts);
  }
  {
    std::lock_guard lock(st->m);
    st->left = servers_.size();
  }
  for (std::size_t i = 0; i < servers_.size(); ++i) {
    const bool posted = servers_[i]->post([st, fn, i](Server& s) {
      T value = fn(s);
      std::lock_guard lock(st->m);
      st->parts[i] = std::move(value);
      if (--st->left == 0) st->cv.notify_one();
    });
    if (!posted) {
      std::lock_guard lock(st->m);
      --st->left;
    }
  }
  std::unique_lock lock(st->m);
  st->cv.wait_for(lock, kWorkerAnswer, [&] { return st->left == 0; });
  // A late answer lands in `st`, which outlives this call; copied, not moved.
  return st->parts;
}

}  // namespace isoproxy
