// rfc1006-peer: the two ends of an RFC 1006 session, for isoproxy's
// integration tests and the README demo.
//
//   respond  a responder that behaves like the vendor MTA of MS KB Q151626:
//            CR -> CC with the TPKT reserved byte set to 0x11 (configurable),
//            every DT echoed unchanged, DR -> close.
//   connect  an initiator: CR, CC (or DR), one TSDU of DTs, its echo checked
//            byte for byte. --strict refuses a non-zero reserved byte the way
//            libiec61850 does (protocol.md §6.2).
//
// Event lines go to stdout, flushed per line, so a script or test can follow
// them; errors go to stderr. Exit codes are listed in kExit* below.
//
// Stand-alone build, from the repository root (one line):
//   g++ -std=c++20 -O2 -Wall -Wextra -Wpedantic -Wshadow -Wno-restrict -Iproxy -Itests tests/peers/rfc1006_peer.cpp proxy/codec/*.cpp -o rfc1006-peer -pthread
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "codec/text.h"
#include "codec/tpkt.h"
#include "codec/x224.h"
#include "support/peers.h"

namespace {

using isoproxy::test::ByteVec;
namespace codec = isoproxy::codec;
namespace test = isoproxy::test;
using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

constexpr int kExitOk = 0;
constexpr int kExitConnection = 2;   // timeout, refused/reset connection, closed early, not a TPKT stream
constexpr int kExitStrictRefused = 3;  // --strict: a TPKT with a non-zero reserved byte arrived
constexpr int kExitDisconnected = 4;   // the responder answered with a DR
constexpr int kExitBadAnswer = 5;      // the echo differs, or a TPDU that has no place here arrived
constexpr int kExitUsage = 64;         // bad command line (sysexits EX_USAGE; 2 is taken)

constexpr std::size_t kReadChunk = 65536;
// The responder stops reading a connection whose echo queue is this full
// (its peer does not read): backpressure, not an ever-growing heap.
constexpr std::size_t kMaxQueued = 1 << 20;
constexpr std::size_t kMaxDataSize = 64u << 20;

void say(const std::string& line) { std::cout << line << '\n' << std::flush; }
void complain(const std::string& line) { std::cerr << "rfc1006-peer: " << line << '\n' << std::flush; }

std::string hex8(unsigned v) {
  char b[8];
  std::snprintf(b, sizeof b, "0x%02X", v & 0xFFu);
  return b;
}
std::string hex16(unsigned v) {
  char b[8];
  std::snprintf(b, sizeof b, "0x%04X", v & 0xFFFFu);
  return b;
}

std::string tsap_field(const std::optional<codec::Bytes>& t) {
  if (!t) return "-";
  return codec::tsap_text(*t).display();
}

std::string tpdu_size_field(const codec::Tpdu& t) {
  const auto code = t.tpdu_size_code();
  if (!code) return "-";
  const auto octets = codec::tpdu_size_octets(*code);
  return octets ? std::to_string(*octets) : "code-" + hex8(*code);
}

std::string dr_text(const codec::Tpdu& t) {
  const std::uint8_t r = t.reason.value_or(0);
  const auto name = codec::dr_reason_name(r);
  return "DR reason=" + hex8(r) + " (" + std::string(name ? *name : "undefined reason") + ")";
}

std::string errno_text() { return std::strerror(errno); }

// "5s", "500ms", "1.5s", "2m", "3" (seconds).
std::optional<Millis> parse_duration(std::string_view s) {
  std::size_t i = 0;
  double value = 0;
  bool digits = false;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    value = value * 10 + (s[i++] - '0');
    digits = true;
  }
  if (i < s.size() && s[i] == '.') {
    double scale = 0.1;
    for (++i; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i, scale /= 10) {
      value += (s[i] - '0') * scale;
      digits = true;
    }
  }
  if (!digits) return std::nullopt;
  const std::string_view unit = s.substr(i);
  double ms = 0;
  if (unit.empty() || unit == "s") ms = value * 1000;
  else if (unit == "ms") ms = value;
  else if (unit == "m") ms = value * 60000;
  else return std::nullopt;
  if (ms < 1 || ms > 24.0 * 3600 * 1000) return std::nullopt;
  return Millis(static_cast<std::int64_t>(ms));
}

// ASCII, or "hex:0102" for binary selectors (S7, MMS).
std::optional<ByteVec> parse_tsap(const std::string& text, std::string& why) {
  ByteVec out;
  if (text.rfind("hex:", 0) == 0) {
    auto parsed = codec::parse_hex(std::string_view(text).substr(4));
    if (!parsed) {
      why = parsed.error().message;
      return std::nullopt;
    }
    out = std::move(*parsed);
  } else {
    out = test::ascii(text);
  }
  // Wireshark shows at most 32; a CR may not exceed 128 octets (RFC 905 §13.3).
  if (out.empty() || out.size() > 32) {
    why = "a TSAP has 1 to 32 octets, this one " + std::to_string(out.size());
    return std::nullopt;
  }
  return out;
}

std::optional<test::SockAddr> resolve(const std::string& host_port, std::string& why) {
  const auto hp = test::split_host_port(host_port);
  if (!hp) {
    why = "expected ADDRESS:PORT (IPv6 as [::1]:PORT), got \"" + host_port + "\"";
    return std::nullopt;
  }
  auto sa = test::make_sockaddr(hp->host, hp->port);
  if (!sa) why = "not a numeric IPv4 or IPv6 address: \"" + hp->host + "\"";
  return sa;
}

std::string sock_name(int fd, bool local) {
  test::SockAddr a;
  a.length = sizeof a.storage;
  const int rc = local ? ::getsockname(fd, a.get(), &a.length) : ::getpeername(fd, a.get(), &a.length);
  return rc == 0 ? test::address_text(a.get()) : "?";
}

// ===========================================================================
// respond

struct RespondOptions {
  std::string listen;
  int reserved = 0x11;
  int src_ref = 0x0029;
  bool tsaps_echo = true;
  bool once = false;
};

class Responder {
 public:
  explicit Responder(const RespondOptions& o) : opts_(o) {}

  int run() {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    signal_fd_ = ::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (signal_fd_ < 0) {
      complain("signalfd: " + errno_text());
      return kExitConnection;
    }
    if (!listen()) return kExitConnection;

    for (;;) {
      std::vector<pollfd> fds;
      fds.push_back({signal_fd_, POLLIN, 0});
      fds.push_back({listen_fd_, POLLIN, 0});  // -1 once --once has its connection
      for (const auto& c : clients_) {
        short ev = 0;
        if (!c->read_eof && c->queued() < kMaxQueued) ev |= POLLIN;
        if (c->queued() > 0) ev |= POLLOUT;
        fds.push_back({c->fd, ev, 0});
      }
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        complain("poll: " + errno_text());
        return kExitConnection;
      }
      if (fds[0].revents & POLLIN) {
        signalfd_siginfo si{};
        [[maybe_unused]] const ssize_t n = ::read(signal_fd_, &si, sizeof si);
        say(std::string("stopping on ") + (si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM"));
        for (auto& c : clients_) close_client(*c, "shutdown");
        return kExitOk;
      }
      if (listen_fd_ >= 0 && (fds[1].revents & POLLIN)) accept_all();
      // clients_ only grew since fds was built: the first entries line up.
      for (std::size_t i = 0; i + 2 < fds.size(); ++i) {
        Client& c = *clients_[i];
        if (c.fd < 0) continue;
        const short re = fds[i + 2].revents;
        if (re & (POLLOUT | ((c.read_eof ? POLLHUP | POLLERR : 0)))) flush(c);  // a dead peer fails the send
        if (c.fd >= 0 && !c.read_eof && (re & (POLLIN | POLLHUP | POLLERR))) on_readable(c);
      }
      std::erase_if(clients_, [](const std::unique_ptr<Client>& c) { return c->fd < 0; });
      if (opts_.once && accepted_ > 0 && clients_.empty()) return kExitOk;
    }
  }

 private:
  struct Client {
    int fd = -1;
    unsigned id = 0;
    codec::TpktFramer framer;
    ByteVec out;
    std::size_t out_off = 0;
    bool read_eof = false;
    bool close_after_flush = false;
    std::string close_why;
    std::size_t queued() const { return out.size() - out_off; }
  };

  std::string tag(const Client& c) const { return "[C" + std::to_string(c.id) + "] "; }

  bool listen() {
    std::string why;
    const auto sa = resolve(opts_.listen, why);
    if (!sa) {
      complain("--listen: " + why);
      return false;
    }
    listen_fd_ = ::socket(sa->family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const int one = 1;
    if (listen_fd_ < 0 || ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        ::bind(listen_fd_, sa->get(), sa->length) != 0 || ::listen(listen_fd_, 128) != 0) {
      complain("cannot listen on " + test::address_text(sa->get()) + ": " + errno_text());
      return false;
    }
    say("listening on " + sock_name(listen_fd_, true));
    return true;
  }

  void accept_all() {
    for (;;) {
      test::SockAddr peer;
      peer.length = sizeof peer.storage;
      const int fd = ::accept4(listen_fd_, peer.get(), &peer.length, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
          complain("accept: " + errno_text());
        }
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;
      }
      auto c = std::make_unique<Client>();
      c->fd = fd;
      c->id = ++accepted_;
      say(tag(*c) + "accepted from " + test::address_text(peer.get()));
      clients_.push_back(std::move(c));
      if (opts_.once) {
        // One connection only: later ones are refused, not queued.
        ::close(listen_fd_);
        listen_fd_ = -1;
        return;
      }
    }
  }

  void on_readable(Client& c) {
    std::uint8_t buf[kReadChunk];
    const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      close_client(c, errno == ECONNRESET ? "reset by peer" : "recv: " + errno_text());
      return;
    }
    if (n == 0) {
      c.read_eof = true;
      const std::string why = c.framer.held() > 0 ? "peer EOF mid-frame" : "peer EOF";
      if (c.queued() == 0) close_client(c, why);
      else finish_after_flush(c, why);
      return;
    }
    codec::Bytes in(buf, static_cast<std::size_t>(n));
    for (;;) {
      const auto r = c.framer.next(in);
      if (r.status == codec::TpktFramer::kNeedMore) return;
      if (r.status == codec::TpktFramer::kError) {
        say(tag(c) + "bad TPKT: " + std::string(codec::framer_error_name(r.error)));
        close_client(c, "not a TPKT stream");
        return;
      }
      if (!on_frame(c, r.frame) || c.fd < 0) return;
    }
  }

  // False when the connection is to end (after what is queued is sent).
  bool on_frame(Client& c, codec::Bytes frame) {
    auto d = codec::decode_frame(frame);
    if (!d) {
      say(tag(c) + "bad TPDU: " + std::string(codec::decode_error_name(d.error().kind)) + " " + d.error().detail);
      close_client(c, "bad TPDU");
      return false;
    }
    const codec::Tpdu& t = d->tpdu;
    switch (t.type) {
      case codec::TpduType::kCR: {
        say(tag(c) + "CR calling=" + tsap_field(t.calling_tsap()) + " called=" + tsap_field(t.called_tsap()) +
            " tpdu_size=" + tpdu_size_field(t) + " src_ref=" + hex16(t.src_ref.value_or(0)));
        const ByteVec cc = test::make_cc_reply(t, static_cast<std::uint16_t>(opts_.src_ref),
                                               static_cast<std::uint8_t>(opts_.reserved), opts_.tsaps_echo);
        queue(c, cc);
        say(tag(c) + "sent CC reserved=" + hex8(static_cast<unsigned>(opts_.reserved)));
        return true;
      }
      case codec::TpduType::kDT:
        queue(c, frame);  // unchanged, reserved byte included
        say(tag(c) + "echoed DT " + std::to_string(t.user_data.size()) + " bytes" + (t.eot.value_or(false) ? "" : " (no EOT)"));
        return true;
      case codec::TpduType::kDR:
        say(tag(c) + dr_text(t));
        finish_after_flush(c, "DR");
        return false;
      default:
        say(tag(c) + "ignored " + std::string(codec::tpdu_type_name(t.type)));
        return true;
    }
  }

  void queue(Client& c, codec::Bytes bytes) {
    c.out.insert(c.out.end(), bytes.begin(), bytes.end());
    flush(c);
  }

  void flush(Client& c) {
    while (c.fd >= 0 && c.queued() > 0) {
      const ssize_t n = ::send(c.fd, c.out.data() + c.out_off, c.queued(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        close_client(c, errno == ECONNRESET || errno == EPIPE ? "reset by peer" : "send: " + errno_text());
        return;
      }
      c.out_off += static_cast<std::size_t>(n);
    }
    if (c.fd < 0) return;
    c.out.clear();
    c.out_off = 0;
    if (c.close_after_flush) close_client(c, c.close_why);
  }

  void finish_after_flush(Client& c, std::string why) {
    c.close_after_flush = true;
    c.read_eof = true;  // nothing more is read from a connection being closed
    c.close_why = std::move(why);
    flush(c);
  }

  void close_client(Client& c, const std::string& why) {
    if (c.fd < 0) return;
    ::close(c.fd);
    c.fd = -1;
    say(tag(c) + "closed (" + why + ")");
  }

  RespondOptions opts_;
  int signal_fd_ = -1;
  int listen_fd_ = -1;
  unsigned accepted_ = 0;
  std::vector<std::unique_ptr<Client>> clients_;
};

// ===========================================================================
// connect

struct ConnectOptions {
  std::string to;
  std::string calling = "SWISSLIFETSAP";
  std::string called = "EXCHANGETSAP1";
  bool strict = false;
  std::string data_hex;
  std::size_t data_size = 0;
  bool data_size_given = false;  // --data-size 0 sends an empty EOT DT
  std::string timeout = "5s";
};

// What ended the exchange early, with its exit code.
struct Failure {
  int code;
  std::string message;
};

class Initiator {
 public:
  Initiator(const ConnectOptions& o, Millis idle) : opts_(o), idle_(idle) {}
  ~Initiator() {
    if (fd_ >= 0) ::close(fd_);
  }

  int run(const test::SockAddr& target, const ByteVec& calling, const ByteVec& called, const ByteVec& data) {
    if (auto f = connect(target)) return report(*f);
    say("connected to " + sock_name(fd_, false) + " from " + sock_name(fd_, true));

    // CR: class 0, TPDU size 2048 (0x0B, the largest class 0 allows).
    queue(test::make_cr(codec::Bytes(calling), codec::Bytes(called), 0x0B));
    say("sent CR calling=" + codec::tsap_text(calling).display() + " called=" + codec::tsap_text(called).display() +
        " tpdu_size=2048");

    ByteVec frame;
    if (auto f = next_frame(frame)) return report(*f);
    auto d = codec::decode_frame(codec::Bytes(frame));
    if (!d) return report({kExitBadAnswer, "undecodable answer to the CR: " + d.error().detail});
    if (auto f = strict_check(frame, d->tpdu)) return report(*f);
    const codec::Tpdu& cc = d->tpdu;
    if (cc.type == codec::TpduType::kDR) return disconnected(cc);
    if (cc.type != codec::TpduType::kCC) {
      return report({kExitBadAnswer, "expected a CC or DR, got " + std::string(codec::tpdu_type_name(cc.type))});
    }
    say("CC reserved=" + hex8(frame[1]) + " calling=" + tsap_field(cc.calling_tsap()) +
        " called=" + tsap_field(cc.called_tsap()) + " tpdu_size=" + tpdu_size_field(cc) +
        " dst_ref=" + hex16(cc.dst_ref.value_or(0)) + " src_ref=" + hex16(cc.src_ref.value_or(0)));

    // One TSDU in DTs no larger than the negotiated size; RFC 1006 §5:
    // without the parameter the maximum is 65531.
    std::size_t size = codec::kTpktMaxLength - codec::kTpktHeaderSize;
    if (const auto code = cc.tpdu_size_code()) {
      if (const auto octets = codec::tpdu_size_octets(*code)) size = std::min<std::size_t>(*octets, size);
    }
    const std::size_t per_dt = size - 3;  // the class 0 DT header
    std::size_t dts = 0;
    std::size_t off = 0;
    do {
      const std::size_t n = std::min(per_dt, data.size() - off);
      const bool last = off + n == data.size();
      queue(test::make_dt(codec::Bytes(data).subspan(off, n), last));
      off += n;
      ++dts;
    } while (off < data.size());
    say("sent " + std::to_string(data.size()) + " bytes in " + std::to_string(dts) + " DT" + (dts == 1 ? "" : "s"));

    ByteVec echo;
    for (;;) {
      if (auto f = next_frame(frame)) return report(*f);
      auto e = codec::decode_frame(codec::Bytes(frame));
      if (!e) return report({kExitBadAnswer, "undecodable frame in the echo: " + e.error().detail});
      if (auto f = strict_check(frame, e->tpdu)) return report(*f);
      if (e->tpdu.type == codec::TpduType::kDR) return disconnected(e->tpdu);
      if (e->tpdu.type != codec::TpduType::kDT) {
        return report({kExitBadAnswer, "expected the DT echo, got " + std::string(codec::tpdu_type_name(e->tpdu.type))});
      }
      echo.insert(echo.end(), e->tpdu.user_data.begin(), e->tpdu.user_data.end());
      if (e->tpdu.eot.value_or(false)) break;
      if (echo.size() > data.size()) break;
    }
    if (echo != data) {
      std::size_t at = 0;
      while (at < echo.size() && at < data.size() && echo[at] == data[at]) ++at;
      return report({kExitBadAnswer, "echo differs: sent " + std::to_string(data.size()) + " bytes, got " +
                                         std::to_string(echo.size()) + ", first difference at offset " + std::to_string(at)});
    }
    ::close(fd_);
    fd_ = -1;
    say("DT echoed ok (" + std::to_string(data.size()) + " bytes)");
    return kExitOk;
  }

 private:
  int report(const Failure& f) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!f.message.empty()) complain(f.message);
    return f.code;
  }

  int disconnected(const codec::Tpdu& dr) {
    ::close(fd_);
    fd_ = -1;
    say("disconnected: " + dr_text(dr));
    return kExitDisconnected;
  }

  // libiec61850 (CotpConnection_readToTpktBuffer) refuses any TPKT whose
  // byte 1 is not 0 and closes the connection; --strict does the same.
  std::optional<Failure> strict_check(const ByteVec& frame, const codec::Tpdu& t) {
    if (!opts_.strict || frame[1] == 0) return std::nullopt;
    ::close(fd_);
    fd_ = -1;
    say("refused: TPKT reserved byte " + hex8(frame[1]) + " in " + std::string(codec::tpdu_type_name(t.type)) +
        " (strict peer disconnects)");
    // Said on stdout only: the outcome the demo shows, not a tool error.
    return Failure{kExitStrictRefused, {}};
  }

  std::optional<Failure> connect(const test::SockAddr& target) {
    const std::string where = test::address_text(target.get());
    fd_ = ::socket(target.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return Failure{kExitConnection, "socket: " + errno_text()};
    if (::connect(fd_, target.get(), target.length) == 0) return std::nullopt;
    if (errno != EINPROGRESS) return Failure{kExitConnection, "cannot connect to " + where + ": " + errno_text()};
    pollfd p{fd_, POLLOUT, 0};
    int rc;
    do {
      rc = ::poll(&p, 1, static_cast<int>(idle_.count()));
    } while (rc < 0 && errno == EINTR);
    if (rc == 0) return Failure{kExitConnection, "cannot connect to " + where + ": timeout after " + opts_.timeout};
    int err = 0;
    socklen_t len = sizeof err;
    if (rc < 0 || ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) return Failure{kExitConnection, "cannot connect to " + where + ": " + std::strerror(err)};
    return std::nullopt;
  }

  void queue(const ByteVec& bytes) { out_.insert(out_.end(), bytes.begin(), bytes.end()); }

  // The next whole TPKT, sending what is queued meanwhile (the echo of a
  // large TSDU arrives while it is still being sent). The timeout is idle
  // time: any progress in either direction restarts it.
  std::optional<Failure> next_frame(ByteVec& frame) {
    for (;;) {
      const auto r = framer_.next(rest_);
      if (r.status == codec::TpktFramer::kFrame) {
        frame.assign(r.frame.begin(), r.frame.end());
        return std::nullopt;
      }
      if (r.status == codec::TpktFramer::kError) {
        return Failure{kExitConnection, "not an RFC 1006 stream: " + std::string(codec::framer_error_name(r.error))};
      }
      // kNeedMore: rest_ is used up, chunk_ may be refilled.
      bool progress = false;
      while (!progress) {
        pollfd p{fd_, static_cast<short>(POLLIN | (out_off_ < out_.size() ? POLLOUT : 0)), 0};
        const int rc = ::poll(&p, 1, static_cast<int>(idle_.count()));
        if (rc < 0 && errno == EINTR) continue;
        if (rc < 0) return Failure{kExitConnection, "poll: " + errno_text()};
        if (rc == 0) {
          return Failure{kExitConnection, "timeout: nothing from " + sock_name(fd_, false) + " for " + opts_.timeout +
                                              (framer_.held() > 0 ? " (inside a frame)" : "")};
        }
        if (p.revents & POLLOUT) {
          const ssize_t n = ::send(fd_, out_.data() + out_off_, out_.size() - out_off_, MSG_NOSIGNAL);
          if (n > 0) {
            out_off_ += static_cast<std::size_t>(n);
            progress = true;
          } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            return Failure{kExitConnection, "send: " + errno_text()};
          }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
          chunk_.resize(kReadChunk);
          const ssize_t n = ::recv(fd_, chunk_.data(), chunk_.size(), 0);
          if (n == 0) {
            return Failure{kExitConnection, "connection closed by " + sock_name(fd_, false) +
                                                (framer_.held() > 0 ? " in the middle of a frame" : "")};
          }
          if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            return Failure{kExitConnection, std::string(errno == ECONNRESET ? "connection reset by peer" : "recv: " + errno_text())};
          }
          if (n > 0) {
            chunk_.resize(static_cast<std::size_t>(n));
            rest_ = codec::Bytes(chunk_);
            progress = true;
          }
        }
      }
    }
  }

  const ConnectOptions& opts_;
  Millis idle_;
  int fd_ = -1;
  codec::TpktFramer framer_;
  ByteVec chunk_;
  codec::Bytes rest_;
  ByteVec out_;
  std::size_t out_off_ = 0;
};

int run_connect(const ConnectOptions& o) {
  std::string why;
  const auto timeout = parse_duration(o.timeout);
  if (!timeout) {
    complain("--timeout: expected a duration like 5s, 500ms or 2m, got \"" + o.timeout + "\"");
    return kExitUsage;
  }
  const auto target = resolve(o.to, why);
  if (!target) {
    complain("--to: " + why);
    return kExitUsage;
  }
  const auto calling = parse_tsap(o.calling, why);
  if (!calling) {
    complain("--calling: " + why);
    return kExitUsage;
  }
  const auto called = parse_tsap(o.called, why);
  if (!called) {
    complain("--called: " + why);
    return kExitUsage;
  }
  ByteVec data = test::ascii("hello from isoproxy demo");
  if (!o.data_hex.empty()) {
    auto parsed = codec::parse_hex(o.data_hex);
    if (!parsed) {
      complain("--data: " + parsed.error().message);
      return kExitUsage;
    }
    data = std::move(*parsed);
  } else if (o.data_size_given) {
    data.resize(o.data_size);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>('a' + i % 26);
  }
  Initiator ini(o, *timeout);
  return ini.run(*target, *calling, *called, data);
}

}  // namespace

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"rfc1006-peer: both ends of an RFC 1006 (TPKT + X.224 class 0) session, for tests and demos"};
  app.require_subcommand(1);

  RespondOptions ro;
  auto* respond = app.add_subcommand("respond", "Answer like the vendor MTA of KB Q151626: CC with reserved 0x11, echo DTs");
  respond->add_option("--listen", ro.listen, "ADDRESS:PORT to listen on (port 0: ephemeral; IPv6 as [::1]:0)")->required();
  respond->add_option("--reserved", ro.reserved, "TPKT reserved byte of the CC (0x11 like the vendor MTA; 0 per RFC 2126)")
      ->default_str("0x11")
      ->check(CLI::Range(0, 255));
  respond->add_option("--src-ref", ro.src_ref, "SRC-REF of the CC")->default_str("0x0029")->check(CLI::Range(0, 65535));
  respond->add_flag("--tsaps-echo,!--no-tsaps-echo", ro.tsaps_echo,
                    "Echo the CR's TSAPs in the CC (default); --no-tsaps-echo echoes only the TPDU size");
  respond->add_flag("--once", ro.once, "Accept one connection only and exit when it ends");

  ConnectOptions co;
  auto* connect = app.add_subcommand("connect", "Connect, CR/CC, send one TSDU and check its echo");
  connect->add_option("--to", co.to, "ADDRESS:PORT of the responder (or of isoproxy)")->required();
  connect->add_option("--calling", co.calling, "Calling TSAP: ASCII, or hex:0102")->capture_default_str();
  connect->add_option("--called", co.called, "Called TSAP: ASCII, or hex:0102")->capture_default_str();
  connect->add_flag("--strict", co.strict,
                    "Refuse a TPKT whose reserved byte is not 0, as libiec61850 does (exit 3)");
  auto* data_opt = connect->add_option("--data", co.data_hex, "The TSDU to send, in hex (default: \"hello from isoproxy demo\")");
  auto* size_opt = connect->add_option("--data-size", co.data_size, "Send N generated bytes instead (split into DTs of the negotiated size)")
      ->check(CLI::Range(std::size_t{0}, kMaxDataSize))
      ->excludes(data_opt);
  connect->add_option("--timeout", co.timeout, "Give up after this long without progress (5s, 500ms, 2m)")
      ->capture_default_str();
  app.footer(
      "connect exit codes: 0 echo ok, 2 timeout or connection error, 3 refused by --strict, 4 DR received,\n"
      "5 wrong answer (echo differs, unexpected TPDU); 64 bad command line.");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    complain(std::string(e.what()) + " (see rfc1006-peer --help)");
    return kExitUsage;
  }
  if (respond->parsed()) return Responder(ro).run();
  co.data_size_given = size_opt->count() > 0;
  return run_connect(co);
}
