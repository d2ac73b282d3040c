// The filter chain's extension point (DESIGN.md §4). A FilterFactory is built
// once from configuration, immutable and shared; each session gets its own
// Filter instances from it. Frames from the client run the chain in order,
// frames from the upstream in reverse. A filter sees each decoded frame and
// may pass it, change it in place or with a new length, drop it, inject a
// frame, or end the session with a reason. Every action is counted as
// `<filter>.<action>` per session and globally.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "codec/encode.h"
#include "codec/x224.h"
#include "conf/config.h"
#include "result.h"

namespace isoproxy::conf {
class TableReader;
}

namespace isoproxy::filters {

enum class Direction : std::uint8_t { kToUpstream, kToClient };
inline std::string_view direction_name(Direction d) {
  return d == Direction::kToUpstream ? "client-to-upstream" : "upstream-to-client";
}

// A TSAP as a session keeps it: absent until set; up to 30 octets (every
// TSAP seen in practice) inline, longer ones (up to 255) on the heap. An
// idle session holds two: inline, they cost no allocation and no memory
// beyond these 32 bytes.
class TsapValue {
 public:
  TsapValue() = default;
  TsapValue(const TsapValue& o) { assign(o ? *o : codec::Bytes{}, static_cast<bool>(o)); }
  TsapValue& operator=(const TsapValue& o) {
    if (this != &o) assign(o ? *o : codec::Bytes{}, static_cast<bool>(o));
    return *this;
  }
  ~TsapValue() { release(); }
  TsapValue& operator=(codec::Bytes b) {
    assign(b, true);
    return *this;
  }
  explicit operator bool() const { return state_ != kAbsent; }
  // The octets (empty when absent).
  codec::Bytes operator*() const { return {data(), len_}; }
  void reset() { release(); }

 private:
  static constexpr std::uint8_t kAbsent = 0, kInline = 1, kHeap = 2;
  static constexpr std::size_t kInlineMax = 30;
  const std::uint8_t* data() const {
    if (state_ != kHeap) return buf_;
    const std::uint8_t* p;
    std::memcpy(&p, buf_, sizeof p);
    return p;
  }
  void release() {
    if (state_ == kHeap) delete[] data();
    state_ = kAbsent;
    len_ = 0;
  }
  void assign(codec::Bytes b, bool present) {
    // The new bytes are copied before the old ones go (`b` may be them).
    const auto n = static_cast<std::uint8_t>(std::min<std::size_t>(b.size(), 255));
    std::uint8_t staged[kInlineMax];
    std::uint8_t* heap = nullptr;
    if (present && n > kInlineMax) {
      heap = new std::uint8_t[n];
      std::memcpy(heap, b.data(), n);
    } else if (present && n != 0) {
      std::memcpy(staged, b.data(), n);
    }
    release();
    if (!present) return;
    len_ = n;
    if (heap == nullptr) {
      if (n != 0) std::memcpy(buf_, staged, n);
      state_ = kInline;
      return;
    }
    std::memcpy(buf_, &heap, sizeof heap);
    state_ = kHeap;
  }
  std::uint8_t buf_[kInlineMax]{};
  std::uint8_t len_ = 0;
  std::uint8_t state_ = kAbsent;
};

// What the session knows of itself, annotated as frames pass (tsap-annotate
// fills the connection fields; stats and the close line read them).
struct SessionAnnotations {
  TsapValue calling_tsap, called_tsap;
  std::optional<std::uint8_t> tpdu_size_code_cr, tpdu_size_code_cc;  // proposed, confirmed
  std::optional<std::uint8_t> class_cr, class_cc;
  std::optional<std::uint16_t> initiator_ref, responder_ref;
  std::optional<std::uint8_t> dr_reason;  // last DR seen
  std::optional<std::uint8_t> er_cause;   // last ER seen
  Direction dr_from = Direction::kToClient;
  Direction er_from = Direction::kToClient;
};

// A frame in the chain. Starts as a view of the bytes read (writable: edits
// in place cost nothing); replace() gives it new bytes of any length, after
// which `decoded` describes the new bytes.
class ChainFrame {
 public:
  // `max_length`: the listener's max_frame, which a replacement must keep to.
  ChainFrame(codec::MutableBytes bytes, const codec::Frame* decoded, Direction dir, std::size_t max_length = 65535)
      : bytes_(bytes), decoded_(decoded), dir_(dir), max_length_(max_length) {}

  Direction direction() const { return dir_; }
  codec::MutableBytes bytes() { return bytes_; }
  codec::Bytes bytes() const { return bytes_; }
  const codec::Frame& decoded() const { return *decoded_; }
  codec::TpduType type() const { return decoded_->tpdu.type; }
  // The TPKT reserved byte as the frame holds it now: a filter before this
  // one may have repaired it in place, which decoded().header does not show.
  std::uint8_t reserved() const { return bytes_[1]; }

  // New bytes for the frame (a whole TPKT; must decode, within max_length).
  // Fails, leaving the frame as it was, if they do not.
  Status<> replace(std::vector<std::uint8_t> bytes);
  bool replaced() const { return !owned_.empty(); }

 private:
  codec::MutableBytes bytes_;
  const codec::Frame* decoded_;
  Direction dir_;
  std::size_t max_length_;
  std::vector<std::uint8_t> owned_;
  std::unique_ptr<codec::Frame> owned_decoded_;
};

// Where a session's upstream connection goes, as a routing filter decides it.
struct Route {
  std::string name;                // for logs: "<filter>/<route>"
  conf::SocketAddress upstream;
  std::optional<conf::SourceConfig> source;  // the listener's own when the route sets none
  // TLS toward this upstream: nullopt = the listener's upstream_tls; a null
  // pointer = plaintext (the route says tls = false); else these settings.
  std::optional<std::shared_ptr<const conf::TlsClientConfig>> tls = std::nullopt;
};

enum class Verdict : std::uint8_t {
  kContinue,    // pass the frame (possibly changed) to the next filter
  kDrop,        // the frame goes no further
  kEndSession,  // the frame goes no further; frames injected are written, then
                // the session closes with the reason given to end_session()
};

// What a filter can see of and do to its session, besides the frame.
class FilterContext {
 public:
  virtual ~FilterContext() = default;
  virtual std::uint64_t session_id() const = 0;
  virtual std::string_view listener() const = 0;
  virtual std::string client_address() const = 0;  // "ip:port"
  virtual const sockaddr* client_sockaddr() const = 0;  // sockaddr_in or sockaddr_in6
  // The upstream's "ip:port" once the session connects there (configured,
  // original destination, or routed); empty before: while a routing filter
  // has not chosen, and on a listener with a filter that judges CRs
  // (tsap-acl) until the whole chain has let the first CR through.
  virtual const std::string& upstream_address() const = 0;
  // A routing filter's choice, made on the first frame (the CR) before it is
  // forwarded: once the whole chain has let that frame through, the session
  // connects there and the frame (and everything after) goes there. Only the
  // first call counts.
  virtual void set_route(Route route) = 0;
  virtual SessionAnnotations& annotations() = 0;
  // Counts `<filter>.<action>` for this session and globally; `filter` is the
  // instance name the filter was created with.
  virtual void count(std::string_view filter, std::string_view action, std::uint64_t n = 1) = 0;
  // Queues a frame toward the client or the upstream, after the frame in hand.
  virtual void inject(Direction toward, std::vector<std::uint8_t> frame) = 0;
  // Ends the session once the frames already queued are written.
  virtual void end_session(std::string reason) = 0;
  // A session log line at info level, prefixed with [S<id>]. At most 16 per
  // session (a peer that repeats its CR must not flood the log): for the
  // connection-phase events of a filter (a repair, a rewrite, a refusal).
  virtual void log(std::string_view message) = 0;
  // The same at warning level, within the same bound: a failure an operator
  // must hear of at log_level = "warn" (a trace file that cannot be written).
  virtual void warn(std::string_view message) { log(message); }
  // The same without the bound, for events that are not the peer's to
  // repeat and are bounded by their own nature (a trace file rotated,
  // created or removed, which the bytes relayed set the pace of).
  virtual void log_event(std::string_view message) { log(message); }
};

class Filter {
 public:
  virtual ~Filter() = default;
  virtual Verdict on_frame(FilterContext& ctx, ChainFrame& frame) = 0;
  // A parked session (proxy/park.h) wakes with a new chain, which resumes
  // after the connection phase it never saw: a filter that acts once, on
  // the first frames, takes them as seen.
  virtual void resume_after_handshake() {}
};

class FilterFactory {
 public:
  virtual ~FilterFactory() = default;
  virtual std::string_view kind() const = 0;
  const std::string& name() const { return name_; }
  virtual std::unique_ptr<Filter> create() const = 0;
  // False when the filter has nothing to do once the connection is
  // established (CR/CC/DR/ER only): the relay may then skip framing DT data.
  virtual bool needs_data_phase() const { return true; }
  // True when the filter keeps per-session state that parking (proxy/park.h)
  // would lose, such as trace's pcap stream or tpkt-reserved's log-once bits:
  // such a session never parks. A filter that sees the data phase but
  // remembers nothing of it (tsap-acl judging each CR) lets it park.
  virtual bool keeps_session_state() const { return needs_data_phase(); }
  // True for a filter that chooses the upstream (set_route): the session then
  // connects only once the CR has been read.
  virtual bool routes() const { return false; }
  // True for a filter that must judge the client's CR before the session
  // relays anything unjudged (tsap-acl): until one has passed the chain, a
  // client stream that cannot be framed or decoded is closed, not passed raw.
  virtual bool guards_cr() const { return false; }
  // True for a filter that may connect upstream from the client's own address
  // (source = "client": IP_TRANSPARENT, which needs CAP_NET_ADMIN), so that
  // `run --user` keeps that capability.
  virtual bool uses_client_source() const { return false; }
  // The fixed source addresses the filter may bind outbound connections to
  // (a route's source = "fixed"), each with who names it ("route NAME"), so
  // that start-up and reload check them as they check a listener's.
  struct FixedSource {
    std::string who;
    conf::IpAddress address;
  };
  virtual std::vector<FixedSource> fixed_sources() const { return {}; }
  // The TLS settings toward upstreams of the filter's own (a route's tls),
  // each with who names it ("route NAME"), so that the CRL watch covers
  // them as it does a listener's.
  struct UpstreamTls {
    std::string who;
    std::shared_ptr<const conf::TlsClientConfig> tls;
  };
  virtual std::vector<UpstreamTls> upstream_tls() const { return {}; }
  // The upstreams the filter may connect to itself (a route's, its
  // default), each with who names it ("route NAME", "default"), so that
  // the loader refuses one that is the listener's own address.
  struct RouteUpstream {
    std::string who;
    conf::SocketAddress address;
  };
  virtual std::vector<RouteUpstream> route_upstreams() const { return {}; }
  // The effective settings as TOML lines ("key = value\n"), defaults
  // included, for `isoproxy check --verbose`.
  virtual std::string settings_toml() const = 0;

 protected:
  explicit FilterFactory(std::string name) : name_(std::move(name)) {}

 private:
  std::string name_;
};

}  // namespace isoproxy::filters
