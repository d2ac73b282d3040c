// The Server owns the event loop, the listeners, the sessions, the signals,
// reload and drain (DESIGN.md §4).
#pragma once

#include <uv.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <cstdio>
#include <deque>
#include <nlohmann/json.hpp>

#include "admin.h"
#include "admin_http.h"
#include "conf/config.h"
#include "listener.h"
#include "session.h"

namespace isoproxy {

// Process-wide counters (the live stats endpoint reads these later).
struct GlobalStats {
  std::uint64_t accepted = 0;
  std::uint64_t refused = 0;
  std::uint64_t closed = 0;
  std::uint64_t bytes_to_upstream = 0;
  std::uint64_t bytes_to_client = 0;
  std::map<std::string, std::uint64_t> connect_failures;  // by cause
  std::map<std::string, std::uint64_t> decode_errors;     // by kind
  std::map<std::string, std::uint64_t> filter_actions;    // "<filter>.<action>"
  std::map<std::string, std::uint64_t> close_reasons;
  std::map<std::string, std::uint64_t> sessions_by_upstream;    // by upstream address, at connect
  std::map<std::string, std::uint64_t> sessions_by_called_tsap; // bounded by admin.metrics_tsap_labels
};

// A closed session as the admin endpoint keeps it: its final snapshot.
struct ClosedSession {
  std::uint64_t id = 0;
  nlohmann::json snapshot;
  bool matches_tsap(std::string_view text) const;
  bool matches_peer(std::string_view text) const;
};

class Server {
 public:
  explicit Server(std::shared_ptr<const conf::Config> config);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Checks the config against this host (fixed source IPs are local), binds
  // every listener, installs signal handlers. Errors are one line each.
  Status<> start();
  // Runs the loop until drained; returns the process exit status.
  int run();

  uv_loop_t* loop() { return &loop_; }
  GlobalStats& stats() { return stats_; }
  std::uint64_t now_ms() { return uv_now(&loop_); }

  // A per-loop read buffer: libuv reads into it and the session forwards
  // from it before returning, so an idle session holds no buffer.
  void alloc_read_buffer(uv_buf_t* buf) {
    buf->base = read_buffer_.data();
    buf->len = read_buffer_.size();
  }
  // Plaintext decrypted from a TLS leg (one record at most), processed before
  // the next one is decrypted.
  static constexpr std::size_t kTlsBufferSize = 16384;
  std::uint8_t* tls_buffer() { return tls_buffer_.data(); }
  // Registers a new session and returns it; nullptr if the global limit is reached.
  Session* new_session(Listener& l, const std::shared_ptr<const ListenerRuntime>& rt);
  bool at_global_limit() const { return sessions_.size() >= config_->global.max_sessions; }
  void session_closed(std::uint64_t id);
  // A stopped listener's last socket closed.
  void listener_closed();
  bool draining() const { return draining_; }
  const conf::Config& config() const { return *config_; }

  // For the admin endpoint.
  std::vector<Session*> sessions_in_order();
  Session* find_session(std::uint64_t id);
  std::size_t active_sessions() const { return sessions_.size(); }
  std::vector<const Listener*> listeners() const;
  const std::deque<ClosedSession>& closed_sessions() const { return closed_; }
  void record_closed(std::uint64_t id, nlohmann::json snapshot);
  // One JSON line per session at close, if [global] access_log is set.
  void access_log(const nlohmann::json& snapshot);
  void count_called_tsap(const std::string& display);
  void request_reload() { reload(); }

 private:
  void on_signal(int signum);
  void begin_drain();
  void reload();
  void maybe_stop();
  void schedule_reap();
  Status<> apply(std::shared_ptr<const conf::Config> config, bool initial);

  uv_loop_t loop_{};
  std::shared_ptr<const conf::Config> config_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<std::unique_ptr<Listener>> stopping_listeners_;
  std::unordered_map<std::uint64_t, std::unique_ptr<Session>> sessions_;
  std::vector<std::unique_ptr<Session>> finished_;  // destroyed outside their callbacks
  uv_signal_t sigterm_{}, sigint_{}, sighup_{};
  uv_timer_t drain_timer_{};
  uv_idle_t reaper_{};  // destroys finished sessions outside their own callbacks
  bool reaper_active_ = false;
  bool draining_ = false;
  bool handles_closed_ = false;
  std::uint64_t next_session_id_ = 1;
  GlobalStats stats_;
  std::deque<ClosedSession> closed_;
  std::FILE* access_log_ = nullptr;  // stderr or an opened file; nullptr when off
  std::string access_log_path_;
  Admin admin_{*this};
  std::unique_ptr<AdminHttpServer> admin_http_;
  std::array<char, 65536> read_buffer_{};
  std::array<std::uint8_t, kTlsBufferSize> tls_buffer_{};
};

}  // namespace isoproxy
