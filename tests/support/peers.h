// In-process RFC 1006 test peers for integration tests: a threaded TCP
// server that runs a handler per connection, a blocking connection with
// poll-based deadlines, and frame builders on top of the codec.
//
//   TestServer upstream(responder_handler());          // CR -> CC, DT -> echo
//   Conn c = connect_to("127.0.0.1", upstream.port());
//   REQUIRE(c.send_all(make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
//   auto cc = c.recv_frame();                          // one whole TPKT, raw bytes
//
// Header-only; depends on the codec and on support/vectors.h (for the vendor
// frames, which are never copied here). Every wait takes a deadline and
// returns when the event happens; nothing sleeps. Nothing throws on peer
// input: a failed call returns false/nullopt and says why in Conn::error().
// Handlers run on their own threads: they must not use Catch2 assertions
// (not thread-safe); record what they see and let the test thread check it.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "codec/encode.h"
#include "codec/text.h"
#include "codec/tpkt.h"
#include "codec/x224.h"
#include "support/vectors.h"

namespace isoproxy::test {

using ByteVec = std::vector<std::uint8_t>;
using Millis = std::chrono::milliseconds;

inline constexpr Millis kDefaultTimeout{5000};

// ---------------------------------------------------------------------------
// Addresses

// A numeric socket address ("127.0.0.1", "::1", "[::1]") with a port.
struct SockAddr {
  sockaddr_storage storage{};
  socklen_t length = 0;

  int family() const { return storage.ss_family; }
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  sockaddr* get() { return reinterpret_cast<sockaddr*>(&storage); }
};

// Parses a numeric IPv4 or IPv6 address (brackets allowed); nullopt if it is neither.
inline std::optional<SockAddr> make_sockaddr(std::string_view host, std::uint16_t port) {
  std::string h(host);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  SockAddr a;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&a.storage);
  if (inet_pton(AF_INET, h.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    a.length = sizeof(sockaddr_in);
    return a;
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
  if (inet_pton(AF_INET6, h.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    a.length = sizeof(sockaddr_in6);
    return a;
  }
  return std::nullopt;
}

// "127.0.0.1" / "::1" (no port, no brackets); empty for other families.
inline std::string address_ip(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, buf, sizeof buf);
  } else if (sa->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, buf, sizeof buf);
  }
  return buf;
}

inline std::uint16_t address_port(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(sa)->sin_port);
  if (sa->sa_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(sa)->sin6_port);
  return 0;
}

// "127.0.0.1:102" / "[::1]:102".
inline std::string address_text(const sockaddr* sa) {
  const std::string ip = address_ip(sa);
  const std::string port = std::to_string(address_port(sa));
  return sa->sa_family == AF_INET6 ? "[" + ip + "]:" + port : ip + ":" + port;
}

struct HostPort {
  std::string host;  // without brackets
  std::uint16_t port = 0;
};

// Splits "127.0.0.1:1102", "[::1]:0" or "::1:0" (the last colon separates the port).
inline std::optional<HostPort> split_host_port(std::string_view text) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == text.size()) return std::nullopt;
  std::string_view host = text.substr(0, colon);
  const std::string_view port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned long value = 0;
  for (const char c : port) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<unsigned long>(c - '0');
    if (value > 65535) return std::nullopt;
  }
  return HostPort{std::string(host), static_cast<std::uint16_t>(value)};
}

namespace detail {

inline int remaining_ms(std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now()).count();
  if (left <= 0) return 0;
  return left > 1'000'000 ? 1'000'000 : static_cast<int>(left);
}

// Waits for `events` on fd until the deadline: 1 ready, 0 timeout, -1 error.
inline int poll_until(int fd, short events, std::chrono::steady_clock::time_point deadline, short* revents = nullptr) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc < 0 && errno == EINTR) continue;
    // remaining_ms() caps one poll at ~16 minutes; a longer deadline polls again.
    if (rc == 0 && std::chrono::steady_clock::now() < deadline) continue;
    if (revents != nullptr) *revents = p.revents;
    return rc;
  }
}

}  // namespace detail

// Sends every byte of `data` on a blocking or non-blocking socket before the
// deadline, in chunks of random size when `rng` is given (each chunk its own
// send(): with TCP_NODELAY, its own segment). Safe to call from any thread.
inline bool send_raw(int fd, codec::Bytes data, std::chrono::steady_clock::time_point deadline,
                     std::mt19937* rng = nullptr) {
  std::size_t off = 0;
  while (off < data.size()) {
    std::size_t want = data.size() - off;
    if (rng != nullptr) {
      // Mostly tiny chunks (splits inside headers), some medium, a few huge (coalescing).
      const unsigned pick = (*rng)() % 100;
      const std::size_t cap = pick < 50 ? 1 + (*rng)() % 16 : pick < 90 ? 17 + (*rng)() % 4096 : 1 + (*rng)() % 150000;
      want = std::min(want, cap);
    }
    const ssize_t n = ::send(fd, data.data() + off, want, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      off += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      const int left = static_cast<int>(std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now()).count());
      if (left <= 0) return false;
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, left);
      continue;
    }
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Conn: one connected TCP socket, blocking, every wait bounded by poll.

class Conn {
 public:
  Conn() = default;
  explicit Conn(int fd) : fd_(fd) {}
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  Conn(Conn&& o) noexcept { *this = std::move(o); }
  Conn& operator=(Conn&& o) noexcept {
    if (this != &o) {
      close();
      fd_ = std::exchange(o.fd_, -1);
      buf_ = std::move(o.buf_);
      o.buf_.clear();
      error_ = std::move(o.error_);
      eof_ = o.eof_;
      reset_ = o.reset_;
    }
    return *this;
  }
  ~Conn() { close(); }

  // An unconnected Conn that says why it is not connected.
  static Conn failure(std::string why) {
    Conn c;
    c.error_ = std::move(why);
    return c;
  }

  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }
  int fd() const { return fd_; }
  // Why the last call failed: "timeout", "eof", "connection reset", a framer error name, errno text.
  const std::string& error() const { return error_; }
  bool eof_seen() const { return eof_; }      // the peer closed (FIN or RST)
  bool reset_seen() const { return reset_; }  // ...by a reset

  // Sends every byte before the deadline (MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE).
  bool send_all(codec::Bytes data, Millis timeout = kDefaultTimeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::size_t off = 0;
    while (off < data.size()) {
      const ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        off += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        const int rc = detail::poll_until(fd_, POLLOUT, deadline);
        if (rc == 0) return fail("timeout (" + std::to_string(off) + " of " + std::to_string(data.size()) + " bytes sent)");
        if (rc < 0) return fail(std::string("poll: ") + std::strerror(errno));
        continue;
      }
      if (n < 0 && (errno == ECONNRESET || errno == EPIPE)) reset_ = errno == ECONNRESET;
      return fail(std::string("send: ") + std::strerror(errno));
    }
    return true;
  }
  bool send_all(std::string_view text, Millis timeout = kDefaultTimeout) {
    return send_all(codec::Bytes(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()), timeout);
  }

  // Exactly n bytes, or nullopt (timeout, EOF or error; what was read stays buffered).
  std::optional<ByteVec> recv_exact(std::size_t n, Millis timeout = kDefaultTimeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (buf_.size() < n) {
      if (!read_more(buf_, deadline)) return std::nullopt;
    }
    ByteVec out(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(n));
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(n));
    return out;
  }

  // Whatever is buffered or arrives first (1..max bytes), or nullopt (timeout, EOF, error).
  std::optional<ByteVec> recv_some(std::size_t max = 65536, Millis timeout = kDefaultTimeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    if (buf_.empty() && !read_more(buf_, deadline)) return std::nullopt;
    const std::size_t n = std::min(max, buf_.size());
    ByteVec out(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(n));
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(n));
    return out;
  }

  // One whole TPKT (raw bytes, header included), framed by the codec's
  // TpktFramer however the stream was split or coalesced; bytes after it
  // stay buffered for the next call. On timeout or EOF nothing is lost: the
  // partial frame stays buffered. On a framer error (not a TPKT) the bytes
  // stay buffered too (take_buffered()) and error() names the fault.
  std::optional<ByteVec> recv_frame(Millis timeout = kDefaultTimeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    codec::TpktFramer framer;
    ByteVec pending = std::move(buf_);
    buf_.clear();
    for (;;) {
      codec::Bytes in(pending);
      const auto r = framer.next(in);
      if (r.status == codec::TpktFramer::kFrame) {
        ByteVec frame(r.frame.begin(), r.frame.end());
        buf_.assign(in.begin(), in.end());
        return frame;
      }
      if (r.status == codec::TpktFramer::kError) {
        const codec::Bytes held = framer.held_bytes();
        buf_.assign(held.begin(), held.end());
        buf_.insert(buf_.end(), in.begin(), in.end());
        error_ = std::string(codec::framer_error_name(r.error));
        return std::nullopt;
      }
      // kNeedMore: the framer holds everything given so far.
      pending.clear();
      if (!read_more(pending, deadline)) {
        const codec::Bytes held = framer.held_bytes();
        buf_.assign(held.begin(), held.end());
        return std::nullopt;
      }
    }
  }

  // True once the peer has closed (FIN or RST; reset_seen() tells which).
  // Bytes that arrive meanwhile are kept (buffered()/take_buffered()).
  bool wait_eof(Millis timeout = kDefaultTimeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!eof_) {
      if (!read_more(buf_, deadline) && !eof_) return false;
    }
    return true;
  }

  std::size_t buffered() const { return buf_.size(); }
  ByteVec take_buffered() { return std::exchange(buf_, {}); }

  void shutdown_write() {
    if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
  }
  // Closes with an RST instead of a FIN (SO_LINGER 0).
  void close_with_reset() {
    if (fd_ < 0) return;
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close();
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  bool set_rcvbuf(int bytes) { return ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes) == 0; }
  bool set_sndbuf(int bytes) { return ::setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes) == 0; }
  bool set_nodelay(bool on = true) {
    const int v = on ? 1 : 0;
    return ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &v, sizeof v) == 0;
  }

  // "127.0.0.1:40123" / "[::1]:40123"; empty if unknown.
  std::string peer_address() const { return name(false, true); }
  std::string local_address() const { return name(true, true); }
  // The IP alone ("127.0.0.2"), e.g. to check the source address a proxy used.
  std::string peer_ip() const { return name(false, false); }
  std::string local_ip() const { return name(true, false); }
  std::uint16_t local_port() const {
    SockAddr a;
    a.length = sizeof a.storage;
    if (fd_ < 0 || ::getsockname(fd_, a.get(), &a.length) != 0) return 0;
    return address_port(a.get());
  }

 private:
  bool fail(std::string why) {
    error_ = std::move(why);
    return false;
  }

  // Appends what one recv returns; false on timeout, EOF or error (error_ says which).
  bool read_more(ByteVec& into, std::chrono::steady_clock::time_point deadline) {
    if (fd_ < 0) return fail("not connected");
    if (eof_) return fail(reset_ ? "connection reset" : "eof");
    for (;;) {
      const int rc = detail::poll_until(fd_, POLLIN, deadline);
      if (rc == 0) return fail("timeout");
      if (rc < 0) return fail(std::string("poll: ") + std::strerror(errno));
      std::uint8_t chunk[65536];
      const ssize_t n = ::recv(fd_, chunk, sizeof chunk, MSG_DONTWAIT);
      if (n > 0) {
        into.insert(into.end(), chunk, chunk + n);
        return true;
      }
      if (n == 0) {
        eof_ = true;
        return fail("eof");
      }
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      eof_ = true;
      reset_ = errno == ECONNRESET;
      return fail(reset_ ? "connection reset" : std::string("recv: ") + std::strerror(errno));
    }
  }

  std::string name(bool local, bool with_port) const {
    SockAddr a;
    a.length = sizeof a.storage;
    if (fd_ < 0) return {};
    const int rc = local ? ::getsockname(fd_, a.get(), &a.length) : ::getpeername(fd_, a.get(), &a.length);
    if (rc != 0) return {};
    return with_port ? address_text(a.get()) : address_ip(a.get());
  }

  int fd_ = -1;
  ByteVec buf_;  // read from the socket, not yet returned
  std::string error_;
  bool eof_ = false;
  bool reset_ = false;
};

// Connects to addr:port before the deadline, optionally from a fixed local
// address (port 0). On failure the Conn is invalid and error() says why.
inline Conn connect_to(const std::string& addr, std::uint16_t port, Millis timeout = kDefaultTimeout,
                       const std::string& local_bind = {}) {
  const auto target = make_sockaddr(addr, port);
  if (!target) return Conn::failure("not a numeric IP address: " + addr);
  const int fd = ::socket(target->family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Conn::failure(std::string("socket: ") + std::strerror(errno));
  Conn conn(fd);
  if (!local_bind.empty()) {
    const auto local = make_sockaddr(local_bind, 0);
    if (!local || local->family() != target->family()) {
      return Conn::failure("local address " + local_bind + " does not fit " + addr);
    }
    if (::bind(fd, local->get(), local->length) != 0) {
      return Conn::failure("bind " + local_bind + ": " + std::strerror(errno));
    }
  }
  const std::string where = address_text(target->get());
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  if (::connect(fd, target->get(), target->length) != 0) {
    if (errno != EINPROGRESS) return Conn::failure("connect " + where + ": " + std::strerror(errno));
    const int rc = detail::poll_until(fd, POLLOUT, deadline);
    if (rc == 0) return Conn::failure("connect " + where + ": timeout");
    if (rc < 0) return Conn::failure(std::string("poll: ") + std::strerror(errno));
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) return Conn::failure("connect " + where + ": " + std::strerror(err));
  }
  // Back to blocking: every Conn call bounds its own waits with poll.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return conn;
}

// ---------------------------------------------------------------------------
// Frame builders (protocol.md §2.3; encoded by the codec, LI and TPKT length computed)

// Octets waiting in the receive queue of this host's IPv4 TCP socket with
// local port `local` and remote port `remote` (/proc/net/tcp), or -1 when
// there is none: 0 once a process has read all a peer sent it.
inline long rx_queue(std::uint16_t local, std::uint16_t remote) {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);  // the header
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string slot, local_addr, remote_addr, state, queues;
    f >> slot >> local_addr >> remote_addr >> state >> queues;
    const auto port = [](const std::string& a) { return std::stoul(a.substr(a.find(':') + 1), nullptr, 16); };
    if (port(local_addr) == local && port(remote_addr) == remote) {
      return std::stol(queues.substr(queues.find(':') + 1), nullptr, 16);
    }
  }
  return -1;
}

inline ByteVec ascii(std::string_view s) { return ByteVec(s.begin(), s.end()); }

namespace detail {

inline ByteVec encode_or_throw(std::uint8_t reserved, const codec::OwnedTpdu& t) {
  auto r = codec::encode_frame(reserved, t);
  // Only a caller's oversized TSAP or payload gets here: a test bug, not peer input.
  if (!r) throw std::length_error("cannot encode TPDU: " + r.error().message);
  return std::move(*r);
}

inline void push16(std::vector<std::uint8_t>& v, std::uint16_t x) {
  v.push_back(static_cast<std::uint8_t>(x >> 8));
  v.push_back(static_cast<std::uint8_t>(x & 0xFF));
}

// CR/CC with parameters in the order the vendor MTA writes them: C1, C2, C0.
inline ByteVec connect_tpdu(std::uint8_t code, codec::Bytes calling, codec::Bytes called, std::uint8_t size_code,
                            std::uint16_t dst_ref, std::uint16_t src_ref, std::uint8_t reserved) {
  codec::OwnedTpdu t;
  t.code = code;
  push16(t.fixed, dst_ref);
  push16(t.fixed, src_ref);
  t.fixed.push_back(0x00);  // class 0, no options (protocol.md §2.4)
  t.params.push_back({codec::param::kCallingTsap, {calling.begin(), calling.end()}});
  t.params.push_back({codec::param::kCalledTsap, {called.begin(), called.end()}});
  t.params.push_back({codec::param::kTpduSize, {size_code}});
  return encode_or_throw(reserved, t);
}

}  // namespace detail

// A class 0 CR. The default SRC-REF is the one the vendor CC (V1) answers, so
// a responder with SRC-REF 0x0029 and reserved 0x11 reproduces V1 exactly.
inline ByteVec make_cr(codec::Bytes calling, codec::Bytes called, std::uint8_t size_code = 0x0B,
                       std::uint16_t src_ref = 0x01CA, std::uint8_t reserved = 0x00) {
  return detail::connect_tpdu(0xE0, calling, called, size_code, 0x0000, src_ref, reserved);
}
inline ByteVec make_cr(std::string_view calling, std::string_view called, std::uint8_t size_code = 0x0B,
                       std::uint16_t src_ref = 0x01CA, std::uint8_t reserved = 0x00) {
  return make_cr(codec::Bytes(ascii(calling)), codec::Bytes(ascii(called)), size_code, src_ref, reserved);
}

// A class 0 CC; TSAPs echoed under the same codes, not swapped (protocol.md §3.2).
inline ByteVec make_cc(codec::Bytes calling, codec::Bytes called, std::uint8_t size_code = 0x0B,
                       std::uint16_t dst_ref = 0x01CA, std::uint16_t src_ref = 0x0029, std::uint8_t reserved = 0x00) {
  return detail::connect_tpdu(0xD0, calling, called, size_code, dst_ref, src_ref, reserved);
}
inline ByteVec make_cc(std::string_view calling, std::string_view called, std::uint8_t size_code = 0x0B,
                       std::uint16_t dst_ref = 0x01CA, std::uint16_t src_ref = 0x0029, std::uint8_t reserved = 0x00) {
  return make_cc(codec::Bytes(ascii(calling)), codec::Bytes(ascii(called)), size_code, dst_ref, src_ref, reserved);
}

// The CC a responder like the vendor MTA of KB Q151626 answers `cr` with:
// DST-REF = the CR's SRC-REF, its own SRC-REF, class 0, the CR's TSAPs and
// TPDU size echoed in the CR's parameter order (other parameters dropped);
// without `echo_tsaps` only the TPDU size is echoed.
inline ByteVec make_cc_reply(const codec::Tpdu& cr, std::uint16_t src_ref, std::uint8_t reserved,
                             bool echo_tsaps = true) {
  codec::OwnedTpdu t;
  t.code = 0xD0;
  detail::push16(t.fixed, cr.src_ref.value_or(0));
  detail::push16(t.fixed, src_ref);
  t.fixed.push_back(0x00);
  for (const codec::Param& p : cr.params) {
    const bool tsap = p.code == codec::param::kCallingTsap || p.code == codec::param::kCalledTsap;
    if (p.code == codec::param::kTpduSize || (tsap && echo_tsaps)) {
      t.params.push_back({p.code, {p.value.begin(), p.value.end()}});
    }
  }
  return detail::encode_or_throw(reserved, t);
}

// A class 0 DT: LI 2, F0, EOT bit (protocol.md §2.3).
inline ByteVec make_dt(codec::Bytes payload, bool eot = true, std::uint8_t reserved = 0x00) {
  codec::OwnedTpdu t;
  t.code = 0xF0;
  t.fixed.push_back(eot ? 0x80 : 0x00);
  t.data.assign(payload.begin(), payload.end());
  return detail::encode_or_throw(reserved, t);
}
inline ByteVec make_dt(std::string_view payload, bool eot = true, std::uint8_t reserved = 0x00) {
  return make_dt(codec::Bytes(ascii(payload)), eot, reserved);
}

// A DR (reason per protocol.md §4; 0x80 = normal disconnect).
inline ByteVec make_dr(std::uint8_t reason, std::uint16_t dst_ref = 0x0000, std::uint16_t src_ref = 0x0000,
                       std::uint8_t reserved = 0x00) {
  codec::OwnedTpdu t;
  t.code = 0x80;
  detail::push16(t.fixed, dst_ref);
  detail::push16(t.fixed, src_ref);
  t.fixed.push_back(reason);
  return detail::encode_or_throw(reserved, t);
}

// The shared vectors, read once (throws if the file is missing or malformed).
inline const std::vector<Vector>& shared_vectors() {
  static const std::vector<Vector> rows = load_vectors();
  return rows;
}
inline ByteVec vector_bytes(std::string_view id) { return find_vector(shared_vectors(), id).bytes(); }
// The vendor MTA's CC with reserved 0x11 (V1, KB Q151626) and its repaired form (V2).
inline ByteVec vendor_cc() { return vector_bytes("V1"); }
inline ByteVec vendor_cc_repaired() { return vector_bytes("V2"); }

// ---------------------------------------------------------------------------
// FrameLog: what a handler saw, for the test thread to check.

class FrameLog {
 public:
  void add(ByteVec frame) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      frames_.push_back(std::move(frame));
    }
    cv_.notify_all();
  }
  std::vector<ByteVec> frames() const {
    std::lock_guard<std::mutex> lk(mu_);
    return frames_;
  }
  std::size_t size() const {
    std::lock_guard<std::mutex> lk(mu_);
    return frames_.size();
  }
  bool wait_size(std::size_t n, Millis timeout = kDefaultTimeout) const {
    std::unique_lock<std::mutex> lk(mu_);
    return cv_.wait_for(lk, timeout, [&] { return frames_.size() >= n; });
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<ByteVec> frames_;
};

// ---------------------------------------------------------------------------
// TestServer: accepts on a background thread, one handler thread per connection.

class TestServer {
 public:
  using Handler = std::function<void(Conn&)>;

  // Listens on address:port (port 0 = ephemeral). Check ok() (e.g. ::1 may be absent).
  explicit TestServer(Handler handler, std::string address = "127.0.0.1", std::uint16_t port = 0)
      : handler_(std::move(handler)), address_(std::move(address)) {
    const auto sa = make_sockaddr(address_, port);
    if (!sa) {
      error_ = "not a numeric IP address: " + address_;
      return;
    }
    listen_fd_ = ::socket(sa->family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    const int one = 1;
    if (listen_fd_ < 0 || wake_fd_ < 0 || ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        ::bind(listen_fd_, sa->get(), sa->length) != 0 || ::listen(listen_fd_, 128) != 0) {
      error_ = "listen on " + address_text(sa->get()) + ": " + std::strerror(errno);
      return;
    }
    SockAddr bound;
    bound.length = sizeof bound.storage;
    ::getsockname(listen_fd_, bound.get(), &bound.length);
    port_ = address_port(bound.get());
    accept_thread_ = std::thread([this] { accept_loop(); });
  }
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;
  ~TestServer() { stop(); }

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  const std::string& address() const { return address_; }
  std::uint16_t port() const { return port_; }

  std::size_t accepted_count() const {
    std::lock_guard<std::mutex> lk(mu_);
    return peers_.size();
  }
  bool wait_accepted(std::size_t n, Millis timeout = kDefaultTimeout) const {
    std::unique_lock<std::mutex> lk(mu_);
    return cv_.wait_for(lk, timeout, [&] { return peers_.size() >= n; });
  }
  // Handlers that have returned (their connection closed).
  std::size_t finished_count() const {
    std::lock_guard<std::mutex> lk(mu_);
    return finished_;
  }
  bool wait_finished(std::size_t n, Millis timeout = kDefaultTimeout) const {
    std::unique_lock<std::mutex> lk(mu_);
    return cv_.wait_for(lk, timeout, [&] { return finished_ >= n; });
  }
  // Every accepted peer in order: "127.0.0.2:51234" / "[::1]:51234".
  std::vector<std::string> peer_addresses() const {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<std::string> out;
    for (const auto& p : peers_) out.push_back(p.text);
    return out;
  }
  // The same, IPs only: the source address the proxy connected from.
  std::vector<std::string> peer_ips() const {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<std::string> out;
    for (const auto& p : peers_) out.push_back(p.ip);
    return out;
  }
  // What escaped a handler (an exception's what()); empty when all went well.
  std::vector<std::string> handler_errors() const {
    std::lock_guard<std::mutex> lk(mu_);
    return errors_;
  }

  // Stops accepting, shuts every live connection down (handlers see EOF) and
  // joins every thread. Idempotent; the destructor calls it.
  void stop() {
    if (stopped_.exchange(true)) return;
    if (accept_thread_.joinable()) {
      const std::uint64_t one = 1;
      [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof one);
      accept_thread_.join();
    }
    {
      // Under the lock so that no fd here is closed (and reused) meanwhile.
      std::lock_guard<std::mutex> lk(mu_);
      for (const int fd : live_fds_) ::shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : handler_threads_) t.join();  // only the joined accept thread added to it
    handler_threads_.clear();
    if (listen_fd_ >= 0) ::close(listen_fd_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
    listen_fd_ = wake_fd_ = -1;
  }

 private:
  struct Peer {
    std::string text;
    std::string ip;
  };

  void accept_loop() {
    for (;;) {
      pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[1].revents != 0) return;
      if ((fds[0].revents & POLLIN) == 0) continue;
      SockAddr peer;
      peer.length = sizeof peer.storage;
      const int fd = ::accept4(listen_fd_, peer.get(), &peer.length, SOCK_CLOEXEC);
      if (fd < 0) continue;  // ECONNABORTED and friends: the next one may be fine
      {
        std::lock_guard<std::mutex> lk(mu_);
        peers_.push_back({address_text(peer.get()), address_ip(peer.get())});
        live_fds_.insert(fd);
      }
      cv_.notify_all();
      handler_threads_.emplace_back([this, fd] { run_handler(fd); });
    }
  }

  void run_handler(int fd) {
    Conn conn(fd);
    std::string failure;
    try {
      if (handler_) handler_(conn);
    } catch (const std::exception& e) {
      failure = e.what();
    } catch (...) {
      failure = "unknown exception";
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      live_fds_.erase(fd);
      conn.close();  // still under the lock: stop() never shuts down a reused fd
      if (!failure.empty()) errors_.push_back(std::move(failure));
      ++finished_;
    }
    cv_.notify_all();
  }

  Handler handler_;
  std::string address_;
  std::string error_;
  std::uint16_t port_ = 0;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  std::atomic<bool> stopped_{false};
  std::thread accept_thread_;
  std::vector<std::thread> handler_threads_;  // touched by the accept thread, then by stop()

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<Peer> peers_;
  std::set<int> live_fds_;
  std::vector<std::string> errors_;
  std::size_t finished_ = 0;
};

// ---------------------------------------------------------------------------
// Ready-made handlers

// Echoes raw bytes until the peer closes, then half-closes its side too.
inline TestServer::Handler echo_handler() {
  return [](Conn& c) {
    for (;;) {
      auto chunk = c.recv_some(65536, Millis(std::chrono::hours(1)));
      if (!chunk || !c.send_all(codec::Bytes(*chunk))) break;
    }
    c.shutdown_write();
  };
}

struct ResponderConfig {
  std::uint8_t reserved = 0x11;  // TPKT reserved byte of the CC (the vendor MTA writes 0x11)
  std::uint16_t src_ref = 0x0029;
  bool echo_tsaps = true;
  FrameLog* log = nullptr;       // every frame received, raw, if set
};

// The vendor MTA of KB Q151626 in-process: a CR gets make_cc_reply(), each
// DT is echoed unchanged, a DR (or EOF, or a bad frame) ends the connection.
inline TestServer::Handler responder_handler(ResponderConfig cfg = {}) {
  return [cfg](Conn& c) {
    for (;;) {
      auto frame = c.recv_frame(Millis(std::chrono::hours(1)));
      if (!frame) return;
      if (cfg.log != nullptr) cfg.log->add(*frame);
      auto decoded = codec::decode_frame(codec::Bytes(*frame));
      if (!decoded) return;
      switch (decoded->tpdu.type) {
        case codec::TpduType::kCR:
          if (!c.send_all(codec::Bytes(make_cc_reply(decoded->tpdu, cfg.src_ref, cfg.reserved, cfg.echo_tsaps)))) return;
          break;
        case codec::TpduType::kDT:
          if (!c.send_all(codec::Bytes(*frame))) return;
          break;
        case codec::TpduType::kDR:
          return;
        default:
          break;
      }
    }
  };
}

}  // namespace isoproxy::test
