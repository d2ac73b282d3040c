// A Server is one worker (`workers = N`): one event loop on its own thread,
// its own SO_REUSEPORT listener sockets, sessions, stats and reverse-DNS
// cache. The Supervisor (supervisor.h) owns the admin endpoint, signals,
// reload parsing and drain, and talks to each Server only through post(),
// which runs a function on the Server's loop (DESIGN.md §4, §5).
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
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>

#include "conf/config.h"
#include "listener.h"
#include "rdns.h"
#include "session.h"
#include "session_timers.h"
#include "slab.h"
#include "shared.h"
#include "park.h"
#include "splice.h"

namespace isoproxy {

// Whether two configurations of a listener use the same sockets (a reload keeps them).
bool same_sockets(const conf::ListenerConfig& a, const conf::ListenerConfig& b);

// A worker's counters; the admin endpoint sums every worker's.
struct GlobalStats {
  std::uint64_t accepted = 0;
  std::uint64_t refused = 0;
  std::uint64_t closed = 0;
  std::uint64_t bytes_to_upstream = 0;
  std::uint64_t bytes_to_client = 0;
  std::uint64_t parked = 0;  // sessions parked now (park.h): a gauge, not a counter
  std::map<std::string, std::uint64_t> connect_failures;  // by cause
  std::map<std::string, std::uint64_t> decode_errors;     // by kind
  std::map<std::string, std::uint64_t> filter_actions;    // "<filter>.<action>"
  std::map<std::string, std::uint64_t> close_reasons;
  std::map<std::string, std::uint64_t> sessions_by_upstream;    // by upstream address, at connect (Shared::admit_upstream_label)
  std::uint64_t sessions_upstream_other = 0;  // upstreams that came after that bound was reached
  std::map<std::string, std::uint64_t> sessions_by_called_tsap; // bounded by admin.metrics_tsap_labels
  std::uint64_t sessions_called_tsap_other = 0;  // called TSAPs that came after the bound was reached
};

// A closed session as the admin endpoint keeps it (the last
// admin.closed_sessions): the Session itself, its I/O state freed, rendered
// only when /sessions asks. Rendering every session's JSON at its close cost
// about 7 % of a short connection's CPU (bench/RESULTS.md), for a list most
// closes never appear in; kept, a session takes less memory than its text.
struct ClosedSession {
  std::unique_ptr<Session> session;  // closed, with final_state()
  std::uint64_t id() const { return session->id(); }
  std::uint64_t seq() const { return session->final_state()->seq; }
  std::string json() const { return session->snapshot_text(); }
  bool matches_tsap(std::string_view text) const { return session->matches_tsap(text); }
  bool matches_peer(std::string_view text) const { return session->matches_peer(text); }
};

class Server {
 public:
  Server(std::shared_ptr<const conf::Config> config, Shared& shared, unsigned index);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Listener sockets bound by the Supervisor for this worker, by listener
  // name: one fd per address of the listener, in its order.
  using Sockets = std::map<std::string, std::vector<int>>;
  // Takes `config`: listeners whose sockets are unchanged keep them and take
  // the new settings, the others are made from `fresh` (already bound and
  // listening, so nothing here can fail). On this worker's loop, or before
  // its thread starts.
  void apply(std::shared_ptr<const conf::Config> config, Sockets fresh, bool initial);
  // Runs the loop until drained (on the worker's thread); the result of
  // uv_loop_close(), or 0 when only reverse-DNS lookups were left (they are
  // abandoned, not waited for: see ReverseDns::abandon).
  int run();
  // Thread-safe: runs `fn` on this worker's loop; false once the worker has stopped.
  bool post(std::function<void(Server&)> fn);

  unsigned index() const { return index_; }
  uv_loop_t* loop() { return &loop_; }
  GlobalStats& stats() { return stats_; }
  const GlobalStats& stats() const { return stats_; }
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
  // Takes one of the process-wide max_sessions slots; false at the limit.
  bool reserve_session() { return shared_.reserve_session(config_->global.max_sessions); }
  Shared& shared() { return shared_; }
  // The counters of listener `name` on this worker, kept across reloads
  // (never removed: one entry per name ever configured).
  Listener::Counters& listener_counters(const std::string& name) { return listener_counters_[name]; }
  // Registers a new session (its slot reserved) and returns it.
  Session* new_session(Listener& l, const std::shared_ptr<const ListenerRuntime>& rt);
  void session_closed(std::uint64_t id);
  // A stopped listener's last socket closed.
  void listener_closed();
  bool draining() const { return draining_; }
  const conf::Config& config() const { return *config_; }

  // For the admin endpoint (on this worker's loop).
  std::vector<Session*> sessions_in_order();
  Session* find_session(std::uint64_t id);
  std::size_t active_sessions() const { return sessions_.size(); }
  std::uint64_t accepted() const { return stats_.accepted; }
  std::vector<const Listener*> listeners() const;
  // Counters of listener names the configuration no longer has (a reload
  // removed the listener), by name: the admin endpoint lists those whose
  // sessions, summed over the workers, are still open.
  std::vector<std::pair<std::string, Listener::Counters>> removed_listeners() const;
  const std::deque<ClosedSession>& closed_sessions() const { return closed_; }
  // The closed-session list (admin.closed_sessions > 0) keeps sessions that
  // close from now on; they join it once their handles have closed.
  bool keeps_closed() const { return config_->admin.closed_sessions > 0; }
  std::uint64_t next_close_seq() { return shared_.next_close_seq.fetch_add(1, std::memory_order_relaxed); }
  // A closed session's snapshot for the access log, when there is one.
  bool wants_access_log() const { return shared_.access_log.enabled(); }
  void write_access_log(const std::string& json) { shared_.access_log.write(json); }
  void count_called_tsap(const std::string& display);
  // One session connected to `address`, under its label while the labels are
  // fewer than Shared::kMaxUpstreamLabels, else in sessions_upstream_other.
  void count_upstream(const std::string& address);
  // Filter counters ("<filter>.<action>") by a small key, so that a session
  // keeps 16 bytes per counter rather than the name (the names are few: the
  // configuration's filters times their actions).
  std::uint32_t counter_key(std::string_view filter, std::string_view action);
  const std::string& counter_name(std::uint32_t key) const { return counter_names_[key]; }
  ReverseDns& rdns() { return rdns_; }
  const ReverseDns& rdns() const { return rdns_; }
  SessionTimers& timers() { return timers_; }
  // Whether any upstream connection of ours has this source endpoint: when
  // none has, a new client cannot be one (no need to ask for its local end).
  bool outbound_source(const Endpoint& source) const { return shared_.outbound.has_source(source); }
  // Outbound connections by "source>destination", process-wide: a new client
  // whose "peer>local" is one of them is isoproxy's own upstream connection
  // come back (a loop), whichever worker accepted it. Both ends: ephemeral
  // source ports are reused toward other destinations, so a source alone
  // would mistake a stranger for a loop.
  void outbound_opened(const EndpointPair& key, std::uint64_t session);
  // Whether a connection to `target` could be accepted by one of our
  // listeners, with `target` as its local end (what the loop check compares):
  // its port is one we listen on, or a transparent listener (TPROXY) may
  // take connections to any address.
  bool may_come_back(const conf::SocketAddress& target) const;
  void outbound_closed(const EndpointPair& key) { shared_.outbound.closed(key); }
  std::optional<std::uint64_t> outbound_owner(const EndpointPair& key) const { return shared_.outbound.owner(key); }
  // The new session `s` is the upstream connection of session `owner` come
  // back: if the chain of sessions it closes passes `s`'s listener again (or
  // is longer than `max`), every session of the chain is closed with `why`
  // (those of other workers on their own loops) and the answer is true.
  bool close_if_loop(Session& s, std::uint64_t owner, std::size_t max);
  // SIGTERM: stop accepting, let sessions finish their frames, stop the loop
  // once all are gone (drain_timeout closes what is left).
  void begin_drain();
  // A second SIGTERM: close every session now.
  void close_all(const std::string& reason);
  // With several threads, the Supervisor keeps each worker's loop after its
  // drain, so that the admin endpoint can still ask it (its totals, its
  // closed sessions) while other workers drain: `drained` runs (on this
  // worker's thread) once its last session and listener are gone, and the
  // loop ends only at release() (posted). Without it, the loop ends when drained.
  void hold_after_drain(std::function<void()> drained) { on_drained_ = std::move(drained); }
  void release();
  // Pipes and the deferred take-over for sessions in pass-through (splice.h).
  SpliceSupport& splice() { return splice_; }
  // The sockets of parked sessions (park.h).
  ParkSet& park() { return park_; }
  // A session parked (its I/O state freed): soon, malloc's free pages go
  // back to the kernel, at most every kTrimMs while sessions park.
  void session_parked();
  static constexpr std::uint64_t kTrimMs = 250;
  static constexpr std::uint32_t kTrimAfterParks = 64;

 private:
  void maybe_stop();
  void schedule_reap();
  void check_source_names();
  void on_mail();

  const unsigned index_;
  Shared& shared_;
  // The loop's memory, destroyed after every member that uses it; kept
  // (never freed) when run() left reverse-DNS lookups to the resolver: a
  // thread-pool thread still running one writes into the loop when it ends.
  struct LoopMemory {
    uv_loop_t* loop = new uv_loop_t{};
    bool keep = false;
    LoopMemory() = default;
    LoopMemory(const LoopMemory&) = delete;
    LoopMemory& operator=(const LoopMemory&) = delete;
    ~LoopMemory() {
      if (!keep) delete loop;
    }
  };
  LoopMemory loop_memory_;
  uv_loop_t& loop_ = *loop_memory_.loop;
  std::shared_ptr<const conf::Config> config_;
  std::map<std::string, Listener::Counters> listener_counters_;  // before the listeners: they point into it
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<std::unique_ptr<Listener>> stopping_listeners_;
  // Before the sessions: a parked session's destructor takes its sockets out.
  ParkSet park_{&loop_, [this](std::uint64_t id) {
                  if (Session* s = find_session(id)) s->wake();
                }};
  // The map's nodes in slabs, as the sessions (slab.h): malloc would keep
  // them among the holes the handshakes leave, and so keep those.
  SlabPool session_nodes_{32};
  using SessionMap = std::unordered_map<std::uint64_t, std::unique_ptr<Session>, std::hash<std::uint64_t>,
                                        std::equal_to<>, SlabAllocator<std::pair<const std::uint64_t, std::unique_ptr<Session>>>>;
  SessionMap sessions_{16, std::hash<std::uint64_t>(), std::equal_to<>(), SessionMap::allocator_type(&session_nodes_)};
  std::vector<std::unique_ptr<Session>> finished_;  // destroyed (or kept as closed) outside their callbacks
  void retire(std::unique_ptr<Session> s);
  uv_timer_t drain_timer_{};
  uv_timer_t dns_check_timer_{};  // the start-up PTR check runs from the loop
  uv_timer_t trim_timer_{};       // gives memory that parked sessions freed back (session_parked)
  std::uint32_t parked_since_trim_ = 0;
  uv_idle_t reaper_{};  // destroys finished sessions outside their own callbacks
  uv_prepare_t log_flush_{};  // writes the log lines of each loop iteration (log::defer)
  SessionTimers timers_;
  uv_async_t mail_{};   // post(): the Supervisor's commands
  std::mutex mail_mutex_;
  std::deque<std::function<void(Server&)>> mailbox_;
  bool mail_open_ = true;
  bool reaper_active_ = false;
  bool draining_ = false;
  bool drained_ = false;   // drained and said so (on_drained_)
  bool released_ = false;  // the loop may end once drained
  std::function<void()> on_drained_;
  bool handles_closed_ = false;
  GlobalStats stats_;
  std::deque<std::string> counter_names_;  // by counter_key (a deque: references stay valid)
  std::unordered_map<std::string_view, std::uint32_t> counter_keys_;  // views into counter_names_
  std::deque<ClosedSession> closed_;
  std::array<char, 65536> read_buffer_{};
  ReverseDns rdns_{&loop_};
  std::array<std::uint8_t, kTlsBufferSize> tls_buffer_{};
  SpliceSupport splice_{&loop_};
};

}  // namespace isoproxy
