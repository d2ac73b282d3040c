// The Server owns the event loop, the listeners, the sessions, the signals,
// reload and drain (DESIGN.md §4).
#pragma once

#include <uv.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
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
#include "rdns.h"
#include "session.h"
#include "splice.h"

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
  std::uint64_t access_log_dropped = 0;  // lines the journal did not take
};

// A closed session as the admin endpoint keeps it: its final snapshot as
// JSON text (a parsed tree costs several times the memory, and /sessions
// only ever prints it), plus what the filters match on.
struct ClosedSession {
  std::uint64_t id = 0;
  std::string json;  // compact
  std::string calling_hex, calling_ascii, called_hex, called_ascii;
  std::string client, upstream;
  static ClosedSession from(const nlohmann::json& snapshot, std::string json_text);
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
  // A session's final snapshot: to the access log and the closed-session
  // list; wants_closed_snapshots() says whether either will take it.
  bool wants_closed_snapshots() const;
  void session_record(const nlohmann::json& snapshot);
  void count_called_tsap(const std::string& display);
  void request_reload() { reload(); }
  ReverseDns& rdns() { return rdns_; }
  // Outbound connections by "source>destination": a new client whose
  // "peer>local" is one of them is isoproxy's own upstream connection come
  // back (a loop). Both ends: ephemeral source ports are reused toward other
  // destinations, so a source alone would mistake a stranger for a loop.
  void outbound_opened(const std::string& source, std::uint64_t session) { outbound_[source] = session; }
  void outbound_closed(const std::string& source) { outbound_.erase(source); }
  std::optional<std::uint64_t> outbound_owner(const std::string& peer) const {
    auto it = outbound_.find(peer);
    if (it == outbound_.end()) return std::nullopt;
    return it->second;
  }
  // Pipes and the deferred take-over for sessions in pass-through (splice.h).
  SpliceSupport& splice() { return splice_; }
  // Stops serving as SIGTERM does (run() then returns once drained).
  void shutdown() { begin_drain(); }

 private:
  void on_signal(int signum);
  void begin_drain();
  void reload();
  void reopen_access_log();  // SIGUSR1, after logrotate renamed the file
  void maybe_stop();
  void schedule_reap();
  void check_source_names();
  void journal_access_log(const nlohmann::json& snapshot, const std::string& text_line);
  static int open_journal_socket();  // a connected fd, or -errno
  static constexpr const char* kJournalSocket = "/run/systemd/journal/socket";
  Status<> apply(std::shared_ptr<const conf::Config> config, bool initial);

  uv_loop_t loop_{};
  std::shared_ptr<const conf::Config> config_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<std::unique_ptr<Listener>> stopping_listeners_;
  std::unordered_map<std::uint64_t, std::unique_ptr<Session>> sessions_;
  std::vector<std::unique_ptr<Session>> finished_;  // destroyed outside their callbacks
  uv_signal_t sigterm_{}, sigint_{}, sighup_{}, sigusr1_{};
  uv_timer_t drain_timer_{};
  uv_timer_t dns_check_timer_{};  // the start-up PTR check runs from the loop
  uv_idle_t reaper_{};  // destroys finished sessions outside their own callbacks
  bool reaper_active_ = false;
  bool draining_ = false;
  bool handles_closed_ = false;
  std::uint64_t next_session_id_ = 1;
  GlobalStats stats_;
  std::deque<ClosedSession> closed_;
  std::FILE* access_log_ = nullptr;  // stderr or an opened file; nullptr when off
  std::string access_log_path_;  // "off", "stderr", "journal" or the file
  bool journal_failing_ = false;
  int journal_fd_ = -1;  // access_log = "journal"
  Admin admin_{*this};
  std::unique_ptr<AdminHttpServer> admin_http_;
  std::array<char, 65536> read_buffer_{};
  ReverseDns rdns_{&loop_};
  std::unordered_map<std::string, std::uint64_t> outbound_;
  std::array<std::uint8_t, kTlsBufferSize> tls_buffer_{};
  SpliceSupport splice_{&loop_};
};

}  // namespace isoproxy
