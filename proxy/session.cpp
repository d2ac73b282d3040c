#include "session.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <cstdlib>
#include <cstring>


#include "codec/encode.h"
#include "codec/text.h"
#include "codec/x224.h"
#include "json_text.h"
#include "listener.h"
#include "log.h"
#include "server.h"
#include "slab.h"
#include "upstream.h"

namespace isoproxy {

namespace {

// A write that owns its bytes (DESIGN.md §5): one allocation holds the
// request and the data. On UV_ECANCELED the callback only frees it.
struct WriteReq {
  uv_write_t req;
  std::size_t len;
  uv_buf_t buf;
  char data[1];  // len bytes follow

  static WriteReq* make(std::size_t len) {
    void* mem = std::malloc(offsetof(WriteReq, data) + len);
    if (!mem) std::abort();  // out of memory: nothing sensible to do
    auto* w = static_cast<WriteReq*>(mem);
    w->len = len;
    w->buf = uv_buf_init(w->data, static_cast<unsigned>(len));
    return w;
  }
};

std::string uv_error_text(int err) { return std::string(uv_err_name(err)) + " (" + uv_strerror(err) + ")"; }

// "192.0.2.1" of "192.0.2.1:102", "2001:db8::1" of "[2001:db8::1]:102".
std::string host_of(const std::string& addr) {
  const auto colon = addr.rfind(':');
  std::string h = colon == std::string::npos ? addr : addr.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[') h = h.substr(1, h.size() - 2);
  return h;
}

constexpr filters::Direction dir_from(Session::Side from) {
  return from == Session::Side::kClient ? filters::Direction::kToUpstream : filters::Direction::kToClient;
}

}  // namespace

struct Session::Passthrough {
  struct Poll {
    uv_poll_t handle{};
    bool initialised = false;
    int events = 0;  // as last started; 0 = stopped
  };
  struct Dir {
    SpliceSupport::Pipe pipe;  // held only while bytes are in it
    std::size_t in_pipe = 0;
  };
  std::array<Poll, 2> poll;  // by leg: client, upstream
  std::array<Dir, 2> dir;    // by source leg: client -> upstream, upstream -> client
  bool scheduled = false;    // the take-over waits for the idle phase
  bool active = false;       // the polls own the sockets
  bool entered = false;      // was active at some time (stats)
  bool refused = false;      // could not start: the session stays framed
  bool leaving = false;      // no pipe to be had: flushing, then raw through libuv
  bool attached = false;     // counted in SpliceSupport's users (spare pipes kept for it)
  ~Passthrough() {
    for (auto& d : dir) {
      if (d.pipe.rd >= 0) ::close(d.pipe.rd);
      if (d.pipe.wr >= 0) ::close(d.pipe.wr);
    }
  }
};

namespace {
constexpr std::size_t leg_index(Session::Side s) { return s == Session::Side::kClient ? 0 : 1; }
constexpr int kPumpRounds = 16;  // splice rounds per event, so that one session does not starve the others
}  // namespace

std::string_view session_state_name(SessionState s) {
  switch (s) {
    case SessionState::kConnecting: return "connecting";
    case SessionState::kAwaitingCc: return "awaiting-cc";
    case SessionState::kEstablished: return "established";
    case SessionState::kDraining: return "draining";
    case SessionState::kClosed: return "closed";
  }
  return "?";
}

Session::Session(Server& server, Listener& listener, std::uint64_t id, std::shared_ptr<const ListenerRuntime> rt)
    : server_(server),
      listener_(listener),
      id_(id),
      rt_(std::move(rt)),
      io_(std::make_unique<Io>(rt_->cfg.max_frame, rt_->factories)) {
  init_io();
  start_ms_ = last_activity_ms_ = server_.now_ms();
  start_ns_ = uv_hrtime();
  start_unix_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

Session::~Session() {
  // A session parked when its worker stops (no close on the way).
  for (int& fd : park_fd_) {
    if (fd >= 0) {
      server_.park().remove(fd);
      ::close(fd);
    }
    fd = -1;
  }
}

void Session::init_io() {
  io_->client.session = this;
  io_->client.side = Side::kClient;
  io_->upstream.session = this;
  io_->upstream.side = Side::kUpstream;
}

SlabPool& Session::pool() {
  thread_local SlabPool pool(sizeof(Session));
  return pool;
}

void* Session::operator new(std::size_t) {
  void* p = pool().allocate();
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void Session::operator delete(void* p) { pool().deallocate(p); }

SlabPool& Session::Io::pool() {
  thread_local SlabPool pool(sizeof(Io));
  return pool;
}

void* Session::Io::operator new(std::size_t) {
  void* p = pool().allocate();
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void Session::Io::operator delete(void* p) { pool().deallocate(p); }

Session::Io::Io(std::size_t max_frame, const filters::FactoryList& factories)
    : chain(factories), framer{codec::TpktFramer(max_frame), codec::TpktFramer(max_frame)} {}
Session::Io::~Io() = default;

void Session::start(uv_stream_t* server_stream) {
  uv_loop_t* loop = server_.loop();
  uv_tcp_init(loop, &io_->client.tcp);
  io_->client.tcp.data = &io_->client;
  io_->client.initialised = true;
  ++open_handles_;

  if (int r = uv_accept(server_stream, reinterpret_cast<uv_stream_t*>(&io_->client.tcp)); r < 0) {
    close("accept-failed: " + uv_error_text(r));
    return;
  }
  io_->client.connected = true;
  if (uv_os_fd_t fd = -1; uv_fileno(reinterpret_cast<const uv_handle_t*>(&io_->client.tcp), &fd) == 0) {
    note_accepted_descriptor(fd, rt_->cfg.name);
  }
  sockaddr_storage peer_ss{};
  int len = sizeof peer_ss;
  if (uv_tcp_getpeername(&io_->client.tcp, reinterpret_cast<sockaddr*>(&peer_ss), &len) == 0 &&
      static_cast<std::size_t>(len) <= sizeof client_ss_) {
    std::memcpy(&client_ss_, &peer_ss, static_cast<std::size_t>(len));
  }
  // A connection is known by both its ends: an ephemeral port is reused for
  // connections to other destinations, so the source alone is not unique.
  std::optional<std::uint64_t> owner;
  if (const Endpoint peer = Endpoint::of(&client_ss_.sa); server_.outbound_source(peer)) {
    sockaddr_storage local{};
    int local_len = sizeof local;
    uv_tcp_getsockname(&io_->client.tcp, reinterpret_cast<sockaddr*>(&local), &local_len);
    owner = server_.outbound_owner({peer, Endpoint::of(reinterpret_cast<const sockaddr*>(&local))});
  }
  if (owner) {
    // One of our own upstream connections: listeners may be chained on
    // purpose (A relays to B), but a chain that comes back to a listener it
    // already passed would dial itself without end. Every session of such a
    // chain ends here.
    parent_ = *owner;
    if (server_.close_if_loop(*this, *owner, kMaxChain)) return;
  }
  server_.rdns().want(&client_ss_.sa);
  const auto& c = rt_->cfg;
  // TCP_NODELAY and keepalive came with the connection from the listening
  // socket (Listener::apply_socket_options).
  if (spdlog::should_log(spdlog::level::debug)) spdlog::debug("[S{}] accepted client={} listener={}", id_, client_address(), c.name);
  if (c.tls) {
    // TLS from the client: nothing goes upstream (not even a connection)
    // until the handshake is done and the client's certificate accepted.
    io_->client.tls = tls::Channel::accept(c.tls->context);
    io_->client.tls_deadline_ms = start_ms_ + static_cast<std::uint64_t>(c.tls->handshake_timeout.count());
    awaiting_client_tls_ = true;
  }
  update_reading(io_->client);
  if (!awaiting_client_tls_) start_upstream();
  arm_timer();
}

void Session::start_upstream() {
  if (io_->chain.routes() || io_->chain.guards_cr()) {
    // A routing filter picks the upstream from the CR: connect once it has.
    // A filter that judges the CR (tsap-acl) must allow one first: a client
    // it refuses never reaches the upstream, not even with a connection
    // (an S7 PLC has a handful of them), as HAProxy connects to a server
    // only once its content rules accept.
    awaiting_cr_ = true;
    return;
  }
  connect_configured();
}

void Session::connect_configured() {
  auto target = upstream_target(rt_->cfg, io_->client.tcp);
  if (!target) {
    close(target.error().kind + ": " + target.error().message);
    return;
  }
  connect_upstream(*target, rt_->cfg.source, rt_->cfg.upstream_tls);
}

void Session::set_route(filters::Route route) {
  if (!awaiting_cr_ || closing_ || io_->chosen_route) return;
  // Connected once the whole chain has let the frame through (handle_frame):
  // a tsap-acl listed after the routing filter still judges the CR.
  route_name_ = route.name;
  io_->chosen_route = std::make_unique<filters::Route>(std::move(route));
}

void Session::connect_route(const filters::Route& route) {
  spdlog::debug("[S{}] route {} -> {}", id_, route.name, route.upstream.text);
  connect_upstream(route.upstream, route.source ? *route.source : rt_->cfg.source,
                   route.tls ? *route.tls : rt_->cfg.upstream_tls);
}

namespace {

// A failure of this host, not of the peer (no descriptor for a socket, a
// fixed source address gone from the interface): every session fails alike
// until someone acts, so it is said at warn, where `journalctl -p warning`
// looks, once a second at most across workers; the close lines stay at info.
void warn_host_failure(std::uint64_t session, const std::string& listener, const std::string& reason) {
  static log::SharedThrottle throttle;
  std::uint64_t more = 0;
  if (!throttle.due(more)) return;
  spdlog::warn("[S{}] listener {}: no upstream connection can be made from this host: {}{}", session, listener, reason,
               more ? " (" + std::to_string(more) + " more sessions failed so since the last line)" : "");
}

}  // namespace

void Session::connect_upstream(const conf::SocketAddress& target, const conf::SourceConfig& source,
                               std::shared_ptr<const conf::TlsClientConfig> tls) {
  upstream_addr_ = target.text;
  std::memcpy(&upstream_ss_, &target.storage, target.family() == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
  server_.rdns().want(target.sa());
  io_->connect_start_ms = server_.now_ms();
  uv_tcp_t* h = &io_->upstream.tcp;
  if (int r = uv_tcp_init_ex(server_.loop(), h, static_cast<unsigned>(target.family())); r < 0) {
    server_.stats().connect_failures["upstream-socket"]++;
    warn_host_failure(id_, rt_->cfg.name, "upstream-socket: " + uv_error_text(r));
    close("upstream-socket: " + uv_error_text(r));
    return;
  }
  h->data = &io_->upstream;
  io_->upstream.initialised = true;
  ++open_handles_;
  if (tls) {
    io_->upstream.tls = tls::Channel::connect(tls->context, host_of(target.text));
    if (!tls->verify) {
      spdlog::warn("[S{}] upstream {}: TLS certificate not verified (verify = false): the peer may be anyone", id_,
                   target.text);
    }
  }
  auto bound = bind_source(source, h, io_->client.tcp, target.family());
  if (!bound) {
    server_.stats().connect_failures[bound.error().kind]++;
    if (bound.error().kind == "source-bind-failed") {
      warn_host_failure(id_, rt_->cfg.name, bound.error().kind + ": " + bound.error().message);
    }
    close(bound.error().kind + ": " + bound.error().message);
    return;
  }
  if (rt_->cfg.smart_connect) {
    // RFC 1006's caller speaks first, and the client's CR is written as soon
    // as the connection is up: the handshake's last ACK can go with it, one
    // packet less per connection (Linux sends it alone after 200 ms without
    // data). TCP_DEFER_ACCEPT on a connecting socket does this, as HAProxy's
    // "option tcp-smart-connect" does with TCP_QUICKACK.
    uv_os_fd_t fd = -1;
    const int on = 1;
    if (uv_fileno(reinterpret_cast<const uv_handle_t*>(h), &fd) == 0) {
      (void)::setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &on, sizeof on);
    }
  }
  // The request lives only while the connect is in flight (idle sessions
  // keep no memory for it); its callback frees it.
  auto* req = new uv_connect_t;
  req->data = this;
  const int r = uv_tcp_connect(req, h, target.sa(), [](uv_connect_t* q, int status) noexcept {
    auto* self = static_cast<Session*>(q->data);
    delete q;
    if (status == UV_ECANCELED) return;  // the session is closing: touch nothing
    self->on_connect(status);
  });
  if (r < 0) {
    // connect() itself failed (no route, no source port left, a source
    // that cannot reach this destination): said as a failure reported later is.
    delete req;
    on_connect(r);
    return;
  }
  // connect() has bound the source port: remember it, so that if this very
  // connection arrives at one of our listeners, it is known for a loop.
  // Only a destination one of our listeners could accept can come back so
  // (Server::may_come_back); the others cost no registry entry (about 200
  // bytes while the session lives) and no getsockname here.
  // connect() chose the source address and port already: this is the
  // source the stats show once connected.
  if (server_.may_come_back(target) && local_name(io_->upstream, source_ss_)) {
    outbound_registered_ = true;
    server_.outbound_opened(outbound_key(), id_);
  }
  update_reading(io_->upstream);
  arm_timer();  // the connect deadline starts now (a routed session connects late)
}

void Session::on_connect(int status) {
  if (closing_) return;
  if (status < 0) {
    const std::string cause = status == UV_ECONNREFUSED ? "connect-refused"
                              : status == UV_ETIMEDOUT  ? "connect-timeout"
                                                        : "connect-failed";
    server_.stats().connect_failures[cause]++;
    close(cause + ": " + upstream_addr_ + ": " + uv_error_text(status) + local_destination_hint());
    return;
  }
  io_->upstream.connected = true;
  if (source_ss_.sa.sa_family == 0) local_name(io_->upstream, source_ss_);
  server_.count_upstream(upstream_addr_);
  const auto& c = rt_->cfg;
  uv_tcp_nodelay(&io_->upstream.tcp, 1);
  // Keepalive on the upstream leg from kKeepaliveAfterMs on (arm_timer):
  // a session shorter than that never needs it, and the first probe comes
  // keepalive_interval (>= 1 s) after the last byte anyway. Four system
  // calls fewer per short connection.
  if (c.keepalive) io_->keepalive_at_ms = server_.now_ms() + kKeepaliveAfterMs;
  if (state_ == SessionState::kConnecting) state_ = SessionState::kAwaitingCc;
  if (spdlog::should_log(spdlog::level::debug)) {
    spdlog::debug("[S{}] connected upstream={} source={}", id_, upstream_addr_, source_text());
  }
  update_reading(io_->upstream);
  if (!io_->pending_up.empty()) {
    // What the client sent while we connected (and before a route was
    // chosen) goes first: written now, at once, rather than queued in libuv
    // before the connection was up (one wake-up and two epoll changes less).
    auto held = std::move(io_->pending_up);
    io_->pending_up.clear();
    send_owned(io_->upstream, std::move(held));
    if (closing_) return;
    update_reading(io_->client);
    // The session is closing after a flush: what waited goes, then our FIN.
    if (lingering_ || close_after_flush_) io_->upstream.shutdown_wanted = true;
  } else if (lingering_) {
    // It lingers already (refused, or a bad frame, while we connected): the
    // upstream gets our FIN at once and no CR, as linger() gives a leg that
    // was up; else it would hold the session open until kLingerMs.
    io_->upstream.shutdown_wanted = true;
  }
  if (io_->upstream.tls) {
    // The ClientHello; what the client sent meanwhile waits for the handshake.
    io_->upstream.tls_deadline_ms = server_.now_ms() + static_cast<std::uint64_t>(io_->upstream.tls->context().handshake_timeout().count());
    const auto st = io_->upstream.tls->handshake();
    flush_tls(io_->upstream);
    if (closing_) return;
    if (st == tls::Channel::Status::kError) {
      tls_failed(io_->upstream);
      return;
    }
  }
  maybe_shutdown(io_->upstream);  // the client may have sent FIN while we were connecting
  arm_timer();
  if (draining_) drain();
  if (!closing_) maybe_finish();  // a close after flush may be complete now that held bytes went out
}

void Session::update_reading(Leg& l) {
  // An upstream still connecting may be read already: libuv reports the
  // connect first, and one epoll registration then serves both (the connect
  // watcher's removal and a new one for reading cost two more system calls).
  if (!l.initialised || (!l.connected && l.side == Side::kClient)) return;
  // The polls read the sockets; or a take-over waits for the idle phase.
  if (in_passthrough() || (io_->pt && io_->pt->scheduled)) return;
  const Leg& o = other(l);
  const bool held_back = l.side == Side::kClient && io_->pending_up.size() > rt_->cfg.high_water;
  // A TLS handshake in progress is read whatever the other leg's queue: it
  // yields no plaintext, and stopping it could stall both legs.
  const bool handshaking = l.tls && !l.tls->established() && !l.tls->failed();
  // Reading a TLS peer can queue bytes toward it (answers to its KeyUpdates,
  // never data: that stops at high water by not reading the other leg). A
  // peer that does not read is still read, so that one that writes all
  // before it reads (full duplex) is not deadlocked, until those answers
  // pass kTlsControlSlack above high water: then it is not read either,
  // else it could grow that queue without bound.
  const bool own_backlog = l.tls && l.over_high_water && l.queued > rt_->cfg.high_water + kTlsControlSlack;
  const bool want = lingering_ ? !closing_ && !l.eof
                               : !closing_ && !close_after_flush_ && !l.eof && (!l.drain_stopped || handshaking) &&
                                     (handshaking || (!o.over_high_water && !held_back && !own_backlog));
  if (want == l.reading) return;
  auto* s = reinterpret_cast<uv_stream_t*>(&l.tcp);
  if (want) {
    const int r = uv_read_start(
        s, [](uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept {
          static_cast<Leg*>(h->data)->session->server_.alloc_read_buffer(buf);
        },
        [](uv_stream_t* st, ssize_t nread, const uv_buf_t* buf) noexcept {
          auto* leg = static_cast<Leg*>(st->data);
          leg->session->on_read(*leg, nread, buf);
        });
    if (r < 0) {
      close(std::string(side_name(l.side)) + "-read-error: " + uv_error_text(r));
      return;
    }
  } else {
    uv_read_stop(s);
  }
  l.reading = want;
}

void Session::on_read(Leg& from, ssize_t nread, const uv_buf_t* buf) {
  if (nread == 0 || closing_) return;
  if (lingering_) {
    // Closing cleanly: what peers still send is read and dropped.
    if (nread == UV_EOF) {
      from.eof = true;
      update_reading(from);
      check_linger_done();
    } else if (nread < 0) {
      close(io_->pending_close_reason);
    } else if (draining_ && !from.tls) {
      // A peer that goes on sending after the drain's FIN: not relayed, counted.
      flow_from(from.side).drain_discarded += static_cast<std::uint64_t>(nread);
    }
    return;
  }
  if (nread == UV_EOF) {
    // libuv reports EOF when a short read and POLLHUP come together (with no
    // buffer), which is also how a reset right after the last data looks:
    // then ask the socket. A read() that returned 0 was a FIN.
    if (buf->base == nullptr && peer_reset(from)) {
      on_read_error(from, UV_ECONNRESET);
      return;
    }
    if (from.tls && !from.tls->established()) {
      close("tls-handshake-failed: " + std::string(side_name(from.side)) + ": the peer closed the connection during the TLS handshake");
      return;
    }
    if (from.tls && from.tls->inside_record()) {
      // A TCP FIN, no close_notify, in the middle of a record: its bytes
      // were sent and are lost (the close line says close_notify=no too).
      spdlog::info("[S{}] {} closed inside a TLS record, without close_notify: the record's rest never came", id_,
                   side_name(from.side));
    }
    on_eof(from);
    return;
  }
  if (nread < 0) {
    on_read_error(from, static_cast<int>(nread));
    return;
  }
  last_activity_ms_ = server_.now_ms();
  if (from.tls) {
    on_tls_data(from, reinterpret_cast<const std::uint8_t*>(buf->base), static_cast<std::size_t>(nread));
  } else {
    process(from, codec::MutableBytes(reinterpret_cast<std::uint8_t*>(buf->base), static_cast<std::size_t>(nread)));
    // At a frame boundary with nothing queued, the data phase may go on spliced.
    maybe_passthrough();
  }
  if (!closing_ && awaiting_cr_ && io_->pending_up.size() > rt_->cfg.high_water) {
    // Frames before the CR, past high water, and none of this read a CR
    // that opened the way: not reading on would stall the session until
    // handshake_timeout (for ever with "0s"), and the CR, if one comes, is
    // behind what is not read.
    close("no-cr: " + std::to_string(io_->pending_up.size()) + " octets before " + awaited_cr() + ", over high_water (" +
          conf::format_size(rt_->cfg.high_water) + ")");
    return;
  }
  if (draining_ && !closing_) {
    Flow& f = flow_from(from.side);
    // Once the frame in flight when the drain began is complete, stop: a
    // frame begun after it is not relayed (counted in the close line), so
    // the peer never receives half a frame.
    if (f.raw || !f.drain_in_flight) {
      if (!f.raw && framer_of(f).held() > 0) {
        f.drain_discarded += framer_of(f).held();
        framer_of(f).discard();
      }
      from.drain_stopped = true;
      update_reading(from);
      maybe_finish();
    }
  }
}

void Session::process(Leg& from, codec::MutableBytes data) {
  Flow& f = flow_from(from.side);
  Leg& to = other(from);
  if (f.raw) {
    f.stats.bytes += data.size();
    f.stats.raw_bytes += data.size();
    uv_buf_t b = uv_buf_init(reinterpret_cast<char*>(data.data()), static_cast<unsigned>(data.size()));
    send(to, &b, 1);
    return;
  }
  // Whole frames in the read buffer are gathered and written together; a
  // frame the framer assembled from earlier reads lives in its own buffer
  // until the next call, so it is sent at once.
  std::vector<uv_buf_t> out;
  codec::Bytes in = data;
  const std::uint8_t* begin = data.data();
  const std::uint8_t* end = data.data() + data.size();
  // After a filter or the malformed policy ends the session, nothing more is relayed.
  while (!closing_ && !f.raw && !close_after_flush_) {
    auto r = framer_of(f).next(in);
    if (r.status == codec::TpktFramer::kNeedMore) break;
    if (r.status == codec::TpktFramer::kError) {
      // Not RFC 1006 from the start, or a broken stream mid-session.
      if (!out.empty()) send(to, out.data(), static_cast<unsigned>(out.size()));
      out.clear();
      const std::string what(codec::framer_error_name(r.error));
      f.stats.decode_errors++;
      server_.stats().decode_errors[what]++;
      // Only a stream that does not begin as TPKT at all is "not RFC 1006";
      // a first TPKT too long or too short for the limits is malformed.
      const bool first = !f.seen_frame && r.error == codec::FramerError::kBadVersion;
      const auto policy_pass = first ? rt_->cfg.non_rfc1006 == conf::NonRfc1006Policy::kPass
                                     : rt_->cfg.malformed == conf::MalformedPolicy::kPass;
      if (!policy_pass) {
        if (first) {
          close("not-rfc1006: " + what);
        } else {
          // Mid-session: what was relayed before stays relayed; an ER toward
          // the sender if configured (X.224 13.12), then the close.
          if (rt_->cfg.malformed_send_er) {
            codec::Bytes bad = framer_of(f).held() > 0 ? framer_of(f).held_bytes() : in;
            send_er(from, codec::DecodeError{codec::DecodeErrorKind::kFramer, 0, what}, bad);
          }
          close_after_flush("malformed-frame: " + what);
        }
        return;
      }
      if (awaiting_cr_ && io_->chain.routes()) {
        close(std::string(first ? "not-rfc1006: " : "malformed-frame: ") + what + " (no CR to choose a route by)");
        return;
      }
      // Raw, a CR from the client would reach the upstream unjudged. A
      // first frame that is not RFC 1006 turns both directions raw. What
      // was relayed before (sent above) is delivered first.
      if (const char* why = from.side == Side::kClient || first ? client_raw_refused() : nullptr) {
        close_after_flush(std::string(first ? "not-rfc1006: " : "malformed-frame: ") + what + " (" + why + ")");
        return;
      }
      // Pass through raw: what the framer held back, then the rest.
      codec::Bytes held = framer_of(f).held_bytes();
      if (!held.empty()) {
        send_owned(to, std::vector<std::uint8_t>(held.begin(), held.end()));
        f.stats.bytes += held.size();
        f.stats.raw_bytes += held.size();
      }
      to_raw(from, f, first ? "not RFC 1006 (" + what + ")" : "framing lost (" + what + ")");
      if (first) {
        non_rfc1006_ = true;
        Flow& back = flow_from(other(from).side);
        // What the other side sent so far sits in its framer: pass it on too.
        codec::Bytes back_held = framer_of(back).held_bytes();
        if (!back.raw && !back_held.empty()) {
          back.stats.bytes += back_held.size();
          back.stats.raw_bytes += back_held.size();
          send_owned(from, std::vector<std::uint8_t>(back_held.begin(), back_held.end()));
        }
        to_raw(other(from), back, "the other direction is not RFC 1006");
      }
      break;  // the rest of `in` goes out raw below
    }
    f.seen_frame = true;
    // Draining, this frame completes the one in flight when the drain
    // began: it goes out, and nothing after it (a frame begun after the
    // drain is not relayed; on_read() then stops reading this side).
    const bool last_of_drain = draining_ && f.drain_in_flight;
    f.drain_in_flight = false;  // whatever was in flight is complete now
    const bool in_buffer = r.frame.data() >= begin && r.frame.data() < end;
    handle_frame(from, f, codec::MutableBytes(const_cast<std::uint8_t*>(r.frame.data()), r.frame.size()), out);
    if (!in_buffer && !out.empty()) {
      send(to, out.data(), static_cast<unsigned>(out.size()));
      out.clear();
    }
    if (last_of_drain) {
      f.drain_discarded += in.size();
      in = {};
      break;
    }

  }
  if (!out.empty() && !closing_) send(to, out.data(), static_cast<unsigned>(out.size()));
  if (f.raw && !in.empty() && !closing_ && !close_after_flush_) {
    // This direction stopped framing inside this read: the rest passes as it is.
    f.stats.bytes += in.size();
    f.stats.raw_bytes += in.size();
    uv_buf_t b = uv_buf_init(const_cast<char*>(reinterpret_cast<const char*>(in.data())), static_cast<unsigned>(in.size()));
    send(to, &b, 1);
  }
  if (framer_of(f).held() == 0) framer_of(f).shrink();
}

void Session::handle_frame(Leg& from, Flow& f, codec::MutableBytes frame, std::vector<uv_buf_t>& out) {
  f.stats.bytes += frame.size();
  f.stats.frames++;
  auto decoded = codec::decode_frame(frame, {}, rt_->cfg.max_frame);
  if (!decoded) {
    const auto& e = decoded.error();
    const std::string kind(codec::decode_error_name(e.kind));
    f.stats.decode_errors++;
    server_.stats().decode_errors[kind]++;
    if (rt_->cfg.malformed == conf::MalformedPolicy::kClose) {
      // The good frames before it still go out; then the ER, then the close.
      if (!out.empty()) send(other(from), out.data(), static_cast<unsigned>(out.size()));
      out.clear();
      if (rt_->cfg.malformed_send_er) send_er(from, e, frame);
      close_after_flush("malformed-frame: " + kind);
      return;
    }
    if (awaiting_cr_ && io_->chain.routes()) {
      close("malformed-frame: " + kind + " (no CR to choose a route by)");
      return;
    }
    if (const char* why = from.side == Side::kClient ? client_raw_refused() : nullptr) {
      // The good frames before it still go out, then the close.
      if (!out.empty()) send(other(from), out.data(), static_cast<unsigned>(out.size()));
      out.clear();
      close_after_flush("malformed-frame: " + kind + " (" + why + ")");
      return;
    }
    // Pass it on untouched and stop framing this direction: do no harm.
    spdlog::warn("[S{}] malformed frame from {}: {}: {}; relaying the rest of this direction raw", id_,
                 side_name(from.side), kind, e.detail);
    out.push_back(uv_buf_init(reinterpret_cast<char*>(frame.data()), static_cast<unsigned>(frame.size())));
    f.raw = true;
    return;
  }
  const codec::Frame& fr = *decoded;
  const codec::TpduType type = fr.tpdu.type;
  f.stats.count_tpdu(static_cast<std::size_t>(type));
  if (type == codec::TpduType::kDT && fr.tpdu.eot.value_or(false)) f.stats.tsdus++;
  f.stats.anomalies += fr.anomalies.size();
  if (!fr.anomalies.empty() && spdlog::should_log(spdlog::level::debug)) {
    for (const auto& a : fr.anomalies) {
      spdlog::debug("[S{}] anomaly from {}: {}: {}", id_, side_name(from.side), codec::anomaly_name(a.kind), a.detail);
    }
  }
  if (from.side == Side::kClient && !fr.tpdu.trailing.empty() && codec::trailing_holds_cr(fr.tpdu.trailing)) {
    // A CR after a TPDU without user data: class 0 never concatenates, but
    // an upstream that reads on as Wireshark does would take a CR no filter
    // judged. Where one judges every CR, the frame is not relayed.
    if (const char* why = client_raw_refused()) {
      if (!out.empty()) send(other(from), out.data(), static_cast<unsigned>(out.size()));
      out.clear();
      close_after_flush("malformed-frame: a CR concatenated after a " + std::string(codec::tpdu_type_name(type)) +
                        " (" + why + ")");
      return;
    }
  }
  // Connection phase (protocol.md §5).
  if (type == codec::TpduType::kCR && from.side == Side::kClient && cr_ms_ == 0) cr_ms_ = server_.now_ms();
  if (type == codec::TpduType::kCC && from.side == Side::kUpstream && state_ == SessionState::kAwaitingCc) {
    state_ = SessionState::kEstablished;
    cc_ms_ = server_.now_ms();
    arm_timer();
  }

  filters::ChainFrame cf(frame, &fr, dir_from(from.side), rt_->cfg.max_frame);
  const filters::Verdict v = io_->chain.run(*this, cf);
  Leg& to = other(from);
  const bool client_cr = type == codec::TpduType::kCR && from.side == Side::kClient;
  if (v == filters::Verdict::kContinue && client_cr) cr_passed_ = true;
  if (v == filters::Verdict::kContinue && awaiting_cr_ && from.side == Side::kClient) {
    // Through the whole chain: to the route a routing filter chose (on the
    // first frame, a CR or, with a default, not), or without one to the
    // listener's upstream. Where a filter judges CRs, only an allowed CR
    // opens the way.
    const bool allowed = client_cr || !io_->chain.guards_cr();
    if (allowed && (io_->chosen_route || !io_->chain.routes())) {
      awaiting_cr_ = false;
      if (auto route = std::move(io_->chosen_route)) {
        connect_route(*route);
      } else {
        connect_configured();
      }
      if (closing_) return;
    }
  }
  // kContinue forwards the frame (as changed); kDrop and kEndSession do not.
  if (v == filters::Verdict::kContinue) {
    if (cf.replaced()) {
      // The new bytes live in the ChainFrame: send what came before, then them.
      if (!out.empty()) send(to, out.data(), static_cast<unsigned>(out.size()));
      out.clear();
      codec::Bytes b = std::as_const(cf).bytes();
      send_owned(to, std::vector<std::uint8_t>(b.begin(), b.end()));
    } else {
      out.push_back(uv_buf_init(reinterpret_cast<char*>(frame.data()), static_cast<unsigned>(frame.size())));
    }
  }
  if (!io_->injected.empty()) {
    // Injected frames follow the frame in hand, each toward its own peer.
    if (!out.empty()) send(to, out.data(), static_cast<unsigned>(out.size()));
    out.clear();
    auto inj = std::move(io_->injected);
    io_->injected.clear();
    for (auto& [toward, bytes] : inj) {
      send_owned(toward == filters::Direction::kToUpstream ? io_->upstream : io_->client, std::move(bytes));
    }
  }
  if (v == filters::Verdict::kEndSession) {
    if (!out.empty()) send(to, out.data(), static_cast<unsigned>(out.size()));
    out.clear();
    close_after_flush(io_->pending_close_reason.empty() ? "filter" : io_->pending_close_reason);
  }
}

void Session::to_raw(Leg& from, Flow& f, std::string_view why) {
  if (f.raw) return;
  f.raw = true;
  spdlog::info("[S{}] {} -> {}: {}; passing bytes through unchanged", id_, side_name(from.side),
               side_name(other(from).side), why);
}

void Session::send_er(Leg& toward, const codec::DecodeError& e, codec::Bytes frame) {
  // X.224 13.12: ER with the reject cause and the rejected header's bits up to the octet at fault.
  const std::uint8_t cause = e.kind == codec::DecodeErrorKind::kUnknownType      ? 2
                             : e.kind == codec::DecodeErrorKind::kParamOverrun ? 3
                                                                                : 0;
  codec::OwnedTpdu er;
  er.code = 0x70;
  er.fixed = {0x00, 0x00, cause};
  // A TPKT-level fault: the bits at fault are the TPKT header itself.
  const codec::Bytes tpdu = e.kind == codec::DecodeErrorKind::kFramer
                                ? frame.first(std::min(frame.size(), codec::kTpktHeaderSize))
                                : frame.subspan(std::min(frame.size(), codec::kTpktHeaderSize));
  const std::size_t n = e.kind == codec::DecodeErrorKind::kFramer ? tpdu.size()
                                                                   : std::min<std::size_t>({tpdu.size(), e.offset + 1, 64});
  er.params.push_back({codec::param::kInvalidTpdu, std::vector<std::uint8_t>(tpdu.begin(), tpdu.begin() + static_cast<std::ptrdiff_t>(n))});
  auto bytes = codec::encode_frame(0, er);
  if (bytes) send_owned(toward, std::move(*bytes));
}

void Session::send(Leg& to, const uv_buf_t* bufs, unsigned n) {
  if (closing_ || to.shutdown_sent) return;
  if (in_passthrough()) {
    // Nothing frames in pass-through, so nothing should be sent; a uv_write
    // now would fight the poll that owns the socket.
    spdlog::warn("[S{}] frame toward {} in pass-through dropped", id_, side_name(to.side));
    return;
  }
  std::size_t total = 0;
  for (unsigned i = 0; i < n; ++i) total += bufs[i].len;
  if (total == 0) return;
  if (!to.connected) {
    // The upstream is not chosen yet (routing by TSAP) or not connected yet:
    // hold the bytes, and stop reading the client beyond the high water mark.
    if (to.side != Side::kUpstream || (!to.initialised && !awaiting_cr_)) return;
    for (unsigned i = 0; i < n; ++i) io_->pending_up.insert(io_->pending_up.end(), bufs[i].base, bufs[i].base + bufs[i].len);
    // Reading resumes once the upstream connects and takes them; before a
    // CR opened the way, on_read() closes the session if this read held none.
    if (io_->pending_up.size() > rt_->cfg.high_water) update_reading(io_->client);
    return;
  }
  if (to.tls) {
    send_tls(to, bufs, n, total);  // counts them once they go to the channel
    return;
  }
  count_sent(to, total);
  write_wire(to, bufs, n, total);
}

void Session::write_wire(Leg& to, const uv_buf_t* bufs, unsigned n, std::size_t total) {
  if (closing_ || total == 0) return;
  std::size_t done = 0;
  auto* stream = reinterpret_cast<uv_stream_t*>(&to.tcp);
  if (to.connected && to.queued == 0) {
    const int r = uv_try_write(stream, bufs, n);
    if (r > 0) {
      done = static_cast<std::size_t>(r);
    } else if (r < 0 && r != UV_EAGAIN) {
      close(std::string(side_name(to.side)) + (r == UV_EPIPE || r == UV_ECONNRESET ? "-reset" : "-write-error") +
                ": " + uv_error_text(r),
            true);
      return;
    }
  }
  if (done == total) return;
  // The rest is copied into a request that owns it.
  WriteReq* w = WriteReq::make(total - done);
  std::size_t at = 0, skip = done;
  for (unsigned i = 0; i < n; ++i) {
    std::size_t len = bufs[i].len, off = 0;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    off = skip;
    skip = 0;
    std::memcpy(w->data + at, bufs[i].base + off, len - off);
    at += len - off;
  }
  w->req.data = &to;
  const int r = uv_write(&w->req, stream, &w->buf, 1, [](uv_write_t* req, int status) noexcept {
    auto* wr = reinterpret_cast<WriteReq*>(req);
    const std::size_t len = wr->len;
    auto* leg = static_cast<Leg*>(req->data);
    std::free(wr);
    if (status == UV_ECANCELED) return;  // the handle is closing: touch nothing else
    leg->session->on_write_done(*leg, len, status);
  });
  if (r < 0) {
    std::free(w);
    close(std::string(side_name(to.side)) + "-write-error: " + uv_error_text(r), true);
    return;
  }
  to.queued += w->len;
  check_high_water(to);
}

void Session::check_high_water(Leg& to) {
  if (!to.over_high_water && to.queued > rt_->cfg.high_water) {
    // A slow reader pauses the fast writer (DESIGN.md §2.3).
    to.over_high_water = true;
    update_reading(other(to));
  }
  if (to.tls && to.over_high_water && to.reading) update_reading(to);  // its own answers (update_reading)
}

void Session::check_low_water(Leg& to) {
  if (to.over_high_water && to.queued <= rt_->cfg.low_water) {
    to.over_high_water = false;
    update_reading(other(to));
    if (to.tls) update_reading(to);
  }
}

void Session::send_owned(Leg& to, std::vector<std::uint8_t> bytes) {
  uv_buf_t b = uv_buf_init(reinterpret_cast<char*>(bytes.data()), static_cast<unsigned>(bytes.size()));
  send(to, &b, 1);  // copies what it cannot write at once
}

// TLS legs. Ciphertext read is fed to the channel and everything it yields is
// processed at once, exactly as a plaintext read is, so backpressure works the
// same: a paused leg is not read from the socket, and nothing piles up inside
// OpenSSL meanwhile.
void Session::on_tls_data(Leg& from, const std::uint8_t* data, std::size_t n) {
  tls::Channel& t = *from.tls;
  t.feed(data, n);
  // The read buffer is the loop's: whatever a closing session leaves unread
  // must not be reachable from the channel afterwards.
  struct DropInput {
    tls::Channel& t;
    ~DropInput() { t.drop_input(); }
  } guard{t};
  if (!t.established()) {
    const auto st = t.handshake();
    flush_tls(from);
    if (closing_) return;
    if (st == tls::Channel::Status::kError) {
      tls_failed(from);
      return;
    }
    if (st != tls::Channel::Status::kOk) return;  // more handshake to come
    on_tls_established(from);
    if (closing_ || close_after_flush_) return;
  }
  std::uint8_t* plain = server_.tls_buffer();
  for (;;) {
    const auto r = t.read(plain, Server::kTlsBufferSize);
    if (r.status == tls::Channel::Status::kOk) {
      process(from, codec::MutableBytes(plain, r.n));
      if (closing_ || close_after_flush_) return;
      continue;
    }
    flush_tls(from);  // reading may have produced an answer (a key update)
    if (closing_) return;
    if (r.status == tls::Channel::Status::kWantMore) return;
    if (r.status == tls::Channel::Status::kClosed) {
      on_eof(from);  // close_notify: this direction ends as with a FIN
      return;
    }
    tls_failed(from);
    return;
  }
}

void Session::on_tls_established(Leg& l) {
  l.tls_deadline_ms = 0;
  const tls::Info& i = l.tls->info();
  spdlog::debug("[S{}] TLS with {}: {} {} peer={} verify={}", id_, side_name(l.side), i.version, i.cipher,
                i.peer_subject.empty() ? std::string("-") : log::quote(i.peer_subject), i.verify);
  if (!l.tls_pending.empty()) {
    // What waited for the handshake goes first, then the FIN if one is due.
    std::vector<std::uint8_t> held = std::move(l.tls_pending);
    l.tls_pending.clear();
    l.queued -= held.size();
    uv_buf_t b = uv_buf_init(reinterpret_cast<char*>(held.data()), static_cast<unsigned>(held.size()));
    send_tls(l, &b, 1, held.size());
    if (closing_) return;
    check_low_water(l);
  }
  maybe_shutdown(l);
  if (l.side == Side::kClient && awaiting_client_tls_) {
    awaiting_client_tls_ = false;
    start_upstream();
  }
  arm_timer();
}

void Session::count_sent(const Leg& to, std::size_t n) {
  (to.side == Side::kUpstream ? server_.stats().bytes_to_upstream : server_.stats().bytes_to_client) += n;
}

void Session::send_tls(Leg& to, const uv_buf_t* bufs, unsigned n, std::size_t total) {
  tls::Channel& t = *to.tls;
  if (t.failed()) return;
  if (!t.established()) {
    // Held for the handshake, not relayed yet: a failed handshake drops them.
    for (unsigned i = 0; i < n; ++i) to.tls_pending.insert(to.tls_pending.end(), bufs[i].base, bufs[i].base + bufs[i].len);
    to.queued += total;
    check_high_water(to);
    return;
  }
  count_sent(to, total);
  for (unsigned i = 0; i < n; ++i) {
    if (t.write(reinterpret_cast<const std::uint8_t*>(bufs[i].base), bufs[i].len) != tls::Channel::Status::kOk) {
      tls_failed(to);
      return;
    }
  }
  flush_tls(to);
}

void Session::flush_tls(Leg& l) {
  if (!l.tls || l.tls->output().empty()) return;
  const auto& out = l.tls->output();
  uv_buf_t b = uv_buf_init(const_cast<char*>(reinterpret_cast<const char*>(out.data())), static_cast<unsigned>(out.size()));
  write_wire(l, &b, 1, out.size());  // copies what the socket does not take at once
  l.tls->clear_output();
}

void Session::tls_failed(Leg& l) {
  flush_tls(l);  // the alert that tells the peer why
  if (!l.tls_pending.empty()) {
    // What waited for the handshake can never go now: not to be flushed.
    l.queued -= l.tls_pending.size();
    std::vector<std::uint8_t>().swap(l.tls_pending);
    check_low_water(l);
  }
  const tls::Failure& f = l.tls->failure();
  // Whatever the other leg still has queued is delivered; nothing more is relayed.
  close_after_flush(f.name + ": " + std::string(side_name(l.side)) + ": " + f.detail);
}

void Session::on_write_done(Leg& to, std::size_t len, int status) {
  to.queued -= len;
  if (closing_) return;
  if (status < 0) {
    close(std::string(side_name(to.side)) +
              (status == UV_EPIPE || status == UV_ECONNRESET ? "-reset" : "-write-error") + ": " + uv_error_text(status),
          true);
    return;
  }
  check_low_water(to);
  maybe_finish();
  if (to.queued == 0) maybe_passthrough();
}

void Session::on_eof(Leg& from) {
  from.eof = true;
  update_reading(from);
  if (!first_fin_) first_fin_ = from.side == Side::kClient ? "client" : "upstream";
  Flow& f = flow_from(from.side);
  const bool truncated = !f.raw && framer_of(f).held() > 0;
  if (truncated) {
    f.stats.decode_errors++;
    server_.stats().decode_errors["truncated"]++;
  }
  if (from.side == Side::kClient && awaiting_cr_) {
    // No CR chose an upstream (or was allowed), and none can come now:
    // nothing to relay to.
    close(std::string(truncated ? "client-closed: inside its first frame, before " : "client-closed: before ") + awaited_cr());
    return;
  }
  if (truncated) {
    codec::Bytes held = framer_of(f).held_bytes();
    // Octet 5 is the TPDU code: the start of a CR (or too little to tell)
    // is not relayed past a filter that judges every CR.
    const char* refused = from.side == Side::kClient && (held.size() < 6 || (held[5] & 0xF0) == 0xE0)
                              ? client_raw_refused()
                              : nullptr;
    // Before the TPKT header is whole, no length is declared yet.
    const std::string part = framer_of(f).expected() == 0
                                 ? std::to_string(held.size()) + " of the TPKT header's " +
                                       std::to_string(codec::kTpktHeaderSize) + " octets"
                                 : std::to_string(held.size()) + " octets of " +
                                       std::to_string(framer_of(f).expected()) + " declared";
    if (refused) {
      spdlog::info("[S{}] client closed inside a frame that may be a CR ({}); not relayed ({})", id_, part, refused);
    } else {
      // The peer closed mid-frame: relay what it sent (do no harm) and count it.
      spdlog::info("[S{}] {} closed inside a frame ({}); relayed as they are", id_, side_name(from.side), part);
      f.stats.bytes += held.size();
      f.stats.raw_bytes += held.size();
      send_owned(other(from), std::vector<std::uint8_t>(held.begin(), held.end()));
      framer_of(f).discard();  // relayed: not held any more
    }
  }
  Leg& to = other(from);
  to.shutdown_wanted = true;
  maybe_shutdown(to);
  maybe_finish();
}

void Session::maybe_shutdown(Leg& l) {
  if (!l.shutdown_wanted || l.shutdown_sent || !l.connected || closing_) return;
  if (in_passthrough()) {
    // FIN once the pipe toward it is empty (pump() sends it then).
    if (io_->pt->dir[leg_index(other(l).side)].in_pipe == 0) fin_toward(l);
    return;
  }
  if (l.tls) {
    // FIN after the handshake and what it held back, behind a close_notify;
    // a session closing anyway does not wait for a handshake.
    if (!l.tls->established() && !l.tls->failed() && !lingering_) return;
    l.tls->shutdown();
    flush_tls(l);
  }
  l.shutdown_sent = true;
  auto* stream = reinterpret_cast<uv_stream_t*>(&l.tcp);
  if (l.queued == 0 && uv_stream_get_write_queue_size(stream) == 0) {
    // Nothing waits to be written: FIN now, without uv_shutdown's round
    // through the loop for a writable socket. A peer that already sent its
    // own FIN, when the other one has too and has had ours, gets ours from
    // close(), which follows at once (maybe_finish).
    l.shutdown_done = true;
    if (l.eof && other(l).eof && other(l).shutdown_done) return;
    uv_os_fd_t fd;
    if (uv_fileno(reinterpret_cast<const uv_handle_t*>(&l.tcp), &fd) == 0 && ::shutdown(fd, SHUT_WR) != 0) {
      spdlog::debug("[S{}] shutdown toward {}: {}", id_, side_name(l.side), std::strerror(errno));
    }
    return;
  }
  // uv_shutdown waits for the queued writes: FIN goes after the last byte.
  // The request is allocated only for this wait; its callback frees it.
  auto* req = new uv_shutdown_t;
  req->data = &l;
  const int r = uv_shutdown(req, reinterpret_cast<uv_stream_t*>(&l.tcp), [](uv_shutdown_t* q, int status) noexcept {
    auto* leg = static_cast<Leg*>(q->data);
    delete q;
    if (status == UV_ECANCELED) return;
    leg->session->on_shutdown_done(*leg, status);
  });
  if (r < 0) {
    delete req;
    l.shutdown_done = true;
  }
}

void Session::on_shutdown_done(Leg& l, int status) {
  l.shutdown_done = true;
  if (status < 0 && !closing_) {
    spdlog::debug("[S{}] shutdown toward {}: {}", id_, side_name(l.side), uv_error_text(status));
  }
  maybe_finish();
}

void Session::maybe_finish() {
  if (closing_) return;
  // Both directions ended with FIN and both FINs delivered: a clean close.
  const bool fin_done = io_->client.eof && io_->upstream.eof && io_->client.shutdown_done && io_->upstream.shutdown_done;
  if (fin_done) {
    close(std::string(first_fin_) + "-closed");
    return;
  }
  if (lingering_) return;
  // Bytes held for an upstream still connecting, or in a pass-through pipe,
  // are not flushed yet either.
  const bool flushed = io_->client.queued == 0 && io_->upstream.queued == 0 && io_->pending_up.empty() && pipes_empty();
  if (close_after_flush_ && flushed) {
    linger(io_->pending_close_reason);
    return;
  }
  if (draining_ && flushed) {
    const bool client_done = io_->client.drain_stopped || io_->client.eof;
    const bool upstream_done = !io_->upstream.connected || io_->upstream.drain_stopped || io_->upstream.eof;
    if (client_done && upstream_done) linger("drain");
  }
}

void Session::linger(std::string reason) {
  if (closing_ || lingering_) return;
  leave_passthrough();  // libuv's FIN and read-and-discard from here on
  lingering_ = true;
  io_->pending_close_reason = std::move(reason);
  io_->linger_start_ms = server_.now_ms();
  for (Leg* l : {&io_->client, &io_->upstream}) {
    if (!l->connected) continue;
    l->shutdown_wanted = true;
    maybe_shutdown(*l);
    update_reading(*l);
  }
  arm_timer();
  check_linger_done();
}

void Session::check_linger_done() {
  if (!lingering_ || closing_) return;
  const bool client_done = !io_->client.connected || io_->client.eof;
  // An upstream still connecting with bytes to deliver is not done: they go
  // out (with our FIN) once it is up, or the linger deadline ends it.
  const bool upstream_done = (!io_->upstream.connected && io_->pending_up.empty()) || io_->upstream.eof;
  if (client_done && upstream_done) close(io_->pending_close_reason);
}

bool Session::peer_reset(Leg& l) {
  uv_os_fd_t fd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(&l.tcp), &fd) != 0) return false;
  char byte;
  const ssize_t r = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return r < 0 && errno == ECONNRESET;
}

void Session::close_after_flush(std::string reason) {
  if (closing_ || close_after_flush_) return;
  close_after_flush_ = true;
  // Held for an upstream not chosen or allowed yet: none will be now.
  if (!io_->upstream.initialised) io_->pending_up.clear();
  io_->flush_start_ms = server_.now_ms();
  io_->pending_close_reason = std::move(reason);
  arm_timer();
  update_reading(io_->client);
  update_reading(io_->upstream);
  maybe_finish();
}

void Session::drain() {
  if (closing_) return;
  unpark(false);  // idle: nothing in flight, so it lingers at once (maybe_finish)
  if (closing_) return;
  draining_ = true;
  if (!io_->upstream.connected) {
    close("drain");
    return;
  }
  if (in_passthrough()) {
    check_drain_quiet();
    update_polls();
    maybe_finish();
    return;
  }
  for (Leg* l : {&io_->client, &io_->upstream}) {
    Flow& f = flow_from(l->side);
    if (f.raw || framer_of(f).held() == 0) {
      l->drain_stopped = true;
      update_reading(*l);
    } else {
      f.drain_in_flight = true;  // read on until this frame is complete
    }
  }
  maybe_finish();
}

void Session::arm_timer() {
  // One deadline per session, kept by the Server's session timers (one
  // libuv timer for all of them: an idle session holds no timer handle).
  if (closing_) return;
  const auto& c = rt_->cfg;
  std::uint64_t deadline = UINT64_MAX;
  if (lingering_ || close_after_flush_) {
    server_.timers().set(*this, lingering_ ? io_->linger_start_ms + kLingerMs : io_->flush_start_ms + kFlushMs);
    return;
  }
  if (c.idle_timeout.count() > 0) {
    deadline = last_activity_ms_ + static_cast<std::uint64_t>(c.idle_timeout.count());
  }
  if (!io_) {  // parked: only the idle timeout applies
    server_.timers().set(*this, deadline);
    return;
  }
  if (io_->keepalive_at_ms != 0) deadline = std::min(deadline, io_->keepalive_at_ms);
  if (c.park_after.count() > 0 && state_ == SessionState::kEstablished) {
    deadline = std::min(deadline, std::max(last_activity_ms_ + park_delay(), park_retry_ms_));
  }
  if (io_->upstream.initialised && !io_->upstream.connected) {
    deadline = std::min<std::uint64_t>(deadline, io_->connect_start_ms + static_cast<std::uint64_t>(c.connect_timeout.count()));
  }
  for (const Leg* l : {&io_->client, &io_->upstream}) {
    if (l->tls && !l->tls->established() && l->tls_deadline_ms != 0) deadline = std::min(deadline, l->tls_deadline_ms);
  }
  if (handshake_timed()) {
    deadline = std::min<std::uint64_t>(deadline, start_ms_ + static_cast<std::uint64_t>(c.handshake_timeout.count()));
  }
  server_.timers().set(*this, deadline);  // UINT64_MAX: none
}

bool Session::handshake_timed() const {
  // Once a direction is relayed raw (not RFC 1006, or a frame that did not
  // decode), its CR, CC or DR can no longer be seen: a handshake isoproxy
  // does not follow is not timed either.
  return state_ != SessionState::kEstablished && !non_rfc1006_ && !to_client_.raw && !to_upstream_.raw &&
         rt_->cfg.handshake_timeout.count() > 0;
}

void Session::on_timer() {
  if (closing_) return;
  const auto& c = rt_->cfg;
  const std::uint64_t now = server_.now_ms();
  if (!io_) {  // parked: only the idle timeout applies
    if (!close_if_idle(now)) arm_timer();
    return;
  }
  if (io_->keepalive_at_ms != 0 && now >= io_->keepalive_at_ms) upstream_keepalive_on();
  if (lingering_ || close_after_flush_) {
    // The peers did not close within kLingerMs of our FIN, or did not read
    // what was queued for them within kFlushMs: close anyway.
    const std::uint64_t at = lingering_ ? io_->linger_start_ms + kLingerMs : io_->flush_start_ms + kFlushMs;
    if (now >= at) close(io_->pending_close_reason);
    else arm_timer();
    return;
  }
  for (const Leg* l : {&io_->client, &io_->upstream}) {
    if (l->tls && !l->tls->established() && l->tls_deadline_ms != 0 && now >= l->tls_deadline_ms) {
      close("tls-handshake-timeout: " + std::string(side_name(l->side)) + ": no TLS handshake within " +
            conf::format_duration(l->tls->context().handshake_timeout()));
      return;
    }
  }
  if (io_->upstream.initialised && !io_->upstream.connected &&
      now >= io_->connect_start_ms + static_cast<std::uint64_t>(c.connect_timeout.count())) {
    server_.stats().connect_failures["connect-timeout"]++;
    close("connect-timeout: " + upstream_addr_ + " did not answer within " + conf::format_duration(c.connect_timeout) +
          local_destination_hint());
    return;
  }
  if (handshake_timed() && now >= start_ms_ + static_cast<std::uint64_t>(c.handshake_timeout.count())) {
    if (io_->upstream.initialised && !io_->upstream.connected) {
      // Still connecting: the upstream never answered the SYN. Said as the
      // connect timeout it is, not as a CC that did not come.
      server_.stats().connect_failures["connect-timeout"]++;
      close("connect-timeout: " + upstream_addr_ + " did not answer within " +
            conf::format_duration(std::chrono::milliseconds(now - io_->connect_start_ms)) +
            " (handshake_timeout " + conf::format_duration(c.handshake_timeout) + " came before connect_timeout " +
            conf::format_duration(c.connect_timeout) + ")" + local_destination_hint());
      return;
    }
    // After a DR the peers are to close (RFC 1006 §6); the timeout also
    // ends a session where neither did, and says so.
    const auto kDr = static_cast<std::size_t>(codec::TpduType::kDR);
    const bool dr_seen = ann_.dr_reason || to_client_.stats.tpdu(kDr) != 0 || to_upstream_.stats.tpdu(kDr) != 0;
    const char* what = !cr_ms_ ? "no CR" : dr_seen ? "a DR refused the connection and neither peer closed" : "no CC or DR";
    close(std::string("handshake-timeout: ") + what + " within " + conf::format_duration(c.handshake_timeout));
    return;
  }
  if (close_if_idle(now)) return;
  const std::uint64_t park_after = c.park_after.count() > 0 ? park_delay() : 0;
  if (park_after > 0 && state_ == SessionState::kEstablished && now >= last_activity_ms_ + park_after &&
      now >= park_retry_ms_) {
    // Something still in flight (a slow reader, a FIN on its way): look again
    // later; never again when what keeps it lasts as long as the session
    // (else every such idle session would wake every park_after for ever).
    if (!park_eligible() || !park()) {
      if (const char* why = never_parks()) {
        park_retry_ms_ = UINT64_MAX;
        spdlog::debug("[S{}] will not park: {}", id_, why);
      } else {
        park_retry_ms_ = now + park_after;
      }
    }
  }
  arm_timer();
}

bool Session::close_if_idle(std::uint64_t now) {
  const auto& c = rt_->cfg;
  if (c.idle_timeout.count() <= 0 || now < last_activity_ms_ + static_cast<std::uint64_t>(c.idle_timeout.count())) return false;
  close("idle-timeout: no byte either way for " + conf::format_duration(c.idle_timeout));
  return true;
}

void Session::upstream_keepalive_on() {
  io_->keepalive_at_ms = 0;
  uv_tcp_keepalive(&io_->upstream.tcp, 1, static_cast<unsigned>(std::max<long>(1, rt_->cfg.keepalive_interval.count() / 1000)));
}

void Session::on_read_error(Leg& from, int err) {
  const bool reset = err == UV_ECONNRESET || err == UV_EPIPE;
  close(std::string(side_name(from.side)) + (reset ? "-reset" : "-read-error: " + uv_error_text(err)), true);
}

void Session::close(std::string reason, bool reset_peers) {
  if (closing_) return;
  // A parked session closes through its handles, as any other.
  unpark(false);
  closing_ = true;
  // Half a frame read and never to be relayed (a timeout, a reset, an
  // admin close): said in the close line, not lost from the counts.
  // (Not after a framing error: what the framer kept then is no frame.)
  for (Flow* f : {&to_upstream_, &to_client_}) {
    if (!f->raw && !framer_of(*f).failed()) f->held_at_close = static_cast<std::uint32_t>(framer_of(*f).held());
  }
  if (outbound_registered_) server_.outbound_closed(outbound_key());
  if (!io_->upstream.connected) source_ss_ = {};  // "source" names a connection made, not one tried
  io_->close_reason = std::move(reason);
  const SessionState was = state_;
  state_ = SessionState::kClosed;
  server_.stats().closed++;
  const auto colon = io_->close_reason.find(':');
  server_.stats().close_reasons[io_->close_reason.substr(0, colon)]++;
  for (const auto& [key, n] : counters_.entries()) server_.stats().filter_actions[server_.counter_name(key)] += n;
  // What the closed-session list shows of this session, as it is now; the
  // JSON itself is written only when asked (Server::retire).
  if (server_.keeps_closed()) {
    final_ = std::make_unique<Final>();
    final_->seq = server_.next_close_seq();
    final_->duration_ns = uv_hrtime() - start_ns_;
    final_->listener = rt_->cfg.name;
    final_->close_reason = io_->close_reason;
    final_->client_name = server_.rdns().name(&client_ss_.sa);
    if (upstream_ss_.sa.sa_family != 0) final_->upstream_name = server_.rdns().name(&upstream_ss_.sa);
    if (io_->client.tls) final_->client_tls = tls_json(io_->client.tls.get());
    if (io_->upstream.tls) final_->upstream_tls = tls_json(io_->upstream.tls.get());
  }
  // Before the close line: with several workers, whoever reads the close
  // line (a test, then SIGUSR1 from logrotate) finds the access-log line written.
  if (server_.wants_access_log()) server_.write_access_log(snapshot_text());
  // Exactly one summary line per session (DESIGN.md §6), built only when
  // it is written (log_level = "warn" skips half a kilobyte of formatting).
  if (spdlog::should_log(spdlog::level::info)) spdlog::info("[S{}] close {}", id_, close_line());
  if (ann_.called_tsap) server_.count_called_tsap(codec::tsap_text(*ann_.called_tsap).display());
  (void)was;

  server_.timers().set(*this, UINT64_MAX);
  auto on_closed = [](uv_handle_t* h) noexcept { static_cast<Leg*>(h->data)->session->on_handle_closed(); };
  if (io_->pt) {
    // The polls before the tcp handles: each owns its socket until closed.
    for (auto& p : io_->pt->poll) {
      if (p.initialised && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&p.handle))) {
        uv_close(reinterpret_cast<uv_handle_t*>(&p.handle), on_poll_closed);
      }
    }
    for (auto& d : io_->pt->dir) {
      if (d.in_pipe == 0) server_.splice().release(d.pipe);
      else server_.splice().discard(d.pipe);
    }
    io_->pt->active = false;
    if (io_->pt->attached) server_.splice().detach();
    io_->pt->attached = false;
  }
  for (Leg* l : {&io_->client, &io_->upstream}) {
    if (!l->initialised) continue;
    auto* h = reinterpret_cast<uv_handle_t*>(&l->tcp);
    if (uv_is_closing(h)) continue;
    // A reset on one leg is passed on as a reset: the other peer learns the
    // connection failed rather than ended. Also a peer that has sent its own
    // FIN: it may still be reading, and a plain close would tell it the
    // stream ended whole.
    if (reset_peers && l->connected && uv_tcp_close_reset(&l->tcp, on_closed) == 0) continue;
    uv_close(h, on_closed);
  }
}

void Session::on_handle_closed() {
  if (--open_handles_ == 0) server_.session_closed(id_);
}

void Session::on_poll_closed(uv_handle_t* h) noexcept {
  auto* leg = static_cast<Leg*>(h->data);
  Session* self = leg->session;
  // uv_is_closing() stays true once the close is done: `initialised` is what
  // says whether a close is still pending (park_eligible waits for it).
  self->io_->pt->poll[leg_index(leg->side)].initialised = false;
  self->on_handle_closed();
}

void Session::count(std::string_view filter, std::string_view action, std::uint64_t n) {
  counters_.add(server_.counter_key(filter, action), n);
}

void Session::inject(filters::Direction toward, std::vector<std::uint8_t> frame) {
  // A DR isoproxy sends itself (no route, ACL) is the session's DR: the close
  // line and the stats name it, from "isoproxy".
  if (auto f = codec::decode_frame(codec::Bytes(frame.data(), frame.size())); f && f->tpdu.type == codec::TpduType::kDR && f->tpdu.reason) {
    ann_.dr_reason = *f->tpdu.reason;
    dr_injected_ = true;
  }
  io_->injected.emplace_back(toward, std::move(frame));
}

void Session::end_session(std::string reason) { io_->pending_close_reason = std::move(reason); }

void Session::log(std::string_view message) { filter_line(false, message); }

void Session::warn(std::string_view message) { filter_line(true, message); }

void Session::filter_line(bool warning, std::string_view message) {
  const auto level = warning ? spdlog::level::warn : spdlog::level::info;
  // Filters log connection-phase events (a repair, a refusal), which a
  // session has a few of; a peer that repeats its CR on one connection must
  // not turn that into a flood. The counts go on either way.
  if (filter_log_lines_ >= kMaxFilterLogLines) return;
  if (++filter_log_lines_ == kMaxFilterLogLines) {
    spdlog::log(level, "[S{}] {} (further filter lines of this session are not logged; its counts go on in the close line)",
                id_, message);
    return;
  }
  spdlog::log(level, "[S{}] {}", id_, message);
}

void Session::log_event(std::string_view message) { spdlog::info("[S{}] {}", id_, message); }

// ---------------------------------------------------------------------------
// Pass-through (issue 7). Once the handshake is over and no filter needs the
// data phase, the bytes go socket -> pipe -> socket with splice(2) and never
// through user space. libuv 1.44 has no splice, so the session stops libuv
// reading its sockets and drives them with one uv_poll_t per leg; while a
// poll owns a socket, nothing calls uv_write/uv_read_start/uv_shutdown on
// its tcp handle (libuv's own watcher for the fd is fully stopped: no read,
// no write request in flight, no shutdown). Leaving (linger) closes the
// polls first; then libuv's stream functions work again.

bool Session::in_passthrough() const { return io_ && io_->pt && io_->pt->active; }

bool Session::pipes_empty() const {
  if (!io_ || !io_->pt) return true;
  return io_->pt->dir[0].in_pipe == 0 && io_->pt->dir[1].in_pipe == 0;
}

bool Session::passthrough_eligible() const {
  // malformed = "close" polices every frame of the data phase: it needs framing.
  if (!rt_->cfg.passthrough || io_->chain.needs_data_phase() || rt_->cfg.malformed != conf::MalformedPolicy::kPass) {
    return false;
  }
  if (closing_ || draining_ || lingering_ || close_after_flush_ || awaiting_cr_ || awaiting_client_tls_) return false;
  if (!io_->injected.empty() || !io_->pending_up.empty()) return false;
  for (const Leg* l : {&io_->client, &io_->upstream}) {
    if (l->tls || !l->initialised || !l->connected || l->eof || l->shutdown_sent || l->shutdown_wanted ||
        l->drain_stopped || l->queued != 0) {
      return false;
    }
  }
  // Each direction at a frame boundary once the CC has been relayed; a
  // direction already passing raw bytes has no boundary to wait for.
  for (const Flow* f : {&to_upstream_, &to_client_}) {
    if (f->raw) continue;
    if (state_ != SessionState::kEstablished || framer_of(*f).held() != 0) return false;
  }
  return true;
}

void Session::maybe_passthrough() {
  if (io_->pt && (io_->pt->active || io_->pt->scheduled || io_->pt->refused)) return;
  // Not before the data phase has begun (a DT, or raw bytes): a session that
  // exchanged CR and CC and idles never allocates the pass-through state.
  if (to_upstream_.stats.dt + to_client_.stats.dt == 0 && !to_upstream_.raw && !to_client_.raw) return;
  if (!passthrough_eligible()) return;
  if (!io_->pt) io_->pt = std::make_unique<Passthrough>();
  io_->pt->scheduled = true;
  // Not now: this runs inside libuv's callback for one of the sockets, which
  // touches that socket's watcher again after we return. But nothing more is
  // read meanwhile, so that the boundary found here is still the boundary
  // then (a busy stream would otherwise rarely be found at one twice).
  for (Leg* l : {&io_->client, &io_->upstream}) {
    if (l->reading) uv_read_stop(reinterpret_cast<uv_stream_t*>(&l->tcp));
    l->reading = false;
  }
  server_.splice().defer(id_);
}

void Session::enter_passthrough() {
  if (!io_ || !io_->pt || !io_->pt->scheduled) return;
  io_->pt->scheduled = false;
  if (closing_) return;
  // Reading stopped when this was scheduled: framed again, it resumes.
  auto resume = [this] {
    update_reading(io_->client);
    update_reading(io_->upstream);
  };
  if (io_->pt->active || io_->pt->refused || !passthrough_eligible()) {
    resume();  // framed until the next boundary
    return;
  }
  auto refuse = [this, &resume](const std::string& why) {
    io_->pt->refused = true;
    if (io_->pt->attached) server_.splice().detach();
    io_->pt->attached = false;
    spdlog::debug("[S{}] pass-through not possible: {}; relaying framed", id_, why);
    resume();
  };
  // A session that cannot get a pipe now stays framed (the fd limit).
  server_.splice().attach();
  io_->pt->attached = true;
  std::string why;
  SpliceSupport::Pipe probe = server_.splice().acquire(why);
  if (!probe.valid()) {
    refuse(why);
    return;
  }
  server_.splice().release(probe);
  std::array<uv_os_fd_t, 2> fds{};
  for (Leg* l : {&io_->client, &io_->upstream}) {
    if (uv_fileno(reinterpret_cast<uv_handle_t*>(&l->tcp), &fds[leg_index(l->side)]) != 0) {
      refuse("no file descriptor");
      return;
    }
  }
  // libuv's watcher for each socket stops entirely: no read (stopped here),
  // no write in flight (queued == 0), no shutdown (eligibility).
  for (Leg* l : {&io_->client, &io_->upstream}) {
    if (l->reading) uv_read_stop(reinterpret_cast<uv_stream_t*>(&l->tcp));
    l->reading = false;
  }
  for (Leg* l : {&io_->client, &io_->upstream}) {
    auto& p = io_->pt->poll[leg_index(l->side)];
    const int r = uv_poll_init_socket(server_.loop(), &p.handle, fds[leg_index(l->side)]);
    if (r < 0) {
      // UV_EEXIST: libuv still watches the fd. Give it back and stay framed.
      for (auto& q : io_->pt->poll) {
        if (q.initialised && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&q.handle))) {
          uv_close(reinterpret_cast<uv_handle_t*>(&q.handle), on_poll_closed);
        }
      }
      refuse(std::string("uv_poll_init: ") + uv_error_text(r));
      return;
    }
    p.handle.data = l;
    p.initialised = true;
    ++open_handles_;
  }
  io_->pt->active = io_->pt->entered = passthrough_entered_ = true;
  spdlog::debug("[S{}] pass-through: splicing both directions", id_);
  update_polls();
}

void Session::update_polls() {
  if (!in_passthrough() || closing_) return;
  for (Leg* l : {&io_->client, &io_->upstream}) {
    auto& p = io_->pt->poll[leg_index(l->side)];
    const auto& from_here = io_->pt->dir[leg_index(l->side)];
    const auto& to_here = io_->pt->dir[leg_index(other(*l).side)];
    // Read while the pipe of this direction is empty (the pipe is the
    // buffer: bytes still in it wait for the other socket); write while
    // bytes wait for this socket.
    const bool read = !l->eof && !l->drain_stopped && !io_->pt->leaving && from_here.in_pipe == 0;
    const bool write = to_here.in_pipe > 0;
    const int events = (read ? UV_READABLE : 0) | (write ? UV_WRITABLE : 0);
    if (events == p.events) continue;
    p.events = events;
    if (events == 0) {
      uv_poll_stop(&p.handle);
    } else {
      uv_poll_start(&p.handle, events, [](uv_poll_t* h, int status, int ev) noexcept {
        auto* leg = static_cast<Leg*>(h->data);
        leg->session->on_poll(*leg, status, ev);
      });
    }
  }
}

void Session::on_poll(Leg& l, int status, int events) {
  if (closing_ || !in_passthrough()) return;
  Leg& o = other(l);
  if (status < 0) {
    // POLLERR: libuv stopped the poll. Splicing says what happened (a
    // reset, with the close reason the framed path gives).
    io_->pt->poll[leg_index(l.side)].events = 0;
    pump(l);
    if (!closing_) pump(o);
    if (!closing_) {
      int err = 0;
      socklen_t len = sizeof err;
      uv_os_fd_t fd;
      if (uv_fileno(reinterpret_cast<uv_handle_t*>(&l.tcp), &fd) == 0) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0 || err == ECONNRESET || err == EPIPE) {
        close(std::string(side_name(l.side)) + "-reset", true);
      } else {
        close(std::string(side_name(l.side)) + "-read-error: " + uv_error_text(-err), true);
      }
      return;
    }
  } else {
    // Toward this socket first: room there lets the other direction read again.
    if ((events & UV_WRITABLE) || events == 0) pump(o);
    if (!closing_ && ((events & UV_READABLE) || events == 0)) pump(l);
  }
  if (closing_) return;
  if (io_->pt->leaving && pipes_empty()) {
    // No pipe to be had (fd limit): the rest of the session goes through
    // user space, unframed, as libuv relays it.
    leave_passthrough();
    to_raw(io_->client, to_upstream_, "pass-through ended (no pipe)");
    to_raw(io_->upstream, to_client_, "pass-through ended (no pipe)");
    update_reading(io_->client);
    update_reading(io_->upstream);
    return;
  }
  if (draining_) check_drain_quiet();
  update_polls();
  maybe_finish();
}

void Session::pump(Leg& from) {
  Leg& to = other(from);
  auto& d = io_->pt->dir[leg_index(from.side)];
  Flow& f = flow_from(from.side);
  uv_os_fd_t in_fd, out_fd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(&from.tcp), &in_fd) != 0 ||
      uv_fileno(reinterpret_cast<uv_handle_t*>(&to.tcp), &out_fd) != 0) {
    return;
  }
  auto& global = to.side == Side::kUpstream ? server_.stats().bytes_to_upstream : server_.stats().bytes_to_client;
  // A splice that took less than the pipe holds emptied the socket (as a
  // short read does): once those bytes are out, the next POLLIN says when
  // there is more, rather than one more splice to learn EAGAIN (a third of
  // the system calls of a small request and its answer).
  bool drained = false;
  for (int round = 0; round < kPumpRounds; ++round) {
    if (d.in_pipe > 0) {
      const ssize_t k = ::splice(d.pipe.rd, nullptr, out_fd, nullptr, d.in_pipe, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (k < 0 && errno == EINTR) continue;
      if (k < 0 && errno == EAGAIN) break;  // the peer's window is full: wait for POLLOUT
      if (k <= 0) {
        const int err = k < 0 ? errno : EPIPE;
        close(std::string(side_name(to.side)) + (err == EPIPE || err == ECONNRESET ? "-reset" : "-write-error") + ": " +
                  uv_error_text(-err),
              true);
        return;
      }
      const auto n = static_cast<std::size_t>(k);
      d.in_pipe -= n;
      f.stats.bytes += n;
      f.stats.passthrough_bytes += n;
      global += n;
      if (d.in_pipe > 0) break;  // partly taken: the socket is full
    }
    // The pipe is empty.
    if (d.pipe.valid()) server_.splice().release(d.pipe);
    if (from.eof) {
      fin_toward(to);
      break;
    }
    if (from.drain_stopped || io_->pt->leaving || drained) break;
    std::string why;
    d.pipe = server_.splice().acquire(why);
    if (!d.pipe.valid()) {
      if (!io_->pt->leaving) spdlog::debug("[S{}] pass-through: {}; leaving pass-through", id_, why);
      io_->pt->leaving = true;
      break;
    }
    const ssize_t k = ::splice(in_fd, nullptr, d.pipe.wr, nullptr, d.pipe.capacity, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (k > 0) {
      d.in_pipe = static_cast<std::size_t>(k);
      drained = d.in_pipe < d.pipe.capacity;
      last_activity_ms_ = server_.now_ms();
      continue;
    }
    if (k == 0) {
      // FIN (or a reset right behind the last data, as on_read checks).
      if (peer_reset(from)) {
        on_read_error(from, UV_ECONNRESET);
        return;
      }
      from.eof = true;
      if (!first_fin_) first_fin_ = from.side == Side::kClient ? "client" : "upstream";
      // The pipe is empty: the FIN goes now. (Left to the next round, it was
      // lost when this was the last one: nothing polls a source at EOF with
      // an empty pipe, and the session never ended.)
      fin_toward(to);
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) break;  // nothing more to read
    on_read_error(from, -errno);
    return;
  }
  if (d.in_pipe == 0 && d.pipe.valid()) server_.splice().release(d.pipe);
}

void Session::fin_toward(Leg& to) {
  if (to.shutdown_sent) return;
  to.shutdown_wanted = true;
  to.shutdown_sent = true;
  to.shutdown_done = true;
  uv_os_fd_t fd;
  // The pipe is empty: FIN goes after the last byte, as uv_shutdown would.
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(&to.tcp), &fd) == 0 && ::shutdown(fd, SHUT_WR) != 0) {
    spdlog::debug("[S{}] shutdown toward {}: {}", id_, side_name(to.side), std::strerror(errno));
  }
}

void Session::check_drain_quiet() {
  // Frame boundaries are not known here: a direction stops at its first
  // quiet point, the pipe empty and nothing unread at the source.
  for (Leg* l : {&io_->client, &io_->upstream}) {
    if (l->drain_stopped || l->eof || io_->pt->dir[leg_index(l->side)].in_pipe > 0) continue;
    uv_os_fd_t fd;
    int unread = 0;
    if (uv_fileno(reinterpret_cast<uv_handle_t*>(&l->tcp), &fd) == 0 && ::ioctl(fd, FIONREAD, &unread) == 0 && unread == 0) {
      l->drain_stopped = true;
    }
  }
}

void Session::leave_passthrough() {
  if (!in_passthrough()) return;
  // The polls go first (closing one removes the fd from epoll); then the tcp
  // handles are libuv's again.
  for (auto& p : io_->pt->poll) {
    if (p.initialised && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&p.handle))) {
      uv_close(reinterpret_cast<uv_handle_t*>(&p.handle), on_poll_closed);
    }
    p.events = 0;
  }
  for (auto& d : io_->pt->dir) {
    if (d.in_pipe == 0) server_.splice().release(d.pipe);
    else server_.splice().discard(d.pipe);
    d.in_pipe = 0;
  }
  io_->pt->active = false;
  io_->pt->refused = true;  // once out, the session stays out
  if (io_->pt->attached) server_.splice().detach();
  io_->pt->attached = false;
}

// ---------------------------------------------------------------------------
// Parking (park.h). An idle session's memory is mostly its I/O state: two
// libuv stream handles, framers, queues, the pass-through polls. Parked, it
// keeps its stats and its two sockets (duplicated descriptors: a libuv
// handle closes its own), watched by the worker's ParkSet; woken, it gets a
// fresh Io on the same sockets. It parks only at a quiet point, so there is
// nothing in flight to carry over: no queued byte, no partial frame, no FIN,
// no TLS (whose state lives in the Io), no deadline but the idle timeout.

bool Session::park_eligible() const {
  if (!io_ || parked_ || closing_ || draining_ || lingering_ || close_after_flush_ || awaiting_cr_ ||
      awaiting_client_tls_) {
    return false;
  }
  if (state_ != SessionState::kEstablished) return false;
  // Per-session filter state the Io would take with it (trace's pcap
  // stream, tpkt-reserved's log-once bits).
  if (io_->chain.keeps_session_state()) return false;
  if (!io_->pending_up.empty() || !io_->injected.empty()) return false;
  for (const Leg* l : {&io_->client, &io_->upstream}) {
    if (l->tls || !l->initialised || !l->connected || l->eof || l->shutdown_sent || l->shutdown_wanted ||
        l->drain_stopped || l->queued != 0 || l->over_high_water) {
      return false;
    }
    if (uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(&l->tcp)) != 0) return false;
  }
  if (const Passthrough* pt = io_->pt.get()) {
    if (pt->scheduled || pt->leaving) return false;
    for (const auto& p : pt->poll) {
      // A poll given back (uv_poll_init failed) whose close is pending
      // still points into this Io.
      if (p.initialised && uv_is_closing(reinterpret_cast<const uv_handle_t*>(&p.handle))) return false;
    }
    if (pt->active) return pipes_empty();  // the framers are not used in pass-through
  }
  for (const Flow* f : {&to_upstream_, &to_client_}) {
    if (!f->raw && framer_of(*f).held() != 0) return false;
  }
  return true;
}

const char* Session::never_parks() const {
  if (!io_ || draining_ || closing_) return "closing";
  if (io_->chain.keeps_session_state()) return "a filter keeps per-session state";
  for (const Leg* l : {&io_->client, &io_->upstream}) {
    if (l->tls) return "a TLS leg";
    if (l->eof || l->shutdown_sent) return "half-closed";
  }
  return nullptr;
}

bool Session::park() {
  std::array<int, 2> fds{-1, -1};
  auto undo = [&] {
    for (int& fd : fds) {
      if (fd < 0) continue;
      server_.park().remove(fd);
      ::close(fd);
    }
  };
  for (Leg* l : {&io_->client, &io_->upstream}) {
    uv_os_fd_t fd;
    if (uv_fileno(reinterpret_cast<uv_handle_t*>(&l->tcp), &fd) != 0) {
      undo();
      return false;
    }
    const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup >= 0) fds[leg_index(l->side)] = dup;
    if (dup < 0 || !server_.park().add(dup, id_)) {
      // The fd limit, most likely: the session stays awake, as it was.
      spdlog::debug("[S{}] not parked: {}", id_, std::strerror(errno));
      undo();
      return false;
    }
  }
  const bool was_passthrough = in_passthrough();
  // Due within the second anyway; a parked session has no handle for it.
  if (io_->keepalive_at_ms != 0) upstream_keepalive_on();
  // The handles close now (each with its own descriptor; the duplicates keep
  // the connections); the Io goes with the last close callback.
  Io* old = io_.release();
  auto closed = [](uv_handle_t* h) noexcept {
    auto* io = static_cast<Io*>(h->data);
    if (--io->closing_handles == 0) delete io;
  };
  auto close_handle = [&](uv_handle_t* h) {
    h->data = old;
    ++old->closing_handles;
    --open_handles_;
    uv_close(h, closed);
  };
  if (Passthrough* pt = old->pt.get()) {
    // The polls before the tcp handles, as in close().
    for (auto& p : pt->poll) {
      if (p.initialised && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&p.handle))) {
        close_handle(reinterpret_cast<uv_handle_t*>(&p.handle));
      }
      p.initialised = false;
    }
    for (auto& d : pt->dir) server_.splice().release(d.pipe);  // empty (eligibility)
    if (pt->attached) server_.splice().detach();
    pt->attached = pt->active = false;
  }
  for (Leg* l : {&old->client, &old->upstream}) close_handle(reinterpret_cast<uv_handle_t*>(&l->tcp));
  park_fd_ = fds;
  parked_ = true;
  park_in_passthrough_ = was_passthrough;
  ++parks_;
  ++server_.stats().parked;
  server_.session_parked();
  spdlog::debug("[S{}] parked{}", id_, was_passthrough ? " (pass-through)" : "");
  return true;
}

void Session::unpark(bool resume) {
  if (!parked_) return;
  parked_ = false;
  --server_.stats().parked;
  io_ = std::make_unique<Io>(rt_->cfg.max_frame, rt_->factories);
  io_->chain.resume_after_handshake();
  init_io();
  std::string error;
  for (Leg* l : {&io_->client, &io_->upstream}) {
    int& fd = park_fd_[leg_index(l->side)];
    server_.park().remove(fd);
    uv_tcp_init(server_.loop(), &l->tcp);
    l->tcp.data = l;
    l->initialised = true;
    ++open_handles_;
    if (const int r = uv_tcp_open(&l->tcp, fd); r < 0) {
      if (error.empty()) error = std::string(side_name(l->side)) + ": " + uv_error_text(r);
      ::close(fd);
    } else {
      l->connected = true;
    }
    fd = -1;
  }
  spdlog::debug("[S{}] woken{}", id_, park_in_passthrough_ ? " (pass-through)" : "");
  if (!error.empty()) {
    // A close that woke it goes on with its own reason (the handles exist,
    // so it closes as usual); anything else ends here.
    spdlog::warn("[S{}] could not wake the parked session: {}", id_, error);
    if (!resume) return;
    close("unpark-failed: " + error);
    return;
  }
  if (!resume) return;
  // A session woken soon after it parked (a peer that polls) would park and
  // wake on every exchange, at about 14 us each: it waits twice as long
  // before parking again, up to kParkBackoffMax times park_after; one that
  // stayed parked a while starts again from park_after.
  const std::uint64_t now = server_.now_ms();
  const std::uint64_t delay = park_delay();
  const auto base = static_cast<std::uint64_t>(rt_->cfg.park_after.count());
  park_delay_ms_ = park_backoff(now - last_activity_ms_ < 4 * delay, delay, base);
  // What woke it (bytes, a FIN) is activity: it parks again only after
  // that long of quiet.
  last_activity_ms_ = now;
  if (park_in_passthrough_) {
    // Straight back to splicing: the stream may be inside a frame, which
    // the framers (new, at a boundary) must never see.
    io_->pt = std::make_unique<Passthrough>();
    io_->pt->scheduled = true;
    enter_passthrough();  // or framed reading, if it cannot
    if (!closing_ && !in_passthrough()) {
      // No pipe to be had (the fd limit): the stream may be inside a frame,
      // which fresh framers would misread. Relayed unframed from here on.
      to_raw(io_->client, to_upstream_, "woke from pass-through without a pipe");
      to_raw(io_->upstream, to_client_, "woke from pass-through without a pipe");
    }
  } else {
    update_reading(io_->client);
    update_reading(io_->upstream);
  }
  if (!closing_) arm_timer();
}

std::uint64_t Session::park_delay() const {
  return park_delay_ms_ != 0 ? park_delay_ms_ : static_cast<std::uint64_t>(rt_->cfg.park_after.count());
}

void Session::wake() {
  if (!parked_ || closing_) return;
  unpark(true);
}

std::string Session::source_text() const {
  return source_ss_.sa.sa_family == 0 ? std::string() : address_text(&source_ss_.sa);
}

EndpointPair Session::outbound_key() const { return {Endpoint::of(&source_ss_.sa), Endpoint::of(&upstream_ss_.sa)}; }

bool Session::local_name(const Leg& l, SockAddr& out) {
  sockaddr_storage ss{};
  int len = sizeof ss;
  if (uv_tcp_getsockname(&l.tcp, reinterpret_cast<sockaddr*>(&ss), &len) != 0 || static_cast<std::size_t>(len) > sizeof out) {
    return false;
  }
  out = {};
  std::memcpy(&out, &ss, static_cast<std::size_t>(len));
  return true;
}

std::string Session::client_address() const {
  return client_ss_.sa.sa_family == 0 ? std::string("?") : address_text(&client_ss_.sa);
}

std::string Session::local_destination_hint() const {
  if (!rt_->cfg.transparent) return {};
  // A diverted connection to this host's own address that nothing here
  // serves: most likely the TPROXY rule diverts local destinations too.
  conf::IpAddress dst;
  dst.storage = {};
  std::memcpy(&dst.storage, &upstream_ss_, sizeof upstream_ss_);
  dst.length = upstream_ss_.sa.sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (dst.storage.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&dst.storage)->sin_port = 0;
  if (dst.storage.ss_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(&dst.storage)->sin6_port = 0;
  dst.text = upstream_addr_;
  if (!check_source_is_local(dst)) return {};
  return " (the destination is this host's own address: if nothing else serves it, the TPROXY rule diverts local "
         "destinations back to isoproxy; exclude them: nft fib daddr type local return)";
}

const char* Session::dr_from_text() const {
  if (dr_injected_) return "isoproxy";
  return ann_.dr_from == filters::Direction::kToClient ? "upstream" : "client";
}

std::string Session::close_line() const {
  // Appended in place (one buffer, no temporaries): every session writes one.
  std::string s;
  s.reserve(512);
  auto field = [&s](std::string_view key, std::string_view value) {
    s += ' ';
    s += key;
    s += '=';
    log::quote_to(s, value);
  };
  // key=- : the value is absent (a value "-" itself is quoted by field()).
  auto field_or_absent = [&s, &field](std::string_view key, std::string_view value) {
    if (!value.empty()) return field(key, value);
    s += ' ';
    s += key;
    s += "=-";
  };
  auto number = [&s](std::string_view key, std::uint64_t v) {
    s += ' ';
    s += key;
    s += '=';
    json_text::number(s, v);
  };
  s += "reason=";
  log::quote_to(s, io_->close_reason);
  field("listener", rt_->cfg.name);
  field("client", client_address());
  // The names close() took for the closed list, or looked up now.
  const auto client_name = final_ ? final_->client_name : server_.rdns().name(&client_ss_.sa);
  if (client_name) field("client_name", *client_name);
  field_or_absent("upstream", upstream_addr_);
  const auto upstream_name = final_ ? final_->upstream_name : server_.rdns().name(&upstream_ss_.sa);
  if (upstream_name) field("upstream_name", *upstream_name);
  if (!route_name_.empty()) field("route", route_name_);
  const std::string source = source_text();
  field_or_absent("source", source);
  auto tsap = [&](std::string_view key, const filters::TsapValue& t) {
    // An empty TSAP parameter is written "" (present), none at all -.
    if (t) return field(key, codec::tsap_text(*t).display());
    field_or_absent(key, {});
  };
  tsap("calling", ann_.calling_tsap);
  tsap("called", ann_.called_tsap);
  if (auto c = ann_.tpdu_size_code_cc ? ann_.tpdu_size_code_cc : ann_.tpdu_size_code_cr) {
    if (auto o = codec::tpdu_size_octets(*c)) number("tpdu_size", *o);
  }
  if (ann_.class_cc || ann_.class_cr) number("class", ann_.class_cc ? *ann_.class_cc : *ann_.class_cr);
  if (auto ms = cr_to_cc_ms()) number("cr_to_cc_ms", *ms);
  number("c2u_bytes", to_upstream_.stats.bytes);
  number("c2u_frames", to_upstream_.stats.frames);
  number("u2c_bytes", to_client_.stats.bytes);
  number("u2c_frames", to_client_.stats.frames);
  if (const auto n = held_bytes(to_upstream_)) number("c2u_held", n);
  if (const auto n = held_bytes(to_client_)) number("u2c_held", n);
  const auto anomalies = to_upstream_.stats.anomalies + to_client_.stats.anomalies;
  if (anomalies) number("anomalies", anomalies);
  const std::uint64_t errors = to_upstream_.stats.decode_errors + to_client_.stats.decode_errors;
  if (errors) number("decode_errors", errors);
  const auto discarded = to_upstream_.drain_discarded + to_client_.drain_discarded;
  if (discarded) number("drain_discarded", discarded);
  if (passthrough_entered_) s += " passthrough=1";
  if (non_rfc1006_) s += " non_rfc1006=1";
  else if (to_upstream_.raw || to_client_.raw) s += " raw=1";
  for (const Leg* l : {io_ ? &io_->client : nullptr, io_ ? &io_->upstream : nullptr}) {
    if (l == nullptr || !l->tls) continue;
    const tls::Info& i = l->tls->info();
    const std::string p(side_name(l->side));
    s += ' ' + p + "_tls=" + (!i.version.empty() ? i.version : l->tls->failed() ? std::string("failed") : std::string("handshake"));
    if (!i.cipher.empty()) s += ' ' + p + "_cipher=" + i.cipher;
    if (!i.peer_subject.empty()) field(p + "_peer", i.peer_subject);
    if (!i.verify.empty()) field(p + "_verify", i.verify);
    // Ended by a bare FIN: a TLS close that could have cut data off.
    if (!i.version.empty() && l->eof && !i.close_notify) s += ' ' + p + "_close_notify=no";
  }
  s += " filters=";
  if (counters_.entries().empty()) s += '-';
  bool first = true;
  for (const auto& [k, v] : counters_.entries()) {
    if (!first) s += ',';
    first = false;
    s += server_.counter_name(k);
    s += '=';
    json_text::number(s, v);
  }
  if (ann_.dr_reason) {
    const auto n = codec::dr_reason_name(*ann_.dr_reason);
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02X", *ann_.dr_reason);
    s += std::string(" dr=") + hex + " dr_from=" + dr_from_text();
    field("dr_reason", n ? *n : "unknown");
  }
  if (ann_.er_cause) {
    const auto n = codec::er_cause_name(*ann_.er_cause);
    number("er_cause", *ann_.er_cause);
    field("er_reason", n ? *n : "unknown");
  }
  // Seconds with three decimals, as "%.3fs" would print them (without printf).
  const std::uint64_t ms = (uv_hrtime() - start_ns_ + 500000) / 1000000;
  const std::uint64_t frac = ms % 1000;
  number("duration", ms / 1000);
  s += frac < 10 ? ".00" : frac < 100 ? ".0" : ".";
  json_text::number(s, frac);
  s += 's';
  return s;
}

}  // namespace isoproxy

namespace isoproxy {

namespace {

void tsap_text_json(json_text::Writer& w, const filters::TsapValue& t) {
  if (!t) {
    w.null();
    return;
  }
  const codec::TsapText text = codec::tsap_text(*t);
  w.begin_object().key("ascii");
  if (text.printable) w.value(text.ascii);
  else w.null();
  w.key("hex").value(text.hex).end_object();
}

// "2026-11-21T02:30:42.123Z"
std::string rfc3339_utc(std::int64_t unix_ms) {
  const std::time_t secs = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  // "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", written without printf (every closed session's record).
  std::string out;
  out.reserve(24);
  auto digits = [&out](int v, int width) {
    char d[8];
    for (int i = width - 1; i >= 0; --i, v /= 10) d[i] = static_cast<char>('0' + v % 10);
    out.append(d, static_cast<std::size_t>(width));
  };
  digits(tm.tm_year + 1900, 4);
  out += '-';
  digits(tm.tm_mon + 1, 2);
  out += '-';
  digits(tm.tm_mday, 2);
  out += 'T';
  digits(tm.tm_hour, 2);
  out += ':';
  digits(tm.tm_min, 2);
  out += ':';
  digits(tm.tm_sec, 2);
  out += '.';
  digits(static_cast<int>(unix_ms % 1000), 3);
  out += 'Z';
  return out;
}

void direction_text_json(json_text::Writer& w, const DirectionStats& d, std::uint64_t held) {
  w.begin_object();
  w.key("anomalies").value(d.anomalies);
  w.key("bytes").value(d.bytes);
  w.key("decode_errors").value(d.decode_errors);
  w.key("frames").value(d.frames);
  w.key("held_bytes").value(held);
  w.key("passthrough_bytes").value(d.passthrough_bytes);
  w.key("raw_bytes").value(d.raw_bytes);
  // By name, as a JSON object's members are listed everywhere else.
  std::array<std::pair<std::string_view, std::uint64_t>, 16> types;
  std::size_t n = 0;
  for (std::size_t i = 0; i < DirectionStats::kTypes; ++i) {
    if (d.tpdu(i) != 0) types[n++] = {codec::tpdu_type_name(static_cast<codec::TpduType>(i)), d.tpdu(i)};
  }
  std::sort(types.begin(), types.begin() + static_cast<std::ptrdiff_t>(n));
  w.key("tpdus").begin_object();
  for (std::size_t i = 0; i < n; ++i) w.key(types[i].first).value(types[i].second);
  w.end_object();
  w.key("tsdus").value(d.tsdus);
  w.end_object();
}

void tls_text_json(json_text::Writer& w, const tls::Channel* t) {
  if (t == nullptr) {
    w.null();
    return;
  }
  auto str = [&](const char* k, const std::string& v) {
    w.key(k);
    if (v.empty()) w.null();
    else w.value(v);
  };
  const tls::Info& i = t->info();
  w.begin_object();
  str("cipher", i.cipher);
  w.key("close_notify").value(i.close_notify);
  str("peer_issuer", i.peer_issuer);
  str("peer_subject", i.peer_subject);
  str("sni", i.sni);
  w.key("state").value(t->failed() ? "failed" : t->established() ? "established" : "handshake");
  str("verify", i.verify);
  str("version", i.version);
  w.end_object();
}

std::optional<std::uint32_t> size_of(std::optional<std::uint8_t> code) {
  if (!code) return std::nullopt;
  return codec::tpdu_size_octets(*code);
}

}  // namespace

std::string Session::snapshot_text() const {
  std::string out;
  out.reserve(1024);
  json_text::Writer w(out);
  auto opt_string = [&](const char* k, const std::string& v) {
    w.key(k);
    if (v.empty()) w.null();
    else w.value(v);
  };
  auto opt_name = [&](const char* k, const sockaddr& sa, const std::optional<std::string>* at_close) {
    w.key(k);
    // A kept closed session shows the names known when it closed.
    const std::optional<std::string> n = at_close ? *at_close : server_.rdns().name(&sa);
    if (n) w.value(*n);
    else w.null();
  };
  auto tls = [&](const Leg* l, const std::string* at_close) {
    if (l != nullptr && l->tls) tls_text_json(w, l->tls.get());
    else if (at_close != nullptr && !at_close->empty()) w.raw(*at_close);
    else w.null();
  };
  const Final* fin = io_ ? nullptr : final_.get();
  auto opt_number = [&](const char* k, auto v) {
    w.key(k);
    if (v) w.value(*v);
    else w.null();
  };
  // Members in name order (the order nlohmann's objects print in, kept so
  // that the text does not change with the writer).
  // A closed session's duration is the one taken at its close (the access
  // log and the closed-session list print the same).
  const double age = static_cast<double>(final_ ? final_->duration_ns : uv_hrtime() - start_ns_) / 1e9;
  w.begin_object();
  w.key("age_s");
  if (closed()) w.null();
  else w.value(age);
  w.key("called_tsap");
  tsap_text_json(w, ann_.called_tsap);
  w.key("calling_tsap");
  tsap_text_json(w, ann_.calling_tsap);
  opt_number("class", ann_.class_cc ? ann_.class_cc : ann_.class_cr);
  w.key("client").value(client_address());
  opt_name("client_name", client_ss_.sa, fin ? &fin->client_name : nullptr);
  w.key("client_tls");
  tls(io_ ? &io_->client : nullptr, fin ? &fin->client_tls : nullptr);
  opt_string("close_reason", io_ ? io_->close_reason : fin ? fin->close_reason : std::string());
  opt_number("cr_to_cc_ms", cr_to_cc_ms());
  w.key("dr");
  if (ann_.dr_reason) {
    const auto n = codec::dr_reason_name(*ann_.dr_reason);
    w.begin_object().key("from").value(dr_from_text()).key("name");
    if (n) w.value(*n);
    else w.null();
    w.key("reason").value(*ann_.dr_reason).end_object();
  } else {
    w.null();
  }
  w.key("duration_s");
  if (closed()) w.value(age);
  else w.null();
  w.key("er");
  if (ann_.er_cause) {
    const auto n = codec::er_cause_name(*ann_.er_cause);
    w.begin_object().key("cause").value(*ann_.er_cause);
    w.key("from").value(ann_.er_from == filters::Direction::kToClient ? "upstream" : "client").key("name");
    if (n) w.value(*n);
    else w.null();
    w.end_object();
  } else {
    w.null();
  }
  {
    std::vector<std::pair<const std::string*, std::uint64_t>> sorted;
    sorted.reserve(counters_.entries().size());
    for (const auto& [k, v] : counters_.entries()) sorted.emplace_back(&server_.counter_name(k), v);
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return *a.first < *b.first; });
    w.key("filters").begin_object();
    for (const auto& [name, v] : sorted) w.key(*name).value(v);
    w.end_object();
  }
  w.key("id").value(id_);
  w.key("listener").value(rt_ ? rt_->cfg.name : final_->listener);
  w.key("non_rfc1006").value(non_rfc1006_);
  w.key("parked").value(parked_);
  w.key("parks").value(parks_);
  w.key("passthrough").value(passthrough_entered_);
  w.key("raw").value(to_upstream_.raw || to_client_.raw);
  opt_string("route", route_name_);
  opt_string("source", source_text());
  w.key("started").value(rfc3339_utc(start_unix_ms_));
  w.key("state").value(session_state_name(state()));
  w.key("to_client");
  direction_text_json(w, to_client_.stats, held_bytes(to_client_));
  w.key("to_upstream");
  direction_text_json(w, to_upstream_.stats, held_bytes(to_upstream_));
  opt_number("tpdu_size", size_of(ann_.tpdu_size_code_cc));
  opt_number("tpdu_size_proposed", size_of(ann_.tpdu_size_code_cr));
  opt_string("upstream", upstream_addr_);
  opt_name("upstream_name", upstream_ss_.sa, fin ? &fin->upstream_name : nullptr);
  w.key("upstream_tls");
  tls(io_ ? &io_->upstream : nullptr, fin ? &fin->upstream_tls : nullptr);
  w.end_object();
  return out;
}

std::string Session::tls_json(const tls::Channel* t) {
  std::string out;
  json_text::Writer w(out);
  tls_text_json(w, t);
  return out;
}

std::uint64_t Session::held_bytes(const Flow& f) const {
  if (state_ == SessionState::kClosed) return f.held_at_close;
  return io_ && !f.raw ? framer_of(f).held() : 0;
}

bool Session::matches_tsap(std::string_view text) const {
  // The ASCII text, or the octets in hex (either case), bare or as the close
  // line and the filters write them ("hex:0102": hex only).
  const bool hex_only = text.size() > 4 && (text.substr(0, 4) == "hex:" || text.substr(0, 4) == "HEX:");
  std::string upper(hex_only ? text.substr(4) : text);
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const auto* t : {&ann_.calling_tsap, &ann_.called_tsap}) {
    if (!*t) continue;
    const codec::TsapText tt = codec::tsap_text(**t);
    if (tt.hex == upper || (!hex_only && tt.printable && tt.ascii == text)) return true;
  }
  return false;
}

bool Session::matches_peer(std::string_view text) const {
  auto host_of = [](const std::string& a) {
    const auto colon = a.rfind(':');
    std::string h = colon == std::string::npos ? a : a.substr(0, colon);
    if (h.size() >= 2 && h.front() == '[') h = h.substr(1, h.size() - 2);
    return h;
  };
  const std::string client = client_address();
  return client == text || upstream_addr_ == text || host_of(client) == text || host_of(upstream_addr_) == text;
}

}  // namespace isoproxy
