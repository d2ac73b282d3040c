// A Session pairs the client's connection with its upstream connection, runs
// one TPKT framer per direction and the filter chain between them, keeps its
// stats, and decides when to close (DESIGN.md §4).
//
// Ownership (DESIGN.md §5): every uv handle lives by value in the Session,
// which never moves; handle.data = the Leg or the Session. close() closes every
// initialised handle; the Server destroys the Session only after all their
// close callbacks ran. Writes own their bytes.
#pragma once

#include <netinet/in.h>
#include <uv.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "codec/tpkt.h"
#include "conf/config.h"
#include "filters/chain.h"
#include "shared.h"
#include "tls.h"

namespace isoproxy {

class SlabPool;

class Server;
class Listener;

// The immutable per-listener configuration a session runs with. Reloads make
// new ones; sessions keep the one they started with.
struct ListenerRuntime {
  conf::ListenerConfig cfg;
  filters::FactoryList factories;
};

enum class SessionState : std::uint8_t { kConnecting, kAwaitingCc, kEstablished, kDraining, kClosed };
std::string_view session_state_name(SessionState s);

// Per direction, named by where the bytes go. Kept small (a live session
// holds two): DT counts take 64 bits, the nine other TPDU types are few per
// session and count in 32 bits, saturating.
struct DirectionStats {
  std::uint64_t bytes = 0;
  std::uint64_t frames = 0;
  std::uint64_t dt = 0;                   // DT TPDUs
  std::uint64_t tsdus = 0;                // DT with EOT
  std::uint64_t anomalies = 0;
  std::uint64_t raw_bytes = 0;            // passed through unframed
  std::uint64_t passthrough_bytes = 0;    // spliced in pass-through (not framed; also in `bytes`)
  std::array<std::uint32_t, 9> tpdus{};   // the other types, by slot()
  std::uint32_t decode_errors = 0;

  static constexpr std::size_t kTypes = 16;  // TPDU type nibbles
  static constexpr auto kDt = static_cast<std::size_t>(codec::TpduType::kDT);
  // ED EA RJ AK ER DR DC CC CR: slots 0-8; the nibbles no type has, 9 (never counted).
  static constexpr std::size_t slot(std::size_t type) {
    constexpr std::array<std::uint8_t, kTypes> s{9, 0, 1, 9, 9, 2, 3, 4, 5, 9, 9, 9, 6, 7, 8, 9};
    return type < kTypes ? s[type] : 9;
  }
  void count_tpdu(std::size_t type) {
    if (type == kDt) {
      ++dt;
      return;
    }
    const std::size_t i = slot(type);
    if (i < tpdus.size() && tpdus[i] != UINT32_MAX) ++tpdus[i];
  }
  std::uint64_t tpdu(std::size_t type) const {
    if (type == kDt) return dt;
    const std::size_t i = slot(type);
    return i < tpdus.size() ? tpdus[i] : 0;
  }
};

// A session's filter counters, by Server::counter_key: three inline (the
// default configuration's filters count up to three things: a repair and
// the CR and CC annotated), all on the heap beyond.
class FilterCounters {
 public:
  using Entry = std::pair<std::uint32_t, std::uint64_t>;
  void add(std::uint32_t key, std::uint64_t n) {
    for (Entry& e : entries_mut()) {
      if (e.first == key) {
        e.second += n;
        return;
      }
    }
    if (!heap_ && n_ < inline_.size()) {
      inline_[n_++] = {key, n};
      return;
    }
    if (!heap_) heap_ = std::make_unique<std::vector<Entry>>(inline_.begin(), inline_.begin() + n_);
    heap_->emplace_back(key, n);
  }
  std::span<const Entry> entries() const {
    if (heap_) return {heap_->data(), heap_->size()};
    return {inline_.data(), n_};
  }

 private:
  std::span<Entry> entries_mut() {
    if (heap_) return {heap_->data(), heap_->size()};
    return {inline_.data(), n_};
  }
  std::array<Entry, 3> inline_{};
  std::size_t n_ = 0;
  std::unique_ptr<std::vector<Entry>> heap_;
};

class Session final : public filters::FilterContext {
 public:
  enum class Side : std::uint8_t { kClient, kUpstream };

  Session(Server& server, Listener& listener, std::uint64_t id, std::shared_ptr<const ListenerRuntime> rt);
  ~Session() override;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  // Sessions come from their worker's SlabPool (slab.h), packed together
  // rather than among the short-lived allocations of their handshakes.
  static void* operator new(std::size_t size);
  static void operator delete(void* p);
  static SlabPool& pool();

  // Accepts the pending connection of `server_stream`; on failure the session
  // is closed (and reported) by the call.
  void start(uv_stream_t* server_stream);
  // SIGTERM: stop at the next frame boundary, flush, close.
  void drain();
  // Closes now, exactly once; `reason` is the named close reason.
  void close(std::string reason, bool reset_peers = false);
  // Pass-through (issue 7): takes both sockets over from libuv and splices
  // the data phase, if the session is still eligible. Called by the Server
  // from the loop's idle phase, never from a libuv stream callback.
  void enter_passthrough();

  std::uint64_t id() const { return id_; }
  // Everything the session knows of itself, as the admin endpoint shows it
  // (field names documented in the README's stats section), as compact JSON
  // text written directly (no tree): what /sessions, the close record and the
  // access log print.
  std::string snapshot_text() const;
  // What a closed session's snapshot shows that lived in its I/O state or
  // in the rDNS cache: taken at close when the closed-session list will
  // keep the session (Server::retire), which renders it only when asked.
  struct Final {
    std::uint64_t seq = 0;  // close order across workers
    std::uint64_t duration_ns = 0;
    std::string listener;   // the runtime (its filter factories: a trace file) is not kept
    std::string close_reason;
    std::optional<std::string> client_name, upstream_name;
    std::string client_tls, upstream_tls;  // their JSON objects; "" for null
  };
  // Frees what only an open session needs (its I/O state, filters,
  // buffers) and its hold on the listener's runtime: a session the
  // closed-session list keeps holds its stats, and a reload's old filter
  // factories (a trace filter's open file) go when their last open session does.
  void release_io() {
    io_.reset();
    if (final_) rt_.reset();
  }
  const Final* final_state() const { return final_.get(); }
  // For filtering views: the TSAPs in both forms, the peers' addresses.
  bool matches_tsap(std::string_view text) const;
  bool matches_peer(std::string_view text) const;
  bool closed() const { return state_ == SessionState::kClosed; }
  // The state as shown: a draining session says so, whatever its phase.
  SessionState state() const {
    return draining_ && state_ != SessionState::kClosed ? SessionState::kDraining : state_;
  }
  Listener& owner() { return listener_; }
  bool parked() const { return parked_; }
  // An event on a parked socket: the session rebuilds its I/O and goes on.
  void wake();

  // FilterContext
  std::uint64_t session_id() const override { return id_; }
  std::string_view listener() const override { return rt_->cfg.name; }
  // Formatted when asked (a filter's log line, the stats): not kept.
  std::string client_address() const override;
  const sockaddr* client_sockaddr() const override { return &client_ss_.sa; }
  const std::string& upstream_address() const override { return upstream_addr_; }
  void set_route(filters::Route route) override;
  filters::SessionAnnotations& annotations() override { return ann_; }
  void count(std::string_view filter, std::string_view action, std::uint64_t n) override;
  void inject(filters::Direction toward, std::vector<std::uint8_t> frame) override;
  void end_session(std::string reason) override;
  void log(std::string_view message) override;
  void warn(std::string_view message) override;
  void log_event(std::string_view message) override;

 private:
  struct Leg {
    uv_tcp_t tcp{};
    Session* session = nullptr;
    Side side = Side::kClient;
    bool initialised = false;
    bool connected = false;
    bool reading = false;
    bool eof = false;            // the peer sent FIN
    bool shutdown_sent = false;  // we sent FIN toward this peer
    bool shutdown_done = false;
    bool shutdown_wanted = false;  // FIN toward this peer once it is connected
    bool drain_stopped = false;
    std::uint64_t queued = 0;      // bytes in uv_write requests not yet completed (and tls_pending)
    bool over_high_water = false;  // this leg's queue pauses the other leg's reading
    // TLS on this leg (proxy/tls.h): null for plaintext. Frames for this peer
    // are encrypted under the framing; what arrives before the handshake is
    // done waits in tls_pending (counted in `queued`, so backpressure holds).
    std::unique_ptr<tls::Channel> tls;
    std::uint64_t tls_deadline_ms = 0;  // loop time by which the handshake must be done
    std::vector<std::uint8_t> tls_pending;
  };
  // One direction of bytes: read from `from`, written to the other leg.
  // What a parked session keeps of it (its framer is in Io).
  struct Flow {
    bool raw = false;         // passing bytes through unframed
    bool seen_frame = false;  // at least one whole TPKT
    bool drain_in_flight = false;        // draining: a frame was half-read when the drain began
    std::uint32_t held_at_close = 0;     // octets of a frame still incomplete at close: read, never relayed
    std::uint64_t drain_discarded = 0;   // draining: octets of frames begun after it, or sent after its FIN, not relayed
    DirectionStats stats;
  };
  // Pass-through: state allocated only for sessions that enter it.
  struct Passthrough;
  // The I/O state: libuv handles, framers, queues, pass-through. Allocated
  // while the session is awake, released while it is parked (park.h), so
  // that an idle session holds only its stats and its two sockets.
  struct Io {
    Leg client;
    Leg upstream;
    // The filters' per-session state (a filter that logs a repair once per
    // session logs it once per wake-up).
    filters::FilterChain chain;
    std::array<codec::TpktFramer, 2> framer;  // client -> upstream, upstream -> client
    std::vector<std::uint8_t> pending_up;     // bytes for the upstream before its socket exists
    std::vector<std::pair<filters::Direction, std::vector<std::uint8_t>>> injected;
    std::unique_ptr<Passthrough> pt;          // null unless the session became eligible for pass-through
    std::unique_ptr<filters::Route> chosen_route;  // a routing filter's choice, until the CR is through the chain
    int closing_handles = 0;                  // parking: handles still closing (then the Io is freed)
    // What only an awake session needs (a parked one is established and quiet).
    std::string pending_close_reason;  // linger, close after flush, a filter's end_session
    std::string close_reason;          // set by close()
    std::uint64_t connect_start_ms = 0;
    std::uint64_t flush_start_ms = 0;   // close_after_flush: when it began
    std::uint64_t linger_start_ms = 0;
    std::uint64_t keepalive_at_ms = 0;  // when the upstream leg's keepalive goes on (0: done or off)
    Io(std::size_t max_frame, const filters::FactoryList& factories);
    // From the worker's SlabPool (slab.h): memory that parking frees goes
    // back to the kernel.
    static void* operator new(std::size_t size);
    static void operator delete(void* p);
    static SlabPool& pool();
    ~Io();
  };

  Leg& leg(Side s) { return s == Side::kClient ? io_->client : io_->upstream; }
  Leg& other(Leg& l) { return l.side == Side::kClient ? io_->upstream : io_->client; }
  Flow& flow_from(Side s) { return s == Side::kClient ? to_upstream_ : to_client_; }
  codec::TpktFramer& framer_of(const Flow& f) const { return io_->framer[&f == &to_upstream_ ? 0 : 1]; }
  // Octets of a frame not complete yet that the framer holds (at close: held then).
  std::uint64_t held_bytes(const Flow& f) const;
  static std::string_view side_name(Side s) { return s == Side::kClient ? "client" : "upstream"; }

  void start_upstream();
  // Once the chain let the client's frame through: to the listener's
  // upstream (or the original destination, transparent), or to a route.
  void connect_configured();
  void connect_route(const filters::Route& route);
  void connect_upstream(const conf::SocketAddress& target, const conf::SourceConfig& source,
                        std::shared_ptr<const conf::TlsClientConfig> tls);
  void on_connect(int status);
  void on_read(Leg& from, ssize_t nread, const uv_buf_t* buf);
  void on_eof(Leg& from);
  void on_read_error(Leg& from, int err);
  void process(Leg& from, codec::MutableBytes data);
  void handle_frame(Leg& from, Flow& f, codec::MutableBytes frame, std::vector<uv_buf_t>& out);
  void to_raw(Leg& from, Flow& f, std::string_view why);
  void send(Leg& to, const uv_buf_t* bufs, unsigned n);
  void send_owned(Leg& to, std::vector<std::uint8_t> bytes);
  void write_wire(Leg& to, const uv_buf_t* bufs, unsigned n, std::size_t total);
  void check_high_water(Leg& to);
  void check_low_water(Leg& to);
  // TLS legs: ciphertext in, plaintext to process(); frames out encrypted.
  void on_tls_data(Leg& from, const std::uint8_t* data, std::size_t n);
  void on_tls_established(Leg& l);
  void send_tls(Leg& to, const uv_buf_t* bufs, unsigned n, std::size_t total);
  void flush_tls(Leg& l);
  void tls_failed(Leg& l);
  void on_write_done(Leg& to, std::size_t len, int status);
  void on_shutdown_done(Leg& l, int status);
  void maybe_shutdown(Leg& l);
  void update_reading(Leg& l);
  void maybe_finish();
  void close_after_flush(std::string reason);
  // A clean close: FIN toward both peers, read and discard until both have
  // closed (or kLingerMs), then close. Closing a socket with unread input
  // makes Linux send RST and drop what the peer has not received yet.
  void linger(std::string reason);
  void check_linger_done();
  bool peer_reset(Leg& l);
  void arm_timer();
  void on_timer();
  bool handshake_timed() const;  // handshake_timeout applies now
  // Why the session cannot park for the rest of its life, or nullptr if it
  // may later (a slow reader, a FIN on its way).
  const char* never_parks() const;
  // idle_timeout has passed: closes and says so.
  bool close_if_idle(std::uint64_t now);
  // The upstream leg's keepalive, due kKeepaliveAfterMs after connect.
  void upstream_keepalive_on();
  void on_handle_closed();
  // A pass-through poll handle closed: its slot is free (then on_handle_closed).
  static void on_poll_closed(uv_handle_t* h) noexcept;
  void send_er(Leg& toward, const codec::DecodeError& e, codec::Bytes frame);
  bool passthrough_eligible() const;
  void filter_line(bool warning, std::string_view message);  // log() and warn(), within one bound
  // Bytes handed to the kernel or the TLS channel toward `to`: the global counters.
  void count_sent(const Leg& to, std::size_t n);
  // Why the client's bytes may not be relayed unframed (hence unjudged): a
  // filter judges every CR it sends (tsap-acl). nullptr: they may.
  // What a session with awaiting_cr_ waits for, for its close reasons: a
  // filter that judges CRs (tsap-acl) decides last, whether or not a route
  // is chosen on the same CR.
  const char* awaited_cr() const { return io_->chain.guards_cr() ? "a CR was allowed" : "a CR chose a route"; }
  const char* client_raw_refused() const {
    if (!io_->chain.guards_cr()) return nullptr;
    return cr_passed_ ? "a filter judges every CR" : "no CR allowed yet";
  }
  void maybe_passthrough();
  bool in_passthrough() const;
  void on_poll(Leg& l, int status, int events);
  void pump(Leg& from);
  void update_polls();
  void fin_toward(Leg& to);
  void check_drain_quiet();
  bool pipes_empty() const;
  void leave_passthrough();
  // Parking (park.h).
  bool park_eligible() const;
  bool park();
  void init_io();
  // Rebuilds the I/O state on the parked sockets; `resume`: reading (or
  // pass-through) starts again, else the caller closes the session.
  void unpark(bool resume);
  std::string close_line() const;
  static std::string tls_json(const tls::Channel* t);
  const char* dr_from_text() const;
  std::string local_destination_hint() const;

  Server& server_;
  Listener& listener_;
  const std::uint64_t id_;
  std::shared_ptr<const ListenerRuntime> rt_;
  SessionState state_ = SessionState::kConnecting;
  std::unique_ptr<Io> io_;  // null while parked
  Flow to_upstream_;
  Flow to_client_;
  std::uint64_t deadline_ms_ = UINT64_MAX;  // SessionTimers: when on_timer() is due
  std::uint32_t timer_slot_ = UINT32_MAX;   // SessionTimers: the index in its heap
  int open_handles_ = 0;
  bool closing_ = false;
  bool close_after_flush_ = false;
  bool lingering_ = false;
  bool draining_ = false;                 // SIGTERM: finishing the frame in flight
  // How far above high water a TLS peer's own queue may grow with answers
  // to what it sends (KeyUpdates) before it is no longer read: more than one
  // read's worth of relayed data, which may overshoot high water.
  static constexpr std::size_t kTlsControlSlack = 256 * 1024;
  static constexpr std::uint64_t kFlushMs = 5000;  // a peer that will not read does not hold the slot
  static constexpr std::uint64_t kKeepaliveAfterMs = 1000;
  static constexpr std::uint64_t kLingerMs = 2000;
  bool non_rfc1006_ = false;
  const char* first_fin_ = nullptr;  // "client" or "upstream": who closed first
  std::string upstream_addr_, route_name_;
  // An IPv4 or IPv6 address and port, in 28 bytes (sockaddr_storage has 128).
  union SockAddr {
    sockaddr sa;
    sockaddr_in in;
    sockaddr_in6 in6;
  };
  SockAddr client_ss_{};
  SockAddr upstream_ss_{};  // family 0 until an upstream is chosen
  SockAddr source_ss_{};    // the upstream connection's local end; family 0 until known
  std::string source_text() const;  // "" until known
  // The upstream connection, as registered with the Server (loop check).
  EndpointPair outbound_key() const;
  static bool local_name(const Leg& l, SockAddr& out);
  // The CR's wait for its CC; none without both, or for a CC the upstream
  // sent before the client's CR (a peer out of order: no such wait).
  std::optional<std::uint64_t> cr_to_cc_ms() const {
    if (cc_ms_ == 0 || cr_ms_ == 0 || cc_ms_ < cr_ms_) return std::nullopt;
    return cc_ms_ - cr_ms_;
  }
  bool awaiting_cr_ = false;                 // no upstream before the CR: a routing filter chooses it, or a tsap-acl must allow the CR
  bool cr_passed_ = false;                   // a client CR went through the chain (kept while parked)
  bool awaiting_client_tls_ = false;         // the upstream is connected once the client's TLS handshake is done
  std::uint64_t start_ms_ = 0, last_activity_ms_ = 0, cc_ms_ = 0, cr_ms_ = 0;  // loop time, for timers
  std::uint64_t start_ns_ = 0;  // uv_hrtime, for the duration in the close line
  std::int64_t start_unix_ms_ = 0;  // wall clock, for "started" in the stats
  bool dr_injected_ = false;
  bool outbound_registered_ = false;
  std::uint64_t parent_ = 0;  // the session whose upstream connection this one's client is (chained listeners)
  static constexpr std::size_t kMaxChain = 16;  // longer chains of listeners count as a loop  // the last DR was isoproxy's own (a filter's refusal)
  filters::SessionAnnotations ann_;
  FilterCounters counters_;
  std::unique_ptr<Final> final_;  // set by close() when the closed-session list keeps this session

  // Parked: the two sockets (client, upstream), watched by the Server's ParkSet.
  std::array<int, 2> park_fd_{-1, -1};
  static constexpr std::uint16_t kMaxFilterLogLines = 16;  // per session (log())
  std::uint16_t filter_log_lines_ = 0;
  std::uint64_t park_retry_ms_ = 0;   // not eligible at its deadline: the next look
  std::uint32_t park_delay_ms_ = 0;   // backed off after a quick wake (0: park_after)
  std::uint64_t park_delay() const;   // the quiet before parking, now
  std::uint32_t parks_ = 0;           // times parked (stats)
  bool parked_ = false;
  bool park_in_passthrough_ = false;  // parked from pass-through: wakes into it again
  bool passthrough_entered_ = false;  // was in pass-through at some time (stats)

  friend class Server;
  friend class Listener;
  friend class SessionTimers;
};

}  // namespace isoproxy
