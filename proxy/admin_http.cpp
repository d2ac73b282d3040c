#include "admin_http.h"

#include <arpa/inet.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <list>
#include <string_view>

#include "conf/config.h"
#include "log.h"
#include "upstream.h"

namespace isoproxy {

using namespace std::string_view_literals;

namespace {

// After the last response of a connection is flushed and our side shut down,
// what the client still sends is read and dropped for at most this long, so
// that closing with unread input does not turn into an RST that destroys the
// response before the client read it (RFC 9112 §9.6).
constexpr std::chrono::milliseconds kLingerTimeout{2000};
constexpr int kBacklog = 128;

// A write that owns its bytes (DESIGN.md §5): one allocation holds the
// request and the data. On UV_ECANCELED the callback only frees it.
struct WriteReq {
  uv_write_t req;
  std::size_t len;
  std::size_t* queued;  // the server's count of queued bytes, which holds len until the callback
  uv_buf_t buf;
  char data[1];  // len bytes follow

  static WriteReq* make(std::size_t len) {
    void* mem = std::malloc(offsetof(WriteReq, data) + len);
    if (!mem) std::abort();  // out of memory: nothing sensible to do
    auto* w = static_cast<WriteReq*>(mem);
    w->len = len;
    w->queued = nullptr;
    w->buf = uv_buf_init(w->data, static_cast<unsigned>(len));
    return w;
  }
};

std::string uv_error_text(int err) { return std::string(uv_err_name(err)) + " (" + uv_strerror(err) + ")"; }
std::string errno_text(int err) { return std::strerror(err); }

std::string_view reason_phrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Status";
  }
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// application/x-www-form-urlencoded rules (WHATWG URL §5.1): '+' is a space,
// %XX a byte; a '%' not followed by two hex digits stays as it is.
std::string form_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

// "a=b&c=d": later duplicates replace earlier ones (and are named in
// `repeated`); "flag" alone maps to "".
std::map<std::string, std::string> parse_query(std::string_view q, std::vector<std::string>& repeated) {
  std::map<std::string, std::string> out;
  auto put = [&](std::string key, std::string value) {
    auto [it, inserted] = out.insert_or_assign(std::move(key), std::move(value));
    if (!inserted && std::find(repeated.begin(), repeated.end(), it->first) == repeated.end()) repeated.push_back(it->first);
  };
  while (!q.empty()) {
    const auto amp = q.find('&');
    const std::string_view pair = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view{} : q.substr(amp + 1);
    if (pair.empty()) continue;
    const auto eq = pair.find('=');
    if (eq == std::string_view::npos) {
      put(form_decode(pair), "");
    } else {
      put(form_decode(pair.substr(0, eq)), form_decode(pair.substr(eq + 1)));
    }
  }
  return out;
}

// Splits the request target into the path (as sent, not decoded) and the
// decoded query; the absolute form ("http://host/p?q", RFC 9112 §3.2.2) too.
void split_target(const std::string& url, bool is_connect, AdminRequest& req) {
  http_parser_url u;
  http_parser_url_init(&u);
  if (http_parser_parse_url(url.data(), url.size(), is_connect ? 1 : 0, &u) == 0) {
    if ((u.field_set & (1 << UF_PATH)) != 0) {
      req.path = url.substr(u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
    } else {
      req.path = "/";
    }
    if ((u.field_set & (1 << UF_QUERY)) != 0) {
      req.query = parse_query(std::string_view(url).substr(u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len),
                              req.repeated);
    }
    return;
  }
  // "*" (OPTIONS) and other forms the URL parser does not take: split by hand.
  std::string_view t(url);
  t = t.substr(0, t.find('#'));
  const auto q = t.find('?');
  req.path = std::string(t.substr(0, q));
  if (q != std::string_view::npos) req.query = parse_query(t.substr(q + 1), req.repeated);
}

bool header_token_ok(std::string_view s) {
  return !s.empty() && s.find_first_of("\r\n\0:"sv) == std::string_view::npos;
}
bool header_value_ok(std::string_view s) { return s.find_first_of("\r\n\0"sv) == std::string_view::npos; }

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (x >= 'A' && x <= 'Z' ? x + 32 : x) == (y >= 'A' && y <= 'Z' ? y + 32 : y);
         });
}

}  // namespace

struct AdminHttpServer::Impl {
  // One admin client: the stream and its timer live here by value; the
  // Connection sits in a std::list node, so it never moves.
  struct Connection {
    enum class State {
      kReading,    // parsing requests and answering them
      kFinishing,  // the last response is queued: flush it, then shut our side down
      kLingering,  // shut down: drop what the client still sends until EOF or kLingerTimeout
      kClosing,    // uv_close called: nothing is written or parsed any more
    };
    enum class Wait { kRequest, kIdle, kLinger, kWrite };

    Impl* owner = nullptr;
    std::list<Connection>::iterator self;
    uv_any_handle stream{};
    uv_timer_t timer{};
    uv_shutdown_t shutdown_req{};
    http_parser parser{};
    int open_handles = 0;
    State state = State::kReading;
    Wait wait = Wait::kRequest;
    bool peer_eof = false;
    std::size_t writes_in_flight = 0;
    std::size_t unread_at_last_look = 0;  // Wait::kWrite: the write queue then
    std::string peer;
    // Pipelined requests wait while an answer is still queued: a client that
    // sends many and reads none holds one answer, not one per request.
    bool reading_paused = false;
    std::string held_input;  // what was read after that answer's request, not parsed yet

    // The request being parsed.
    bool in_message = false;       // its first byte was seen
    bool headers_done = false;
    bool message_done = false;     // on_message_complete ran (the parser is paused)
    bool expect_continue = false;  // "Expect: 100-continue" (RFC 9110 §10.1.1)
    std::size_t header_bytes = 0;  // request line + headers consumed so far
    std::size_t header_data = 0;   // URL + names + values: stops a huge block early
    int reject_status = 0;         // set by a parser callback that refused the request
    std::string reject_text;
    std::string url;
    std::string field;
    std::string value;
    bool last_was_value = false;
    AdminRequest request;

    uv_stream_t* as_stream() { return &stream.stream; }
    uv_handle_t* as_handle() { return &stream.handle; }
    const AdminLimits& limits() const { return owner->limits_; }

    void start(uv_stream_t* server_stream);
    bool start_reading();
    void on_read(ssize_t nread, const uv_buf_t* buf);
    void feed(const char* data, std::size_t len);
    void respond();
    void reject(int status, const std::string& text);
    void write_response(const AdminResponse& res, bool head, bool keep_alive);
    void send(std::string_view head, std::string_view body);
    void on_write_done(int status);
    void finish();
    void start_shutdown();
    void on_shutdown(int status);
    void on_eof();
    void on_timer();
    void arm(Wait w);
    void close();
    void reset_request();

    // http_parser callbacks (the parser's data is this Connection).
    int on_message_begin();
    int on_url(const char* at, std::size_t len);
    int on_header_field(const char* at, std::size_t len);
    int on_header_value(const char* at, std::size_t len);
    int on_headers_complete();
    int on_body(const char* at, std::size_t len);
    int on_message_complete();
    void commit_header();
    int refuse(int status, std::string text);
    static const http_parser_settings& parser_settings();
  };

  // A connection over max_connections: accepted and closed at once.
  struct Refused {
    uv_any_handle stream{};
    Impl* owner = nullptr;
  };

  Impl(uv_loop_t* loop, AdminHandler& handler, AdminLimits limits) : loop_(loop), handler_(handler), limits_(limits) {}

  Status<> listen(const std::string& address);
  Status<> listen_tcp(const std::string& address);
  Status<> listen_unix(const std::string& path);
  Status<> adopt(int fd, bool is_unix);
  void stop();
  void on_connection(int status);
  void refuse(uv_stream_t* server_stream);
  void on_handle_closed(Connection& c);
  void on_listener_closed() { --open_handles_; }

  uv_loop_t* loop_;
  AdminHandler& handler_;
  AdminLimits limits_;
  uv_any_handle listener_{};
  bool listener_initialised_ = false;
  bool is_unix_ = false;
  bool stopping_ = false;
  std::string bound_;
  std::string unix_path_;
  dev_t unix_dev_ = 0;
  ino_t unix_ino_ = 0;
  std::list<Connection> connections_;
  std::atomic<std::size_t> active_{0};  // connections not closing: what max_connections counts
  std::size_t queued_bytes_ = 0;          // in writes not completed, all connections (max_queued_bytes)
  log::Throttle budget_warns_;  // answers refused for the output budget
  log::Throttle refuse_warns_;  // connections over max_connections
  std::size_t open_handles_ = 0;  // listener + connection + refused handles not yet closed
  std::array<char, 65536> read_buf_{};  // reads are handled synchronously: one buffer serves all
};

const http_parser_settings& AdminHttpServer::Impl::Connection::parser_settings() {
  static const http_parser_settings settings = [] {
    http_parser_settings st;
    http_parser_settings_init(&st);
    st.on_message_begin = [](http_parser* p) noexcept { return static_cast<Connection*>(p->data)->on_message_begin(); };
    st.on_url = [](http_parser* p, const char* at, std::size_t len) noexcept {
      return static_cast<Connection*>(p->data)->on_url(at, len);
    };
    st.on_header_field = [](http_parser* p, const char* at, std::size_t len) noexcept {
      return static_cast<Connection*>(p->data)->on_header_field(at, len);
    };
    st.on_header_value = [](http_parser* p, const char* at, std::size_t len) noexcept {
      return static_cast<Connection*>(p->data)->on_header_value(at, len);
    };
    st.on_headers_complete = [](http_parser* p) noexcept {
      return static_cast<Connection*>(p->data)->on_headers_complete();
    };
    st.on_body = [](http_parser* p, const char* at, std::size_t len) noexcept {
      return static_cast<Connection*>(p->data)->on_body(at, len);
    };
    st.on_message_complete = [](http_parser* p) noexcept {
      return static_cast<Connection*>(p->data)->on_message_complete();
    };
    return st;
  }();
  return settings;
}

// ---------------------------------------------------------------------------
// Listening

Status<> AdminHttpServer::Impl::listen(const std::string& address) {
  if (listener_initialised_ || stopping_) {
    return unexpected(Error{"admin-listen", "listen() called twice or after stop()"});
  }
  if (address.rfind("unix:", 0) == 0) return listen_unix(address.substr(5));
  return listen_tcp(address);
}

Status<> AdminHttpServer::Impl::listen_tcp(const std::string& address) {
  // The port is required: the default of parse_socket_address (102) is the relay's.
  const bool has_port = !address.empty() && (address.find("]:") != std::string::npos ||
                                             (address.front() != '[' && std::count(address.begin(), address.end(), ':') == 1));
  if (!has_port) {
    return unexpected(Error{"bad-address", "\"" + address + "\": expected HOST:PORT, [IPV6]:PORT or unix:/PATH"});
  }
  auto parsed = conf::parse_socket_address(address, 0, true);
  if (!parsed) return unexpected(Error{parsed.error().kind, parsed.error().message});
  const conf::SocketAddress& a = *parsed;
  // Bound with plain calls, so that a failure leaves no libuv handle to close
  // and the server can be destroyed at once.
  const int fd = ::socket(a.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return unexpected(Error{"listen", "socket: " + errno_text(errno)});
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  // [::] takes IPv6 only, as the relay's listeners do.
  if (a.family() == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (::bind(fd, a.sa(), a.length) != 0 || ::listen(fd, kBacklog) != 0) {
    const int err = errno;
    ::close(fd);
    std::string hint;
    if (err == EADDRINUSE) hint = " (another process holds the port)";
    if (err == EACCES) hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)";
    if (err == EADDRNOTAVAIL) hint = " (not an address of this host)";
    return unexpected(Error{"listen", "cannot listen on " + a.text + ": " + errno_text(err) + hint});
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  bound_ = address_text(reinterpret_cast<sockaddr*>(&ss));
  return adopt(fd, false);
}

Status<> AdminHttpServer::Impl::listen_unix(const std::string& path) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sun.sun_path) {
    return unexpected(Error{"bad-address", "unix socket path \"" + path + "\" is empty or longer than " +
                                               std::to_string(sizeof sun.sun_path - 1) + " bytes"});
  }
  std::memcpy(sun.sun_path, path.data(), path.size());
  auto fail = [&](const std::string& what, int err) -> Status<> {
    return unexpected(Error{"listen", "cannot listen on unix:" + path + ": " + what + ": " + errno_text(err)});
  };
  // A socket file left by a process that died is removed; one that still
  // answers belongs to a live server, and anything else is not ours to delete.
  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return fail("the path exists and is not a socket", EEXIST);
    // Non-blocking: a live server with a full backlog answers EAGAIN rather than blocking us.
    const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe < 0) return fail("socket", errno);
    const int r = ::connect(probe, reinterpret_cast<const sockaddr*>(&sun), sizeof sun);
    const int err = errno;
    ::close(probe);
    if (r == 0 || err == EAGAIN) return fail("another server answers on it", EADDRINUSE);
    if (err != ECONNREFUSED) return fail("probing the existing socket", err);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return fail("removing the stale socket", errno);
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail("socket", errno);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&sun), sizeof sun) != 0) {
    const int err = errno;
    ::close(fd);
    return fail("bind", err);
  }
  // Owner and group only; set before listen() so that nobody connects meanwhile.
  if (::chmod(path.c_str(), 0660) != 0 || ::lstat(path.c_str(), &st) != 0 || ::listen(fd, kBacklog) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return fail("chmod/listen", err);
  }
  unix_path_ = path;
  unix_dev_ = st.st_dev;
  unix_ino_ = st.st_ino;
  bound_ = "unix:" + path;
  return adopt(fd, true);
}

Status<> AdminHttpServer::Impl::adopt(int fd, bool is_unix) {
  is_unix_ = is_unix;
  int r = is_unix ? uv_pipe_init(loop_, &listener_.pipe, 0) : uv_tcp_init(loop_, &listener_.tcp);
  if (r != 0) {
    ::close(fd);
    return unexpected(Error{"listen", uv_error_text(r)});
  }
  listener_.handle.data = this;
  listener_initialised_ = true;
  ++open_handles_;
  r = is_unix ? uv_pipe_open(&listener_.pipe, fd) : uv_tcp_open(&listener_.tcp, fd);
  if (r != 0) {
    ::close(fd);  // not adopted: the handle does not own it
  } else {
    r = uv_listen(&listener_.stream, kBacklog, [](uv_stream_t* s, int status) noexcept {
      static_cast<Impl*>(s->data)->on_connection(status);
    });
  }
  if (r != 0) {
    // Practically unreachable (the socket already listens); the handle is
    // closed like any other, so closed() turns true once the loop ran.
    stop();
    return unexpected(Error{"listen", "cannot listen on " + bound_ + ": " + uv_error_text(r)});
  }
  return Ok{};
}

void AdminHttpServer::Impl::stop() {
  if (stopping_) return;
  stopping_ = true;
  if (listener_initialised_ && !uv_is_closing(&listener_.handle)) {
    uv_close(&listener_.handle, [](uv_handle_t* h) noexcept { static_cast<Impl*>(h->data)->on_listener_closed(); });
  }
  if (!unix_path_.empty()) {
    // Only our own socket: another server may have replaced it since.
    struct stat st{};
    if (::lstat(unix_path_.c_str(), &st) == 0 && st.st_dev == unix_dev_ && st.st_ino == unix_ino_) {
      ::unlink(unix_path_.c_str());
    }
  }
  for (Connection& c : connections_) c.close();
}

void AdminHttpServer::Impl::on_connection(int status) {
  if (status < 0) {
    spdlog::warn("admin: accept on {}: {}", bound_, uv_error_text(status));
    return;
  }
  if (stopping_) return;
  if (active_ >= limits_.max_connections) {
    refuse(&listener_.stream);
    return;
  }
  Connection& c = connections_.emplace_back();
  c.owner = this;
  c.self = std::prev(connections_.end());
  c.start(&listener_.stream);
}

void AdminHttpServer::Impl::refuse(uv_stream_t* server_stream) {
  // Accept, say why in a 503 and close at once, rather than leave the client
  // hanging in the backlog. The answer goes with uv_try_write into the new
  // socket's empty buffer, or not at all: a refused connection holds nothing.
  auto* r = new Refused;
  r->owner = this;
  r->stream.handle.data = r;
  if (is_unix_) {
    uv_pipe_init(loop_, &r->stream.pipe, 0);
  } else {
    uv_tcp_init(loop_, &r->stream.tcp);
  }
  ++open_handles_;
  if (uv_accept(server_stream, &r->stream.stream) == 0) {
    const std::string body = "{\"error\":\"the admin endpoint has " + std::to_string(limits_.max_connections) +
                             " connections open, its limit (idle keep-alive ones close after " +
                             std::to_string(limits_.idle_timeout.count() / 1000) + " s); retry later\"}\n";
    const std::string answer = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: " +
                               std::to_string(body.size()) +
                               "\r\nRetry-After: 1\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n" + body;
    uv_buf_t buf = uv_buf_init(const_cast<char*>(answer.data()), static_cast<unsigned>(answer.size()));
    uv_try_write(&r->stream.stream, &buf, 1);
    // Said at warn: an operator locked out of the endpoint must learn why.
    if (std::uint64_t held = 0; refuse_warns_.due(uv_now(loop_), held)) {
      spdlog::warn("admin: refused a connection on {}: {} connections open, the limit{}", bound_,
                   limits_.max_connections, held ? " (" + std::to_string(held) + " more refused since the last line)" : "");
    }
  }
  uv_close(&r->stream.handle, [](uv_handle_t* h) noexcept {
    auto* refused = static_cast<Refused*>(h->data);
    Impl* owner = refused->owner;
    delete refused;
    --owner->open_handles_;
  });
}

void AdminHttpServer::Impl::on_handle_closed(Connection& c) {
  --open_handles_;
  // The last close callback of the connection: nothing refers to it any more.
  if (--c.open_handles == 0) connections_.erase(c.self);
}

// ---------------------------------------------------------------------------
// A connection

void AdminHttpServer::Impl::Connection::start(uv_stream_t* server_stream) {
  uv_loop_t* loop = owner->loop_;
  if (owner->is_unix_) {
    uv_pipe_init(loop, &stream.pipe, 0);
  } else {
    uv_tcp_init(loop, &stream.tcp);
  }
  stream.handle.data = this;
  ++open_handles;
  ++owner->open_handles_;
  uv_timer_init(loop, &timer);
  timer.data = this;
  ++open_handles;
  ++owner->open_handles_;
  ++owner->active_;
  http_parser_init(&parser, HTTP_REQUEST);
  parser.data = this;

  if (int r = uv_accept(server_stream, as_stream()); r < 0) {
    spdlog::debug("admin: accept on {}: {}", owner->bound_, uv_error_text(r));
    close();
    return;
  }
  if (owner->is_unix_) {
    peer = "unix";
  } else {
    sockaddr_storage ss{};
    int len = sizeof ss;
    peer = uv_tcp_getpeername(&stream.tcp, reinterpret_cast<sockaddr*>(&ss), &len) == 0
               ? address_text(reinterpret_cast<sockaddr*>(&ss))
               : "?";
    uv_tcp_nodelay(&stream.tcp, 1);
  }
  if (!start_reading()) return;
  // The first request must arrive as promptly as any other.
  arm(Wait::kRequest);
}

bool AdminHttpServer::Impl::Connection::start_reading() {
  const int r = uv_read_start(
      as_stream(),
      [](uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept {
        auto& rb = static_cast<Connection*>(h->data)->owner->read_buf_;
        *buf = uv_buf_init(rb.data(), static_cast<unsigned>(rb.size()));
      },
      [](uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) noexcept {
        static_cast<Connection*>(s->data)->on_read(nread, buf);
      });
  if (r < 0) {
    close();
    return false;
  }
  return true;
}

void AdminHttpServer::Impl::Connection::arm(Wait w) {
  if (state == State::kClosing) return;
  const std::size_t unread = uv_stream_get_write_queue_size(as_stream());
  if (w == Wait::kIdle && unread > 0) w = Wait::kWrite;  // not idle while an answer goes out: watch it move
  if (w == Wait::kWrite) unread_at_last_look = unread;
  wait = w;
  const auto ms = w == Wait::kRequest ? limits().request_timeout
                  : w == Wait::kIdle  ? limits().idle_timeout
                  : w == Wait::kWrite ? limits().write_stall_timeout
                                      : kLingerTimeout;
  uv_timer_start(&timer, [](uv_timer_t* t) noexcept { static_cast<Connection*>(t->data)->on_timer(); },
                 static_cast<std::uint64_t>(std::max<std::int64_t>(1, ms.count())), 0);
}

void AdminHttpServer::Impl::Connection::on_timer() {
  if (state == State::kClosing) return;
  if (state == State::kReading && wait == Wait::kRequest && in_message) {
    // A request that trickles in (slow loris) is cut off after request_timeout.
    reject(408, "request not complete within " + std::to_string(limits().request_timeout.count()) + " ms");
    return;
  }
  if (wait == Wait::kWrite) {
    const std::size_t unread = uv_stream_get_write_queue_size(as_stream());
    if (unread > 0 && unread < unread_at_last_look) {
      arm(Wait::kWrite);  // the client reads, however slowly
      return;
    }
    if (unread > 0) {
      spdlog::debug("admin: {} took nothing of its answer for {} ms ({} bytes unread): closed", peer,
                    limits().write_stall_timeout.count(), unread);
    } else {
      arm(Wait::kIdle);  // all written; on_write_done is on its way
      return;
    }
  }
  close();
}

void AdminHttpServer::Impl::Connection::on_read(ssize_t nread, const uv_buf_t* buf) {
  if (state == State::kClosing || nread == 0) return;
  if (nread == UV_EOF) {
    on_eof();
    return;
  }
  if (nread < 0) {
    spdlog::debug("admin: read from {}: {}", peer, uv_error_text(static_cast<int>(nread)));
    close();
    return;
  }
  // Once the last response is queued, what follows is dropped unparsed.
  if (state == State::kReading) feed(buf->base, static_cast<std::size_t>(nread));
}

void AdminHttpServer::Impl::Connection::on_eof() {
  peer_eof = true;
  uv_read_stop(as_stream());
  switch (state) {
    case State::kReading:
      // A half-sent request is abandoned; answers still queued are flushed
      // (a client may half-close after its requests, RFC 9112 §9.6).
      if (in_message || writes_in_flight == 0) {
        close();
      } else {
        state = State::kFinishing;
        arm(Wait::kIdle);
      }
      break;
    case State::kFinishing:
      break;  // on_write_done closes once the output is flushed
    case State::kLingering:
      close();
      break;
    case State::kClosing:
      break;
  }
}

void AdminHttpServer::Impl::Connection::feed(const char* data, std::size_t len) {
  std::size_t off = 0;
  // The parser pauses after the header block and after each message, so that
  // each call covers one part of one request: header bytes are counted
  // exactly, and pipelined requests are answered one after the other.
  while (off < len && state == State::kReading) {
    const bool in_headers = !headers_done;
    const std::size_t n = http_parser_execute(&parser, &parser_settings(), data + off, len - off);
    off += n;
    const auto err = static_cast<http_errno>(parser.http_errno);
    if (in_headers) header_bytes += n;
    if (reject_status != 0) {
      reject(reject_status, reject_text);
      return;
    }
    if (in_headers && header_bytes > limits().max_header_bytes) {
      reject(431, "request line and headers exceed " + std::to_string(limits().max_header_bytes) + " bytes");
      return;
    }
    if (err == HPE_PAUSED) {
      http_parser_pause(&parser, 0);
      if (message_done) {
        respond();
        // An Upgrade or CONNECT request ends HTTP on this connection (the
        // parser stops there); respond() already closed it after the answer.
        if (state == State::kReading && uv_stream_get_write_queue_size(as_stream()) > 0) {
          // The answer waits for the client to read it: so does the next request.
          held_input.assign(data + off, len - off);
          reading_paused = true;
          uv_read_stop(as_stream());
          return;
        }
      } else if (expect_continue) {
        expect_continue = false;
        send("HTTP/1.1 100 Continue\r\n\r\n", {});
      }
      continue;
    }
    if (err != HPE_OK) {
      reject(400, std::string("malformed request: ") + http_errno_name(err) + " (" + http_errno_description(err) + ")");
      return;
    }
    if (n == 0) break;  // cannot happen without an error; never spin
  }
}

int AdminHttpServer::Impl::Connection::refuse(int status, std::string text) {
  reject_status = status;
  reject_text = std::move(text);
  return -1;  // stops the parser (HPE_CB_*); feed() answers with reject_status
}

void AdminHttpServer::Impl::Connection::reset_request() {
  in_message = headers_done = message_done = expect_continue = last_was_value = false;
  header_bytes = header_data = 0;
  url.clear();
  field.clear();
  value.clear();
  request = AdminRequest{};
}

int AdminHttpServer::Impl::Connection::on_message_begin() {
  reset_request();
  in_message = true;
  arm(Wait::kRequest);  // the whole request within request_timeout from its first byte
  return 0;
}

int AdminHttpServer::Impl::Connection::on_url(const char* at, std::size_t len) {
  header_data += len;
  if (header_data > limits().max_header_bytes) return refuse(431, "request target too long");
  url.append(at, len);
  return 0;
}

int AdminHttpServer::Impl::Connection::on_header_field(const char* at, std::size_t len) {
  header_data += len + 4;  // ": " and CRLF
  if (header_data > limits().max_header_bytes) return refuse(431, "request headers too large");
  if (last_was_value) commit_header();
  // "Host : evil" must not pass as some other header than Host (RFC 9112
  // §5.1: whitespace before the colon is an error the server rejects).
  if (std::find_if(at, at + len, [](char c) { return c == ' ' || c == '\t'; }) != at + len) {
    return refuse(400, "whitespace in a header field name (RFC 9112 section 5.1)");
  }
  field.append(at, len);
  return 0;
}

int AdminHttpServer::Impl::Connection::on_header_value(const char* at, std::size_t len) {
  header_data += len;
  if (header_data > limits().max_header_bytes) return refuse(431, "request headers too large");
  value.append(at, len);
  last_was_value = true;
  return 0;
}

void AdminHttpServer::Impl::Connection::commit_header() {
  std::transform(field.begin(), field.end(), field.begin(),
                 [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; });
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.pop_back();
  // Repeated fields are one list (RFC 9110 §5.3).
  auto [it, inserted] = request.headers.try_emplace(field, value);
  if (!inserted) it->second += ", " + value;
  field.clear();
  value.clear();
  last_was_value = false;
}

int AdminHttpServer::Impl::Connection::on_headers_complete() {
  if (last_was_value || !field.empty()) commit_header();
  headers_done = true;
  if (parser.http_major != 1) return refuse(505, "only HTTP/1.x is served");
  // RFC 9112 §3.2: an HTTP/1.1 request without Host gets a 400 (the admin
  // endpoint's DNS-rebinding check reads Host; it must be there to read).
  if (parser.http_minor >= 1 && request.headers.count("host") == 0) return refuse(400, "an HTTP/1.1 request needs a Host header");
  const std::uint64_t cl = parser.content_length;
  if ((parser.flags & F_CONTENTLENGTH) != 0 && cl > limits().max_body_bytes) {
    return refuse(413, "request body of " + std::to_string(cl) + " bytes exceeds " +
                           std::to_string(limits().max_body_bytes));
  }
  if (parser.http_minor >= 1) {
    auto it = request.headers.find("expect");
    expect_continue = it != request.headers.end() && iequals(it->second, "100-continue") &&
                      ((parser.flags & F_CHUNKED) != 0 || ((parser.flags & F_CONTENTLENGTH) != 0 && cl > 0));
  }
  http_parser_pause(&parser, 1);
  return 0;
}

int AdminHttpServer::Impl::Connection::on_body(const char* at, std::size_t len) {
  if (request.body.size() + len > limits().max_body_bytes) {
    return refuse(413, "request body exceeds " + std::to_string(limits().max_body_bytes) + " bytes");
  }
  request.body.append(at, len);
  return 0;
}

int AdminHttpServer::Impl::Connection::on_message_complete() {
  message_done = true;
  http_parser_pause(&parser, 1);
  return 0;
}

void AdminHttpServer::Impl::Connection::respond() {
  request.method = http_method_str(static_cast<http_method>(parser.method));
  split_target(url, parser.method == HTTP_CONNECT, request);
  request.peer = peer;
  // HTTP/1.0 always closes after the response (no HTTP/1.0 keep-alive).
  const bool keep_alive =
      parser.http_major == 1 && parser.http_minor >= 1 && http_should_keep_alive(&parser) != 0 && parser.upgrade == 0;
  const bool head = parser.method == HTTP_HEAD;
  AdminResponse res;
  try {
    res = owner->handler_.handle(request);
  } catch (const std::exception& e) {
    spdlog::warn("admin: {} {} from {}: handler failed: {}", request.method, request.path, peer, e.what());
    res = AdminResponse{500, "text/plain; charset=utf-8", "internal error\n", {}};
  } catch (...) {
    spdlog::warn("admin: {} {} from {}: handler failed", request.method, request.path, peer);
    res = AdminResponse{500, "text/plain; charset=utf-8", "internal error\n", {}};
  }
  reset_request();
  // The handler may have called stop(): then nothing is written.
  if (state != State::kReading) return;
  write_response(res, head, keep_alive);
  if (state != State::kReading) return;
  if (keep_alive) {
    arm(Wait::kIdle);
  } else {
    finish();
  }
}

void AdminHttpServer::Impl::Connection::reject(int status, const std::string& text) {
  if (state != State::kReading) return;
  spdlog::debug("admin: {} answered {}: {}", peer, status, text);
  reset_request();
  AdminResponse res{status, "text/plain; charset=utf-8", text + "\n", {}};
  write_response(res, false, false);
  finish();
}

void AdminHttpServer::Impl::Connection::write_response(const AdminResponse& res, bool head, bool keep_alive) {
  // A large answer while the others' fill the budget: try again later. A
  // small one (an error, /stats) always goes, and so does one with nothing
  // else queued, however large.
  constexpr std::size_t kAlwaysSent = 64 * 1024;
  if (!head && res.body.size() > kAlwaysSent && owner->queued_bytes_ > 0 &&
      owner->queued_bytes_ + res.body.size() > limits().max_queued_bytes) {
    // One line a second at most: a client could ask again and again.
    if (std::uint64_t held = 0; owner->budget_warns_.due(uv_now(owner->loop_), held)) {
      spdlog::warn("admin: {}-byte answer to {} not sent: {} bytes of answers wait for slow readers (the budget is "
                   "{}); 503, retry later{}",
                   res.body.size(), peer, owner->queued_bytes_, limits().max_queued_bytes,
                   held ? " (" + std::to_string(held) + " more not logged)" : "");
    }
    AdminResponse busy;
    busy.status = 503;
    busy.body = "{\"error\":\"answers to other clients fill the admin output budget; retry later\"}\n";
    busy.headers.emplace_back("Retry-After", "1");
    write_response(busy, head, keep_alive);
    return;
  }
  int status = res.status;
  if (status < 200 || status > 599) {
    spdlog::warn("admin: the handler answered status {}: sent as 500", status);
    status = 500;
  }
  // 204 and 304 have no content (RFC 9110 §15.3.5, §15.4.5); HEAD gets the headers only.
  const bool no_content = status == 204 || status == 304;
  std::string h;
  h.reserve(256);
  h += "HTTP/1.1 ";
  h += std::to_string(status);
  h += ' ';
  h += reason_phrase(status);
  h += "\r\n";
  if (!no_content) {
    if (header_value_ok(res.content_type) && !res.content_type.empty()) h += "Content-Type: " + res.content_type + "\r\n";
    h += "Content-Length: " + std::to_string(res.body.size()) + "\r\n";
  }
  h += "Cache-Control: no-store\r\n";
  for (const auto& [name, val] : res.headers) {
    // Framing is ours; a header that would split the response is dropped.
    if (!header_token_ok(name) || !header_value_ok(val) || iequals(name, "content-length") ||
        iequals(name, "transfer-encoding") || iequals(name, "connection")) {
      spdlog::warn("admin: dropped a response header with an invalid or reserved name or value");
      continue;
    }
    h += name + ": " + val + "\r\n";
  }
  if (!keep_alive) h += "Connection: close\r\n";
  h += "\r\n";
  send(h, head || no_content ? std::string_view{} : std::string_view(res.body));
}

void AdminHttpServer::Impl::Connection::send(std::string_view head, std::string_view body) {
  if (state == State::kClosing) return;  // never into a closed connection
  WriteReq* w = WriteReq::make(head.size() + body.size());
  std::memcpy(w->data, head.data(), head.size());
  if (!body.empty()) std::memcpy(w->data + head.size(), body.data(), body.size());
  w->req.data = this;
  const int r = uv_write(&w->req, as_stream(), &w->buf, 1, [](uv_write_t* req, int status) noexcept {
    auto* wr = reinterpret_cast<WriteReq*>(req);
    auto* c = static_cast<Connection*>(req->data);
    *wr->queued -= wr->len;  // the server outlives its connections' writes
    std::free(wr);
    if (status == UV_ECANCELED) return;  // the handle is closing: touch nothing else
    c->on_write_done(status);
  });
  if (r < 0) {
    std::free(w);
    spdlog::debug("admin: write to {}: {}", peer, uv_error_text(r));
    close();
    return;
  }
  w->queued = &owner->queued_bytes_;
  owner->queued_bytes_ += w->len;
  ++writes_in_flight;
  // What the socket did not take at once waits in libuv's queue, one answer
  // at most (reading pauses meanwhile); arm() watches it move.
}

void AdminHttpServer::Impl::Connection::on_write_done(int status) {
  --writes_in_flight;
  if (state == State::kClosing) return;
  if (status < 0) {
    spdlog::debug("admin: write to {}: {}", peer, uv_error_text(status));
    close();
    return;
  }
  if (state == State::kFinishing) {
    if (writes_in_flight > 0) {
      arm(Wait::kIdle);  // progress
    } else if (peer_eof) {
      close();
    } else {
      start_shutdown();
    }
  } else if (state == State::kReading && !in_message) {
    arm(Wait::kIdle);  // the client reads: idle counts from its last progress
  }
  if (state == State::kReading && reading_paused && uv_stream_get_write_queue_size(as_stream()) == 0) {
    reading_paused = false;
    const std::string pending = std::move(held_input);
    held_input.clear();
    feed(pending.data(), pending.size());  // may pause again, or finish
    // Reading again, also once finished: what the client sends after its
    // last request is read and dropped (see finish()).
    if ((state == State::kReading || state == State::kFinishing) && !reading_paused && !peer_eof) start_reading();
  }
}

void AdminHttpServer::Impl::Connection::finish() {
  if (state != State::kReading) return;
  state = State::kFinishing;
  if (reading_paused && !peer_eof) {
    // Reading stopped while an answer waited; nothing more is parsed now,
    // but what the client still sends must be read (and dropped): bytes
    // left unread make close() send a RST, which throws away the answers
    // still in the kernel's send queue.
    reading_paused = false;
    held_input.clear();
    if (!start_reading()) return;
  }
  arm(Wait::kIdle);
  if (writes_in_flight == 0) start_shutdown();
}

void AdminHttpServer::Impl::Connection::start_shutdown() {
  shutdown_req.data = this;
  const int r = uv_shutdown(&shutdown_req, as_stream(), [](uv_shutdown_t* req, int status) noexcept {
    if (status == UV_ECANCELED) return;  // the handle is closing: touch nothing else
    static_cast<Connection*>(req->data)->on_shutdown(status);
  });
  if (r < 0) close();
}

void AdminHttpServer::Impl::Connection::on_shutdown(int status) {
  if (state == State::kClosing) return;
  if (status < 0 || peer_eof) {
    close();
    return;
  }
  state = State::kLingering;
  arm(Wait::kLinger);
}

void AdminHttpServer::Impl::Connection::close() {
  if (state == State::kClosing) return;
  state = State::kClosing;
  --owner->active_;
  uv_timer_stop(&timer);
  auto on_closed = [](uv_handle_t* h) noexcept {
    auto* c = static_cast<Connection*>(h->data);
    c->owner->on_handle_closed(*c);
  };
  uv_close(as_handle(), on_closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer), on_closed);
}

// ---------------------------------------------------------------------------

AdminHttpServer::AdminHttpServer(uv_loop_t* loop, AdminHandler& handler, AdminLimits limits)
    : impl_(std::make_unique<Impl>(loop, handler, limits)) {}

AdminHttpServer::~AdminHttpServer() {
  // Destroying handles libuv still holds would leave it dangling pointers.
  if (!closed()) {
    std::fputs("AdminHttpServer destroyed with open handles: call stop() and run the loop until closed()\n", stderr);
    std::abort();
  }
}

Status<> AdminHttpServer::listen(const std::string& address) { return impl_->listen(address); }
const std::string& AdminHttpServer::bound() const { return impl_->bound_; }
void AdminHttpServer::stop() { impl_->stop(); }
bool AdminHttpServer::closed() const { return impl_->open_handles_ == 0; }

std::size_t AdminHttpServer::connections() const { return impl_->active_.load(std::memory_order_relaxed); }

}  // namespace isoproxy
