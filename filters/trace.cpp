// trace: writes both directions of selected sessions to pcap files, each
// frame as one TCP segment between the real client and upstream addresses
// (synthetic IP/TCP headers, a handshake and a FIN per session), so that
// tshark and Wireshark reassemble and dissect them as TPKT/COTP. The frames
// are written as the filter sees them: its place in the chain decides whether
// a capture shows what the peers sent or what isoproxy forwards. Changes
// nothing on the wire, and a failing disk never disturbs the relay: the
// session stops being traced and that is counted and logged.
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <toml++/toml.h>

#include "conf/toml_reader.h"
#include "filters/registry.h"
#include "filters/tsap_match.h"
#include "pcap_writer.h"

namespace isoproxy::filters {

namespace {

namespace fs = std::filesystem;

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMinFileSize = 64 * kKiB;
constexpr std::uint64_t kMaxFileSize = kKiB * kKiB * kKiB * kKiB;  // 1TiB
constexpr std::uint64_t kDefaultFileSize = 64 * kKiB * kKiB;
constexpr std::int64_t kDefaultMaxFiles = 10;
constexpr std::int64_t kMaxMaxFiles = 1000000;
// Frames held while a routing filter later in the chain has not chosen the
// upstream (normally just the CR).
constexpr std::size_t kMaxPending = 256 * 1024;

// What PcapWriter puts around a segment's payload: the pcap record header,
// an IP header and a 20-octet TCP header; payloads are cut into segments of
// at most 65000 octets (pcap_writer.cpp). Used to rotate before a file would
// pass max_file_size rather than after.
constexpr std::uint64_t kSegmentPayloadMax = 65000;
std::uint64_t segment_overhead(bool ipv6) { return 16 + (ipv6 ? 40 : 20) + 20; }
std::uint64_t data_size(std::uint64_t payload, bool ipv6) {
  const std::uint64_t segments = (payload + kSegmentPayloadMax - 1) / kSegmentPayloadMax;
  return payload + segments * segment_overhead(ipv6);
}
// A handshake (SYN, SYN+ACK, ACK) and a close (FIN, FIN+ACK, ACK) are three
// empty segments each.
std::uint64_t handshake_size(bool ipv6) { return 3 * segment_overhead(ipv6); }
std::uint64_t close_size(bool ipv6) { return 3 * segment_overhead(ipv6); }

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}


struct TraceSettings {
  std::string directory;  // absolute
  std::uint64_t max_file_size = kDefaultFileSize;
  std::int64_t max_files = kDefaultMaxFiles;  // 0 = keep all
  std::vector<conf::Cidr> clients;            // empty = every client
  std::vector<TsapPattern> calling, called;   // empty = any
  bool by_tsap() const { return !calling.empty() || !called.empty(); }
};

// --- addresses ---------------------------------------------------------------

struct IpPort {
  int family = AF_UNSPEC;
  std::uint8_t bytes[16] = {};
  std::uint16_t port = 0;
};

constexpr std::uint8_t kV4MappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

std::optional<IpPort> from_sockaddr(const sockaddr& sa) {
  IpPort a;
  if (sa.sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&sa);
    a.family = AF_INET;
    std::memcpy(a.bytes, &in->sin_addr, 4);
    a.port = ntohs(in->sin_port);
    return a;
  }
  if (sa.sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&sa);
    a.family = AF_INET6;
    std::memcpy(a.bytes, &in6->sin6_addr, 16);
    a.port = ntohs(in6->sin6_port);
    return a;
  }
  return std::nullopt;
}

// "ip:port" or "[v6]:port" as the session writes them; a zone ("%eth0") is
// dropped, since a capture has no place for it.
std::optional<IpPort> parse_ip_port(std::string text) {
  if (const auto pct = text.find('%'); pct != std::string::npos) {
    const auto close = text.find(']', pct);
    text.erase(pct, close == std::string::npos ? std::string::npos : close - pct);
  }
  auto parsed = conf::parse_socket_address(text, 102, true);
  if (!parsed) return std::nullopt;
  return from_sockaddr(*reinterpret_cast<const sockaddr*>(&parsed->storage));
}

bool is_v4_mapped(const IpPort& a) {
  return a.family == AF_INET6 && std::memcmp(a.bytes, kV4MappedPrefix, 12) == 0;
}
void unmap(IpPort& a) {
  std::memmove(a.bytes, a.bytes + 12, 4);
  std::memset(a.bytes + 4, 0, 12);
  a.family = AF_INET;
}
void map_to_v6(IpPort& a) {
  std::memmove(a.bytes + 12, a.bytes, 4);
  std::memcpy(a.bytes, kV4MappedPrefix, 12);
  a.family = AF_INET6;
}

std::string ip_text(const IpPort& a) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (inet_ntop(a.family, a.bytes, buf, sizeof buf) == nullptr) return a.family == AF_INET6 ? "::" : "0.0.0.0";
  return buf;
}

// Both ends of a flow in one family, as pcap needs: an IPv4 client seen on
// an IPv6 socket (::ffff:a.b.c.d) is written as IPv4 when the upstream is
// IPv4; a genuine IPv6 client relayed to an IPv4 upstream shows the upstream
// as ::ffff:a.b.c.d.
PcapFlow make_flow(IpPort client, IpPort server) {
  if (client.family != server.family) {
    if (is_v4_mapped(client)) unmap(client);
    else if (is_v4_mapped(server)) unmap(server);
  }
  if (client.family != server.family) {
    if (client.family == AF_INET) map_to_v6(client);
    else map_to_v6(server);
  }
  return PcapFlow{ip_text(client), client.port, ip_text(server), server.port};
}

// --- files -------------------------------------------------------------------

// Every trace file this process has open, so that max_files never deletes a
// file still being written (after a reload, the old configuration's sessions
// keep writing theirs while the new one opens its own).
struct OpenFiles {
  std::mutex mu;
  std::set<std::string> paths;
};
OpenFiles& open_files() {
  static OpenFiles files;
  return files;
}

// The last trace file's sequence number, for the whole process: a reload
// makes new sinks, and a count of their own would start again at 1, so that
// a file opened after the reload within the same second sorted before the
// older ones and max_files removed it first.
std::atomic<std::uint64_t> g_last_seq{0};

// Flows registered in any trace file of the process: each session's part in
// each file gets its own ordinal, hence its own ISNs (PcapFlow::ordinal).
std::atomic<std::uint32_t> g_flow_ordinal{0};

// "isoproxy-<listener>-<yyyymmddThhmmss>-<seq>.pcap" -> sort key, or nothing
// if the name is not one of this listener's trace files.
std::optional<std::pair<std::string, std::uint64_t>> trace_file_key(std::string_view name, std::string_view listener) {
  const std::string prefix = "isoproxy-" + std::string(listener) + "-";
  if (!name.starts_with(prefix) || !name.ends_with(".pcap")) return std::nullopt;
  std::string_view rest = name.substr(prefix.size(), name.size() - prefix.size() - 5);
  // 15 characters of timestamp, '-', and at least one digit.
  if (rest.size() < 17 || rest[8] != 'T' || rest[15] != '-') return std::nullopt;
  const auto digits = [](std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  if (!digits(rest.substr(0, 8)) || !digits(rest.substr(9, 6)) || !digits(rest.substr(16)) || rest.size() > 16 + 19)
    return std::nullopt;
  return std::make_pair(std::string(rest.substr(0, 15)), std::stoull(std::string(rest.substr(16))));
}

// One session's flow as the sink knows it.
struct FlowHandle {
  std::string listener;
  PcapFlow flow;
  bool ipv6 = false;
  std::uint64_t generation = 0;  // of the file the flow is registered in; 0 = none
  int id = -1;
};

// The files of one filter instance: one current file per listener, shared by
// all of that listener's sessions. Owned by the factory and by every filter
// it created (a session may outlive a reload that drops the factory).
class TraceSink {
 public:
  TraceSink(std::string name, TraceSettings s) : name_(std::move(name)), s_(std::move(s)) {}
  ~TraceSink() {
    std::lock_guard lock(mu_);
    for (auto& [listener, f] : files_) close_file(f);
  }
  TraceSink(const TraceSink&) = delete;
  TraceSink& operator=(const TraceSink&) = delete;

  const std::string& name() const { return name_; }
  const TraceSettings& settings() const { return s_; }
  // No new file this long after a failure.
  static constexpr std::chrono::seconds kRetryAfterError{10};

  // Writes one frame of `h`'s flow, registering the flow (a handshake) in
  // the current file first if it is not there yet, and rotating first if
  // the file would pass max_file_size. The error names the file.
  Status<> write(FilterContext& ctx, FlowHandle& h, bool from_client, codec::Bytes bytes, double time) {
    std::lock_guard lock(mu_);
    Files& f = files_[h.listener];
    bool registered = f.writer && h.generation == f.generation;
    const std::uint64_t need =
        data_size(bytes.size(), h.ipv6) + (registered ? 0 : handshake_size(h.ipv6) + close_size(h.ipv6));
    if (f.writer && f.broken) {
      // A failed write may have left half a record: nothing after it would
      // read back. Start a fresh file.
      close_file(f);
    } else if (f.writer && f.flows > 0 && f.writer->bytes_written() + f.reserved + need > s_.max_file_size) {
      const std::string old = f.path;
      close_file(f);
      ctx.count(name_, "files-rotated");
      ctx.log_event(name_ + ": trace file " + old + " reached max_file_size (" + conf::format_size(s_.max_file_size) +
              "); rotating");
    }
    if (!f.writer) {
      // After a failure (a full disk, a directory gone) a new file waits
      // kRetryAfterError: else each new session would make one more empty
      // file, and log about it, for as long as the disk stays full.
      if (std::chrono::steady_clock::now() < f.retry_at) {
        // A session that was being traced stops, and says so; one that
        // would start now is only counted (the failure was said already).
        return unexpected(Error{registered || h.generation != 0 ? "write" : "trace-paused",
                                "the trace file failed (" + f.last_error + ")"});
      }
      if (auto r = open_file(ctx, h.listener, f); !r) return fail(f, r.error());
      registered = false;
    }
    if (!registered) {
      h.flow.ordinal = g_flow_ordinal.fetch_add(1, std::memory_order_relaxed) + 1;
      if (h.flow.ordinal == 0) h.flow.ordinal = g_flow_ordinal.fetch_add(1, std::memory_order_relaxed) + 1;  // wrapped
      auto id = f.writer->add_flow(h.flow, time);
      if (!id) return fail(f, id.error());
      h.id = *id;
      h.generation = f.generation;
      ++f.flows;
      f.reserved += close_size(h.ipv6);
    }
    if (auto r = f.writer->write(h.id, from_client, bytes, time); !r) return fail(f, r.error());
    // Flushed per frame: the file is meant to be opened while the session
    // still runs, and a full disk must show on the session that hit it.
    if (auto r = f.writer->flush(); !r) return fail(f, r.error());
    return Ok{};
  }

  // The session's end: FIN both ways, if the flow is in the current file
  // (a flow left behind in a rotated file simply stops there).
  void close(FlowHandle& h) {
    std::lock_guard lock(mu_);
    auto it = files_.find(h.listener);
    if (it == files_.end()) return;
    Files& f = it->second;
    if (!f.writer || f.broken || h.generation != f.generation) return;
    f.reserved -= std::min(f.reserved, close_size(h.ipv6));
    h.generation = 0;
    // No session is left to report to: a failure here only marks the file,
    // and the next frame of any session starts a new one (and reports a
    // failure there, which then waits kRetryAfterError).
    if (!f.writer->close_flow(h.id, now_seconds()) || !f.writer->flush()) f.broken = true;
  }

 private:
  struct Files {
    std::unique_ptr<PcapWriter> writer;
    std::string path;
    std::uint64_t generation = 0;
    std::uint64_t flows = 0;     // flows registered in the current file
    std::uint64_t reserved = 0;  // room kept for the FINs of its open flows
    bool broken = false;
    std::chrono::steady_clock::time_point retry_at{};  // no new file before (after a failure)
    bool numbered = false;  // the directory's numbers of that second looked at (open_file)
    std::string last_error;
  };

  Status<> fail(Files& f, const Error& e) {
    f.broken = true;
    f.retry_at = std::chrono::steady_clock::now() + kRetryAfterError;
    f.last_error = e.message;
    return unexpected(e);
  }

  void close_file(Files& f) {
    if (!f.writer) return;
    (void)f.writer->flush();  // an error here was (or will be) reported by a write
    f.writer.reset();
    std::lock_guard lock(open_files().mu);
    open_files().paths.erase(f.path);
  }

  Status<> open_file(FilterContext& ctx, const std::string& listener, Files& f) {
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%S", &tm);
    std::string path;
    std::error_code ec;
    // The sequence number tells apart files opened within one second; one
    // left by an earlier run is never overwritten. After a restart within
    // the second of that run's last file, the numbers it used that second
    // (some freed by max_files) are passed over, so that the new file sorts
    // after every one left and max_files does not take it first.
    // (Once per listener and sink: later files number above it anyway.)
    if (!f.numbered) {
      std::uint64_t highest = 0;
      for (fs::directory_iterator it(s_.directory, ec), end; !ec && it != end; it.increment(ec)) {
        const auto key = trace_file_key(it->path().filename().string(), listener);
        if (key && key->first == stamp) highest = std::max(highest, key->second);
      }
      for (std::uint64_t seq = g_last_seq.load(); seq < highest && !g_last_seq.compare_exchange_weak(seq, highest);) {
      }
      f.numbered = true;
    }
    do {
      path = (fs::path(s_.directory) /
              ("isoproxy-" + listener + "-" + stamp + "-" + std::to_string(++g_last_seq) + ".pcap"))
                 .string();
    } while (fs::exists(path, ec));
    auto w = PcapWriter::open(path);
    if (!w) return unexpected(w.error());
    f.writer = std::move(*w);
    f.path = path;
    f.generation = ++generations_;
    f.flows = 0;
    f.reserved = 0;
    f.broken = false;
    {
      std::lock_guard lock(open_files().mu);
      open_files().paths.insert(path);
    }
    ctx.log_event(name_ + ": writing trace file " + path);
    remove_old_files(ctx, listener);
    return Ok{};
  }

  // Keeps the newest max_files of this listener's trace files in the
  // directory, those of earlier runs included, so that the disk use stays
  // bounded across restarts.
  void remove_old_files(FilterContext& ctx, const std::string& listener) {
    if (s_.max_files <= 0) return;
    std::error_code ec;
    std::vector<std::pair<std::pair<std::string, std::uint64_t>, fs::path>> found;
    for (fs::directory_iterator it(s_.directory, ec), end; !ec && it != end; it.increment(ec)) {
      if (auto key = trace_file_key(it->path().filename().string(), listener)) found.emplace_back(*key, it->path());
    }
    if (ec) {
      ctx.warn(name_ + ": cannot list " + s_.directory + " to remove old trace files: " + ec.message());
      return;
    }
    const auto keep = static_cast<std::size_t>(s_.max_files);
    if (found.size() <= keep) return;
    std::sort(found.begin(), found.end());
    std::lock_guard lock(open_files().mu);
    for (std::size_t i = 0; i + keep < found.size(); ++i) {
      const std::string p = found[i].second.string();
      if (open_files().paths.count(p) != 0) continue;
      if (fs::remove(found[i].second, ec)) {
        ctx.log_event(name_ + ": removed old trace file " + p + " (max_files = " + std::to_string(s_.max_files) + ")");
      } else if (ec) {
        ctx.warn(name_ + ": cannot remove old trace file " + p + ": " + ec.message());
      }
    }
  }

  const std::string name_;
  const TraceSettings s_;
  std::mutex mu_;  // the workers' loops share the sink (workers = N)
  std::map<std::string, Files, std::less<>> files_;  // by listener
  std::uint64_t generations_ = 0;
};

// --- the filter ----------------------------------------------------------------

class Trace final : public Filter {
 public:
  explicit Trace(std::shared_ptr<TraceSink> sink) : sink_(std::move(sink)) {}

  ~Trace() override {
    if (state_ != State::kTracing) return;
    if (!flow_ready_ && !pending_.empty()) {
      NullContext null_ctx;
      // The upstream was never chosen (a routing filter later in the chain
      // refused the CR): the frames seen still go in, toward the unspecified
      // address on port 102. No session is left to report an error to.
      IpPort none;
      none.family = client_.family;
      none.port = 102;
      make_handle(none);
      for (const auto& p : pending_) {
        if (!sink_->write(null_ctx, handle_, p.from_client, p.bytes, p.time)) return;
      }
    }
    if (flow_ready_) sink_->close(handle_);
  }

  Verdict on_frame(FilterContext& ctx, ChainFrame& frame) override {
    if (state_ == State::kUndecided) decide(ctx, frame);
    if (state_ == State::kTracing) trace(ctx, frame);
    return Verdict::kContinue;
  }

 private:
  enum class State : std::uint8_t { kUndecided, kTracing, kOff };

  struct Pending {
    bool from_client;
    std::vector<std::uint8_t> bytes;
    double time;
  };

  // A context for the destructor's writes, which have no session to count
  // or log on.
  class NullContext final : public FilterContext {
   public:
    std::uint64_t session_id() const override { return 0; }
    std::string_view listener() const override { return {}; }
    std::string client_address() const override { return empty_; }
    const sockaddr* client_sockaddr() const override { return reinterpret_cast<const sockaddr*>(&ss_); }
    const std::string& upstream_address() const override { return empty_; }
    void set_route(Route) override {}
    SessionAnnotations& annotations() override { return ann_; }
    void count(std::string_view, std::string_view, std::uint64_t) override {}
    void inject(Direction, std::vector<std::uint8_t>) override {}
    void end_session(std::string) override {}
    void log(std::string_view) override {}

   private:
    std::string empty_;
    sockaddr_storage ss_{};
    SessionAnnotations ann_;
  };

  void decide(FilterContext& ctx, ChainFrame& frame) {
    const TraceSettings& s = sink_->settings();
    if (!s.clients.empty()) {
      const auto* sa = ctx.client_sockaddr();
      if (std::none_of(s.clients.begin(), s.clients.end(), [&](const conf::Cidr& c) { return c.contains(sa); })) {
        state_ = State::kOff;
        return;
      }
    }
    if (!s.by_tsap()) {
      state_ = State::kTracing;
      return;
    }
    // Decided on the CR as this filter sees it (after any rewrite earlier in
    // the chain); what comes before the client's CR is not traced.
    if (frame.type() != codec::TpduType::kCR || frame.direction() != Direction::kToUpstream) return;
    const codec::Tpdu& t = frame.decoded().tpdu;
    // A CR carrying a TSAP twice is traced if any copy matches: the peer may read that one.
    const auto matches = [&t](const std::vector<TsapPattern>& patterns, std::uint8_t code) {
      return patterns.empty() || match_copies(patterns, t, code).any;
    };
    state_ = matches(s.calling, codec::param::kCallingTsap) && matches(s.called, codec::param::kCalledTsap)
                 ? State::kTracing
                 : State::kOff;
  }

  void make_handle(const IpPort& upstream) {
    handle_.flow = make_flow(client_, upstream);
    handle_.ipv6 = handle_.flow.client_ip.find(':') != std::string::npos;
    flow_ready_ = true;
  }

  void trace(FilterContext& ctx, ChainFrame& frame) {
    const codec::Bytes bytes = std::as_const(frame).bytes();
    const bool from_client = frame.direction() == Direction::kToUpstream;
    const double time = now_seconds();
    if (!flow_ready_) {
      if (!client_known_) {
        handle_.listener = std::string(ctx.listener());
        auto c = parse_ip_port(ctx.client_address());
        if (!c) c = from_sockaddr(*ctx.client_sockaddr());
        if (!c) c = IpPort{AF_INET, {}, 0};
        client_ = *c;
        client_known_ = true;
      }
      const auto upstream = parse_ip_port(ctx.upstream_address());
      if (!upstream) {
        // A routing filter after this one has not chosen yet (the CR passes
        // here first): hold the frame until the upstream is known. Only the
        // CR can come before the upstream is chosen, so this stays small.
        pending_bytes_ += bytes.size();
        if (pending_bytes_ > kMaxPending) {
          state_ = State::kOff;
          pending_.clear();
          ctx.log(sink_->name() + ": no upstream chosen after " + std::to_string(pending_bytes_) +
                  " bytes; this session is not traced");
          return;
        }
        pending_.push_back({from_client, {bytes.begin(), bytes.end()}, time});
        count(ctx, bytes.size());
        return;
      }
      make_handle(*upstream);
      for (const auto& p : pending_) {
        if (!write(ctx, p.from_client, p.bytes, p.time)) return;
      }
      pending_.clear();
    }
    if (write(ctx, from_client, bytes, time)) count(ctx, bytes.size());
  }

  bool write(FilterContext& ctx, bool from_client, codec::Bytes bytes, double time) {
    auto r = sink_->write(ctx, handle_, from_client, bytes, time);
    if (r) return true;
    // Once per session: the relay goes on untraced.
    state_ = State::kOff;
    if (r.error().kind == "trace-paused") {
      // The failure was said by the session that met it.
      ctx.count(sink_->name(), "untraced");
      return false;
    }
    ctx.count(sink_->name(), "write-errors");
    ctx.warn(sink_->name() + ": " + r.error().message + "; this session is no longer traced (no new trace file for " +
             std::to_string(TraceSink::kRetryAfterError.count()) + " s)");
    return false;
  }

  void count(FilterContext& ctx, std::size_t n) {
    ctx.count(sink_->name(), "frames");
    ctx.count(sink_->name(), "bytes", n);
  }

  std::shared_ptr<TraceSink> sink_;
  State state_ = State::kUndecided;
  bool client_known_ = false;
  bool flow_ready_ = false;
  IpPort client_;
  FlowHandle handle_;
  std::vector<Pending> pending_;
  std::size_t pending_bytes_ = 0;
};

class TraceFactory final : public FilterFactory {
 public:
  TraceFactory(std::string name, TraceSettings s)
      : FilterFactory(name), sink_(std::make_shared<TraceSink>(std::move(name), std::move(s))) {}
  std::string_view kind() const override { return "trace"; }
  std::unique_ptr<Filter> create() const override { return std::make_unique<Trace>(sink_); }
  bool needs_data_phase() const override { return true; }
  std::string settings_toml() const override {
    const TraceSettings& s = sink_->settings();
    std::string out = "directory = " + conf::toml_string(s.directory) + "\n";
    out += "max_file_size = \"" + conf::format_size(s.max_file_size) + "\"\n";
    out += "max_files = " + std::to_string(s.max_files) + "\n";
    // An unset selector means "any" and is left out: an empty list is an
    // error when read back.
    const auto list = [&](const char* key, const auto& items, const auto& text) {
      if (items.empty()) return;
      out += std::string(key) + " = [";
      for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + conf::toml_string(text(items[i]));
      out += "]\n";
    };
    list("clients", s.clients, [](const conf::Cidr& c) { return c.text; });
    list("calling", s.calling, [](const TsapPattern& p) { return p.text(); });
    list("called", s.called, [](const TsapPattern& p) { return p.text(); });
    return out;
  }

 private:
  std::shared_ptr<TraceSink> sink_;
};

// A list of TSAP patterns; every bad element is reported at its own position.
std::vector<TsapPattern> tsap_patterns(conf::TableReader& t, std::string_view key) {
  const toml::node* n = t.node(key);
  if (n == nullptr) return {};
  const auto* arr = n->as_array();
  if (arr == nullptr) {
    std::string msg = "expected a list of TSAPs such as [\"hex:0100\", \"EXCHANGETSAP1\"]";
    if (const auto* s = n->as_string()) msg += " (write [" + conf::toml_string(s->get()) + "])";
    t.error(key, std::move(msg));
    return {};
  }
  if (arr->empty()) {
    t.error(key, "an empty list would trace no session: leave the key out to trace any TSAP");
    return {};
  }
  std::vector<TsapPattern> out;
  for (std::size_t i = 0; i < arr->size(); ++i) {
    const toml::node& e = *arr->get(i);
    const std::string at = t.path() + "." + std::string(key) + "[" + std::to_string(i) + "]";
    const auto* s = e.as_string();
    if (s == nullptr) {
      t.sink().add(&e, at, "expected a TSAP string such as \"hex:0100\" or \"EXCHANGETSAP1\"");
      continue;
    }
    auto p = TsapPattern::parse(s->get());
    if (!p) {
      t.sink().add(&e, at, p.error().message);
      continue;
    }
    out.push_back(std::move(*p));
  }
  return out;
}

}  // namespace

std::shared_ptr<const FilterFactory> parse_trace(const std::string& name, conf::TableReader& t) {
  const std::size_t errors_before = t.sink().errors().size();
  TraceSettings s;
  if (t.node("directory") == nullptr) {
    t.error("directory", "required: the directory to write the capture files to, e.g. directory = \"/var/log/isoproxy/trace\"");
  } else if (auto dir = t.optional_string("directory")) {
    // Checked now, not at the first session: a trace that cannot be written
    // should stop the configuration, not surface hours later in a log line.
    std::error_code ec;
    const fs::file_status st = fs::status(*dir, ec);
    if (dir->empty()) {
      t.error("directory", "empty: write the directory to put the capture files in");
    } else if (!fs::exists(st)) {
      t.error("directory", conf::toml_string(*dir) + " does not exist: create it (writable by the user isoproxy runs as)");
    } else if (!fs::is_directory(st)) {
      t.error("directory", conf::toml_string(*dir) + " is not a directory");
    } else if (::access(dir->c_str(), W_OK | X_OK) != 0) {
      t.error("directory", conf::toml_string(*dir) + " is not writable by this process: " + std::strerror(errno));
    } else {
      s.directory = fs::absolute(*dir, ec).lexically_normal().string();
      if (ec) s.directory = *dir;
      if (s.directory.size() > 1 && s.directory.back() == '/') s.directory.pop_back();
    }
  }
  s.max_file_size = t.size("max_file_size", kDefaultFileSize, kMinFileSize, kMaxFileSize);
  s.max_files = t.integer("max_files", kDefaultMaxFiles, 0, kMaxMaxFiles);
  if (const toml::node* n = t.node("clients"); n != nullptr && n->is_array() && n->as_array()->empty()) {
    t.error("clients", "an empty list would trace no session: leave the key out to trace every client");
  } else {
    s.clients = t.cidrs("clients");
  }
  s.calling = tsap_patterns(t, "calling");
  s.called = tsap_patterns(t, "called");
  t.finish();
  if (t.sink().errors().size() != errors_before) return nullptr;
  return std::make_shared<TraceFactory>(name, std::move(s));
}

}  // namespace isoproxy::filters
