#include "admin_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <http_parser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>

namespace isoproxy {

namespace {

using Clock = std::chrono::steady_clock;

// strerror() starts with a capital; our messages continue a sentence.
std::string errno_text(int err) {
  std::string s = std::strerror(err);
  if (!s.empty() && s[0] >= 'A' && s[0] <= 'Z' && !(s.size() > 1 && s[1] >= 'A' && s[1] <= 'Z')) s[0] = static_cast<char>(s[0] + 32);
  return s;
}

std::string seconds_text(std::chrono::milliseconds ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", static_cast<double>(ms.count()) / 1000.0);
  return buf;
}

// A file descriptor closed on every path.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

enum class Wait { kReady, kTimeout, kInterrupted, kError };

// Waits for `events` on fd until `until`; a signal counts only when it set *stop.
Wait wait_fd(int fd, short events, Clock::time_point until, const AdminClientOptions& o, int* err) {
  for (;;) {
    if (o.stop && *o.stop) return Wait::kInterrupted;
    const auto left = until - Clock::now();
    if (left <= Clock::duration::zero()) return Wait::kTimeout;
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
    timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
    pollfd p{fd, events, 0};
    const int r = ::ppoll(&p, fd >= 0 ? 1 : 0, &ts, o.wait_mask);
    if (r > 0) return Wait::kReady;
    if (r == 0) continue;  // re-checks the deadline
    if (errno == EINTR) continue;
    *err = errno;
    return Wait::kError;
  }
}

Error interrupted() { return Error{"interrupted", "interrupted"}; }

// Connects one socket address, non-blocking, within the deadline.
Result<Fd> connect_one(int family, const sockaddr* sa, socklen_t len, Clock::time_point until,
                       const AdminClientOptions& o, const std::string& timeout_text) {
  Fd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return unexpected(Error{"connect", "socket: " + errno_text(errno)});
  for (;;) {
    if (::connect(fd.get(), sa, len) == 0) return fd;
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN && family == AF_UNIX) {
      // The server's backlog is full: nothing to poll on; retry shortly.
      int perr = 0;
      const auto step = std::min(until, Clock::now() + std::chrono::milliseconds(20));
      const Wait w = wait_fd(-1, 0, step, o, &perr);
      if (w == Wait::kInterrupted) return unexpected(interrupted());
      if (Clock::now() >= until) return unexpected(Error{"connect", "timed out after " + timeout_text + " (the server's backlog is full)"});
      continue;
    }
    if (err != EINPROGRESS) return unexpected(Error{"connect", errno_text(err)});
    break;
  }
  int perr = 0;
  switch (wait_fd(fd.get(), POLLOUT, until, o, &perr)) {
    case Wait::kReady: break;
    case Wait::kTimeout: return unexpected(Error{"connect", "timed out after " + timeout_text});
    case Wait::kInterrupted: return unexpected(interrupted());
    case Wait::kError: return unexpected(Error{"connect", "poll: " + errno_text(perr)});
  }
  int so_error = 0;
  socklen_t sl = sizeof so_error;
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &so_error, &sl) != 0) so_error = errno;
  if (so_error != 0) return unexpected(Error{"connect", errno_text(so_error)});
  return fd;
}

Result<Fd> connect_to(const AdminAddress& a, const AdminClientOptions& o) {
  const auto until = Clock::now() + o.connect_timeout;
  const std::string timeout_text = seconds_text(o.connect_timeout);
  if (a.is_unix) {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    if (a.path.empty() || a.path.size() >= sizeof un.sun_path) {
      return unexpected(Error{"connect", "the Unix socket path is empty or longer than " + std::to_string(sizeof un.sun_path - 1) + " bytes"});
    }
    std::memcpy(un.sun_path, a.path.data(), a.path.size());
    return connect_one(AF_UNIX, reinterpret_cast<const sockaddr*>(&un), sizeof un, until, o, timeout_text);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
  addrinfo* list = nullptr;
  const std::string port = std::to_string(a.port);
  int rc = ::getaddrinfo(a.host.c_str(), port.c_str(), &hints, &list);
  if (rc == EAI_NONAME || rc == EAI_ADDRFAMILY) {
    // AI_ADDRCONFIG hides ::1 on a host whose only interface is loopback.
    hints.ai_flags = AI_NUMERICSERV;
    rc = ::getaddrinfo(a.host.c_str(), port.c_str(), &hints, &list);
  }
  if (rc != 0) {
    return unexpected(Error{"resolve", "cannot resolve " + a.host + ": " + (rc == EAI_SYSTEM ? errno_text(errno) : gai_strerror(rc))});
  }
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(list, ::freeaddrinfo);
  Error last{"connect", "no address"};
  for (const addrinfo* ai = list; ai; ai = ai->ai_next) {
    auto fd = connect_one(ai->ai_family, ai->ai_addr, ai->ai_addrlen, until, o, timeout_text);
    if (fd) return fd;
    if (fd.error().kind == "interrupted") return fd;
    last = fd.error();
  }
  return unexpected(last);
}

// http-parser callbacks collect the response; an oversized one stops the parser.
struct Collector {
  HttpResponse response;
  std::string field, value;
  bool in_value = false;
  bool complete = false;
  bool too_large = false;
  std::size_t cap = 0;
  std::size_t seen = 0;  // header and body bytes

  void flush_header() {
    if (field.empty()) return;
    std::string name = field;
    for (char& c : name) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    auto [it, fresh] = response.headers.emplace(name, value);
    if (!fresh) it->second += ", " + value;
    field.clear();
    value.clear();
    in_value = false;
  }
  bool account(std::size_t n) {
    seen += n;
    if (seen > cap) too_large = true;
    return !too_large;
  }
};

const http_parser_settings& settings() {
  static const http_parser_settings s = [] {
    http_parser_settings st;
    http_parser_settings_init(&st);
    st.on_status = [](http_parser* p, const char* at, std::size_t n) noexcept {
      auto* c = static_cast<Collector*>(p->data);
      if (!c->account(n)) return 1;
      c->response.reason.append(at, n);
      return 0;
    };
    st.on_header_field = [](http_parser* p, const char* at, std::size_t n) noexcept {
      auto* c = static_cast<Collector*>(p->data);
      if (!c->account(n)) return 1;
      if (c->in_value) c->flush_header();
      c->field.append(at, n);
      return 0;
    };
    st.on_header_value = [](http_parser* p, const char* at, std::size_t n) noexcept {
      auto* c = static_cast<Collector*>(p->data);
      if (!c->account(n)) return 1;
      c->in_value = true;
      c->value.append(at, n);
      return 0;
    };
    st.on_headers_complete = [](http_parser* p) noexcept {
      auto* c = static_cast<Collector*>(p->data);
      c->flush_header();
      c->response.status = static_cast<int>(p->status_code);
      // Refused before a byte of the body arrives (content_length is
      // ULLONG_MAX when the header is absent).
      if ((p->flags & F_CHUNKED) == 0 && p->content_length != ULLONG_MAX && p->content_length > c->cap) {
        c->too_large = true;
        return -1;  // http-parser: "an error", not "skip the body" (1)
      }
      return 0;
    };
    st.on_body = [](http_parser* p, const char* at, std::size_t n) noexcept {
      auto* c = static_cast<Collector*>(p->data);
      if (!c->account(n)) return 1;
      c->response.body.append(at, n);
      return 0;
    };
    st.on_message_complete = [](http_parser* p) noexcept {
      static_cast<Collector*>(p->data)->complete = true;
      return 1;  // stop: one answer per connection
    };
    return st;
  }();
  return s;
}

std::string cap_text(std::size_t bytes) {
  if (bytes >= (1u << 20) && bytes % (1u << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  return std::to_string(bytes) + " bytes";
}

// ASCII printable only, at most `max` characters: for quoting an unexpected body.
// `keep_trailing`: keep trailing spaces (a value quoted back to its writer,
// where a trailing space is the error).
std::string printable_prefix(std::string_view s, std::size_t max, bool keep_trailing = false) {
  std::string out;
  for (char ch : s) {
    if (out.size() >= max) {
      out += "...";
      break;
    }
    const auto c = static_cast<unsigned char>(ch);
    out += (c >= 0x20 && c < 0x7F) ? ch : (c == '\n' || c == '\r' || c == '\t') ? ' ' : '?';
  }
  while (!keep_trailing && !out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

}  // namespace

Result<AdminAddress> parse_admin_address(std::string_view text) {
  AdminAddress a;
  a.text = std::string(text);
  const std::string quoted = "\"" + printable_prefix(text, 120, true) + "\"";
  if (text.empty()) return unexpected(Error{"bad-address", "no address given: expected HOST:PORT, [IPV6]:PORT or unix:/PATH"});
  if (const auto scheme = text.find("://"); scheme != std::string_view::npos) {
    // A URL, as the README's curl examples write the endpoint.
    std::string_view rest = text.substr(scheme + 3);
    rest = rest.substr(0, rest.find('/'));
    return unexpected(Error{"bad-address", quoted + ": a URL; give the address alone (" + printable_prefix(rest, 120) + ")"});
  }
  if (text.rfind("unix:", 0) == 0) {
    a.is_unix = true;
    a.path = std::string(text.substr(5));
    if (a.path.empty()) return unexpected(Error{"bad-address", quoted + ": the Unix socket path is empty (unix:/run/isoproxy/admin.sock)"});
    if (a.path.size() >= sizeof(sockaddr_un::sun_path)) {
      return unexpected(Error{"bad-address", quoted + ": a Unix socket path has at most " + std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes"});
    }
    if (a.path.find('\0') != std::string::npos) return unexpected(Error{"bad-address", quoted + ": the path contains a NUL byte"});
    return a;
  }
  const Error shape{"bad-address", quoted + ": expected HOST:PORT, [IPV6]:PORT or unix:/PATH"};
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') return unexpected(shape);
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    if (host.find(':') == std::string_view::npos) return unexpected(shape);  // brackets are for IPv6
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return unexpected(shape);
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return unexpected(Error{"bad-address", quoted + ": an IPv6 address needs brackets, as in [::1]:9102"});
    }
  }
  if (host.empty()) return unexpected(shape);
  for (char c : host) {
    const bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' ||
                    c == '-' || c == ':' || c == '_' || c == '%';
    if (!ok) return unexpected(Error{"bad-address", quoted + ": not a host name or IP address"});
  }
  unsigned value = 0;
  auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || p != port.data() + port.size() || value > 65535) {
    return unexpected(Error{"bad-address", quoted + ": the port must be a number 1..65535"});
  }
  if (value == 0) return unexpected(Error{"bad-address", quoted + ": port 0 cannot be reached (a server given port 0 picks a free port: its log line 'admin endpoint on ADDR' names it)"});
  a.host = std::string(host);
  a.port = static_cast<std::uint16_t>(value);
  return a;
}

Result<AdminAddress> admin_address_from_listen(std::string_view listen) {
  if (listen == "off") return unexpected(Error{"admin-off", "the admin endpoint is off ([admin] listen = \"off\")"});
  auto a = parse_admin_address(listen);
  if (!a) return a;
  if (a->host == "0.0.0.0") {
    a->host = "127.0.0.1";
    a->text = "127.0.0.1:" + std::to_string(a->port);
  } else if (a->host == "::" || a->host == "0:0:0:0:0:0:0:0") {
    a->host = "::1";
    a->text = "[::1]:" + std::to_string(a->port);
  }
  return a;
}

Result<HttpResponse> http_get(const AdminAddress& address, const std::string& target, const AdminClientOptions& o) {
  auto connected = connect_to(address, o);
  if (!connected) return unexpected(connected.error());
  Fd fd = std::move(*connected);
  const auto until = Clock::now() + o.read_timeout;
  const std::string timeout_text = seconds_text(o.read_timeout);

  std::string host_header = address.is_unix ? "localhost" : address.text;
  const std::string request = "GET " + target + " HTTP/1.1\r\nHost: " + host_header +
                              "\r\nUser-Agent: isoproxy-stats\r\nAccept: application/json\r\nConnection: close\r\n\r\n";
  std::size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return unexpected(Error{"io", "sending the request: " + errno_text(errno)});
    int perr = 0;
    switch (wait_fd(fd.get(), POLLOUT, until, o, &perr)) {
      case Wait::kReady: break;
      case Wait::kTimeout: return unexpected(Error{"timeout", "timed out after " + timeout_text + " sending the request"});
      case Wait::kInterrupted: return unexpected(interrupted());
      case Wait::kError: return unexpected(Error{"io", "poll: " + errno_text(perr)});
    }
  }

  Collector c;
  c.cap = o.max_response_bytes;
  http_parser parser;
  http_parser_init(&parser, HTTP_RESPONSE);
  parser.data = &c;
  std::string buf(64 * 1024, '\0');
  std::size_t received = 0;  // every byte, status line included (the parser's callbacks see less)
  auto parse_error = [&](std::string_view where) -> Error {
    if (c.too_large) return Error{"too-large", "the answer is larger than the limit of " + cap_text(c.cap)};
    const auto e = HTTP_PARSER_ERRNO(&parser);
    return Error{"protocol", std::string("not a valid HTTP/1.1 answer") + std::string(where) + ": " + http_errno_description(e)};
  };
  while (!c.complete) {
    int perr = 0;
    switch (wait_fd(fd.get(), POLLIN, until, o, &perr)) {
      case Wait::kReady: break;
      case Wait::kTimeout:
        return unexpected(Error{"timeout", "no whole answer within " + timeout_text +
                                               (received == 0 ? " (connected, but nothing came back)"
                                                              : " (" + std::to_string(received) + " bytes came)")});
      case Wait::kInterrupted: return unexpected(interrupted());
      case Wait::kError: return unexpected(Error{"io", "poll: " + errno_text(perr)});
    }
    const ssize_t n = ::recv(fd.get(), buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return unexpected(Error{"io", "reading the answer: " + errno_text(errno)});
    }
    received += static_cast<std::size_t>(n);
    if (n == 0) {
      // EOF: ends a body delimited by the connection's close; anywhere else
      // the answer was cut short.
      http_parser_execute(&parser, &settings(), buf.data(), 0);
      if (c.complete) break;
      if (received == 0 && HTTP_PARSER_ERRNO(&parser) == HPE_OK) {
        return unexpected(Error{"protocol", "the server closed the connection without answering"});
      }
      if (HTTP_PARSER_ERRNO(&parser) != HPE_OK && HTTP_PARSER_ERRNO(&parser) != HPE_INVALID_EOF_STATE) {
        return unexpected(parse_error(""));
      }
      return unexpected(Error{"protocol", "the answer was cut short (connection closed after " + std::to_string(received) + " bytes)"});
    }
    const std::size_t used = http_parser_execute(&parser, &settings(), buf.data(), static_cast<std::size_t>(n));
    if (c.complete) break;
    if (used != static_cast<std::size_t>(n) || HTTP_PARSER_ERRNO(&parser) != HPE_OK) return unexpected(parse_error(""));
  }
  return std::move(c.response);
}

Result<nlohmann::json> get_json(const AdminAddress& address, const std::string& target, const AdminClientOptions& o) {
  auto r = http_get(address, target, o);
  if (!r) return unexpected(r.error());
  const HttpResponse& resp = *r;
  nlohmann::json body;
  std::optional<std::size_t> bad_at;
  std::string bad_why;
  // isoproxy nests a few levels; a document far deeper is not its answer,
  // and printing it (--json) would recurse as deep.
  constexpr int kMaxDepth = 64;
  int deepest = 0;
  try {
    body = nlohmann::json::parse(resp.body, [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
      deepest = std::max(deepest, depth);
      return depth <= kMaxDepth;
    });
  } catch (const nlohmann::json::parse_error& e) {
    bad_at = e.byte;
  } catch (const nlohmann::json::exception& e) {
    bad_why = e.what();  // a number out of range (1e400), ...
  }
  if (!bad_at && bad_why.empty() && deepest > kMaxDepth) bad_why = "nested deeper than " + std::to_string(kMaxDepth) + " levels";
  if (resp.status < 200 || resp.status > 299) {
    std::string detail;
    if (!bad_at && bad_why.empty() && body.is_object() && body.contains("error") && body["error"].is_string()) {
      detail = body["error"].get<std::string>();
    } else {
      detail = printable_prefix(resp.body, 200);
    }
    std::string msg = std::to_string(resp.status) + (resp.reason.empty() ? "" : " " + printable_prefix(resp.reason, 60));
    if (!detail.empty()) msg += ": " + detail;
    return unexpected(Error{"http", msg});
  }
  if (bad_at) {
    // The parser counts from 1, and past the end when the text stops inside a value.
    if (resp.body.empty()) return unexpected(Error{"json", "the answer to " + target + " is empty, not JSON"});
    if (*bad_at > resp.body.size()) {
      return unexpected(Error{"json", "the answer to " + target + " is not valid JSON: it ends inside a value (after " +
                                          std::to_string(resp.body.size()) + " bytes)"});
    }
    return unexpected(Error{"json", "the answer to " + target + " is not valid JSON (at byte " + std::to_string(*bad_at) +
                                        " of " + std::to_string(resp.body.size()) + ")"});
  }
  if (!bad_why.empty()) {
    return unexpected(Error{"json", "the answer to " + target + " is not one isoproxy gives: " + printable_prefix(bad_why, 120)});
  }
  return body;
}

std::string url_encode(std::string_view value) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (char ch : value) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~') {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace isoproxy
