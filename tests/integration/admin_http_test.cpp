// The admin HTTP server in-process: a uv loop on a thread with a fake
// handler, plain sockets on the test thread. Parsing, keep-alive and
// pipelining, every limit, slow and non-reading clients, a Unix socket and
// random garbage; each test stops the server through a uv_async_t, runs the
// loop until every handle closed and checks uv_loop_close() == 0.
#include "admin_http.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "support/peers.h"

using namespace isoproxy;
using namespace isoproxy::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

// Echoes the request as JSON; "/big?n=N" answers N bytes of 'x'; "/throw" throws.
class EchoHandler : public AdminHandler {
 public:
  AdminResponse handle(const AdminRequest& r) override {
    ++calls;
    if (r.path == "/big") {
      const auto it = r.query.find("n");
      const std::size_t n = it == r.query.end() ? 0 : std::stoul(it->second);
      return AdminResponse{200, "application/octet-stream", std::string(n, 'x'), {}};
    }
    if (r.path == "/throw") throw std::runtime_error("handler bug");
    if (r.path == "/nothing") return AdminResponse{204, "application/json", "ignored", {}};
    json j;
    j["method"] = r.method;
    j["path"] = r.path;
    j["query"] = r.query;
    j["headers"] = r.headers;
    j["body"] = r.body;
    j["peer"] = r.peer;
    AdminResponse res{200, "application/json", j.dump(-1, ' ', false, json::error_handler_t::replace), {{"X-Echo", "1"}}};
    if (r.headers.count("x-custom") != 0) res.headers.emplace_back("Bad\r\nHeader", "x");  // must be dropped
    return res;
  }
  std::atomic<int> calls{0};
};

// The server on its own loop thread; shutdown() stops it from the loop.
class Harness {
 public:
  explicit Harness(AdminLimits limits = {}, const std::string& address = "127.0.0.1:0") {
    REQUIRE(uv_loop_init(&loop_) == 0);
    server_ = std::make_unique<AdminHttpServer>(&loop_, handler_, limits);
    auto st = server_->listen(address);
    if (!st) error_ = st.error().message;
    REQUIRE(uv_async_init(&loop_, &async_, [](uv_async_t* a) noexcept {
              auto* self = static_cast<Harness*>(a->data);
              self->server_->stop();
              uv_close(reinterpret_cast<uv_handle_t*>(a), nullptr);
            }) == 0);
    async_.data = this;
    thread_ = std::thread([this] { uv_run(&loop_, UV_RUN_DEFAULT); });
  }
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;
  ~Harness() {
    if (thread_.joinable()) shutdown();
  }

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  std::uint16_t port() const {
    const auto hp = split_host_port(server_->bound());
    return hp ? hp->port : 0;
  }
  const std::string& bound() const { return server_->bound(); }
  std::size_t connections() const { return server_->connections(); }
  EchoHandler& handler() { return handler_; }

  // Stops the server, runs the loop until nothing is left and closes it;
  // true if every handle closed and uv_loop_close() returned 0.
  bool shutdown() {
    uv_async_send(&async_);
    thread_.join();  // uv_run returns only once every handle's close callback ran
    const bool closed = server_->closed();
    server_.reset();
    return closed && uv_loop_close(&loop_) == 0;
  }

 private:
  uv_loop_t loop_{};
  uv_async_t async_{};
  EchoHandler handler_;
  std::unique_ptr<AdminHttpServer> server_;
  std::string error_;
  std::thread thread_;
};

struct Response {
  int status = 0;
  std::string version;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

// An HTTP/1.1 client over a Conn, with its own parser (not http-parser).
class Client {
 public:
  explicit Client(Conn c) : conn(std::move(c)) {}

  bool send(std::string_view s) { return conn.send_all(s); }

  // One response (Content-Length framed; `head` for a HEAD request), or nullopt.
  std::optional<Response> read(Millis timeout = 5000ms, bool head = false) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!more(deadline)) return std::nullopt;
    }
    Response r;
    std::string_view head_block(buf_.data(), end);
    const auto line_end = head_block.find("\r\n");
    const std::string_view status_line = head_block.substr(0, line_end);
    if (status_line.size() < 12) return std::nullopt;
    r.version = std::string(status_line.substr(0, 8));
    r.status = std::atoi(std::string(status_line.substr(9, 3)).c_str());
    std::string_view rest = line_end == std::string_view::npos ? std::string_view{} : head_block.substr(line_end + 2);
    while (!rest.empty()) {
      const auto e = rest.find("\r\n");
      const std::string_view line = rest.substr(0, e);
      rest = e == std::string_view::npos ? std::string_view{} : rest.substr(e + 2);
      const auto colon = line.find(':');
      if (colon == std::string_view::npos) continue;
      std::string name(line.substr(0, colon));
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      std::string_view v = line.substr(colon + 1);
      while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
      r.headers[name] = std::string(v);
    }
    std::size_t length = 0;
    if (!head && r.headers.count("content-length")) length = std::stoul(r.headers["content-length"]);
    while (buf_.size() < end + 4 + length) {
      if (!more(deadline)) return std::nullopt;
    }
    r.body = buf_.substr(end + 4, length);
    buf_.erase(0, end + 4 + length);
    return r;
  }

  // True if the server closes before the deadline; what it sent meanwhile is kept.
  bool wait_eof(Millis timeout = 5000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (more(deadline)) {
    }
    return conn.eof_seen();
  }
  const std::string& buffered() const { return buf_; }

  Conn conn;

 private:
  bool more(std::chrono::steady_clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    auto chunk = conn.recv_some(65536, left);
    if (!chunk) return false;
    buf_.append(chunk->begin(), chunk->end());
    return true;
  }
  std::string buf_;
};

Client tcp_client(const Harness& h) {
  Conn c = connect_to("127.0.0.1", h.port());
  REQUIRE(c.valid());
  return Client(std::move(c));
}

Conn connect_unix(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Conn::failure("socket");
  Conn c(fd);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::memcpy(sun.sun_path, path.data(), std::min(path.size(), sizeof sun.sun_path - 1));
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&sun), sizeof sun) != 0) {
    return Conn::failure(std::string("connect: ") + std::strerror(errno));
  }
  return c;
}

std::string get(const std::string& target, const std::string& extra = {}) {
  return "GET " + target + " HTTP/1.1\r\nHost: admin\r\n" + extra + "\r\n";
}

}  // namespace

TEST_CASE("admin http: a GET with a query is decoded and echoed", "[admin-http]") {
  Harness h;
  REQUIRE(h.ok());
  Client c = tcp_client(h);
  REQUIRE(c.send(get("/sessions/12?a=b%20c&d=e+f&empty=&flag&pct=100%25&bad=%zz#frag", "X-Custom:  Hi there \r\n")));
  auto r = c.read();
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(r->version == "HTTP/1.1");
  CHECK(r->headers["content-type"] == "application/json");
  CHECK(r->headers["cache-control"] == "no-store");
  CHECK(r->headers["x-echo"] == "1");
  CHECK(r->headers.count("bad") == 0);  // a header with CR/LF is dropped, never sent
  CHECK(r->headers.count("connection") == 0);
  CHECK(r->headers["content-length"] == std::to_string(r->body.size()));
  const json j = json::parse(r->body);
  CHECK(j["method"] == "GET");
  CHECK(j["path"] == "/sessions/12");
  CHECK(j["query"]["a"] == "b c");
  CHECK(j["query"]["d"] == "e f");
  CHECK(j["query"]["empty"] == "");
  CHECK(j["query"]["flag"] == "");
  CHECK(j["query"]["pct"] == "100%");
  CHECK(j["query"]["bad"] == "%zz");
  CHECK(j["headers"]["x-custom"] == "Hi there");
  CHECK(j["headers"]["host"] == "admin");
  CHECK(j["body"] == "");
  CHECK(j["peer"].get<std::string>().rfind("127.0.0.1:", 0) == 0);
  CHECK(h.shutdown());
}

TEST_CASE("admin http: keep-alive serves several requests, pipelined ones in order", "[admin-http]") {
  Harness h;
  REQUIRE(h.ok());
  Client c = tcp_client(h);
  REQUIRE(c.send(get("/one")));
  auto r1 = c.read();
  REQUIRE(r1);
  CHECK(json::parse(r1->body)["path"] == "/one");
  REQUIRE(c.send(get("/two")));
  auto r2 = c.read();
  REQUIRE(r2);
  CHECK(json::parse(r2->body)["path"] == "/two");

  // HEAD: headers only (Content-Length of the body it would have); then
  // three pipelined requests, a POST among them, in one send.
  REQUIRE(c.send("HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n"));
  auto rh = c.read(5000ms, true);
  REQUIRE(rh);
  CHECK(rh->status == 200);
  CHECK(std::stoul(rh->headers["content-length"]) > 0);
  REQUIRE(c.send(get("/p1") + "POST /p2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" +
                 "DELETE /p3?x=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"));
  auto p1 = c.read();
  auto p2 = c.read();
  auto p3 = c.read();
  REQUIRE(p1);
  REQUIRE(p2);
  REQUIRE(p3);
  CHECK(json::parse(p1->body)["path"] == "/p1");
  const json j2 = json::parse(p2->body);
  CHECK(j2["method"] == "POST");
  CHECK(j2["body"] == "hello");
  const json j3 = json::parse(p3->body);
  CHECK(j3["method"] == "DELETE");  // methods are the handler's business
  CHECK(j3["body"] == "abc");
  CHECK(j3["query"]["x"] == "1");
  // The connection stays open: a 204 has no body and no Content-Length.
  REQUIRE(c.send(get("/nothing")));
  auto r4 = c.read();
  REQUIRE(r4);
  CHECK(r4->status == 204);
  CHECK(r4->headers.count("content-length") == 0);
  CHECK(r4->body.empty());
  REQUIRE(c.send(get("/throw")));
  auto r5 = c.read();
  REQUIRE(r5);
  CHECK(r5->status == 500);
  CHECK(h.handler().calls == 8);
  CHECK(h.shutdown());
}

TEST_CASE("admin http: HTTP/1.0 and Connection: close end the connection after the response", "[admin-http]") {
  Harness h;
  REQUIRE(h.ok());
  SECTION("HTTP/1.0") {
    Client c = tcp_client(h);
    REQUIRE(c.send("GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    auto r = c.read();
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->headers["connection"] == "close");
    CHECK(c.wait_eof());
    CHECK(c.buffered().empty());
  }
  SECTION("Connection: close") {
    Client c = tcp_client(h);
    REQUIRE(c.send(get("/last", "Connection: close\r\n") + get("/never")));
    auto r = c.read();
    REQUIRE(r);
    CHECK(json::parse(r->body)["path"] == "/last");
    CHECK(r->headers["connection"] == "close");
    CHECK(c.wait_eof());
    CHECK(c.buffered().empty());  // the pipelined request after it is not answered
  }
  SECTION("a client that half-closes after its request still gets the answer") {
    Client c = tcp_client(h);
    REQUIRE(c.send(get("/half")));
    c.conn.shutdown_write();
    auto r = c.read();
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(c.wait_eof());
  }
  CHECK(h.shutdown());
}

TEST_CASE("admin http: malformed requests get 400 naming the parser error and are closed", "[admin-http]") {
  Harness h;
  REQUIRE(h.ok());
  const std::string tls_hello("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xab\xcd", 13);
  const std::string cases[] = {tls_hello, "GET / HTTP/9.9x\r\n\r\n", "FOO / HTTP/1.1\r\n\r\n",
                               "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                               "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"};
  // A 400 in one text line, then the close.
  auto refused = [&](const std::string& req) {
    INFO(req);
    Client c = tcp_client(h);
    REQUIRE(c.send(req));
    auto r = c.read();
    REQUIRE(r);
    CHECK(r->status == 400);
    CHECK(r->headers["content-type"].rfind("text/plain", 0) == 0);
    CHECK(std::count(r->body.begin(), r->body.end(), '\n') == 1);
    CHECK(r->headers["connection"] == "close");
    CHECK(c.wait_eof());
    return r->body;
  };
  for (const auto& req : cases) {
    INFO(req);
    CHECK(refused(req).find("HPE_") != std::string::npos);
  }
  SECTION("HTTP/1.1 without Host, or with whitespace before a header's colon: 400 (RFC 9112)") {
    CHECK(refused("GET / HTTP/1.1\r\n\r\n") == "an HTTP/1.1 request needs a Host header\n");
    CHECK(refused("GET / HTTP/1.1\r\nHost : a\r\n\r\n") == "whitespace in a header field name (RFC 9112 section 5.1)\n");
    // (HTTP/1.0 may go without Host: "HTTP/1.0 and Connection: close ..." sends none.)
  }
  SECTION("HTTP/2.0 is not served") {
    Client c = tcp_client(h);
    REQUIRE(c.send("GET / HTTP/2.0\r\n\r\n"));
    auto r = c.read();
    REQUIRE(r);
    CHECK(r->status == 505);
    CHECK(c.wait_eof());
  }
  CHECK(h.handler().calls == 0);
  CHECK(h.shutdown());
}

TEST_CASE("admin http: oversized headers get 431, oversized bodies 413", "[admin-http]") {
  AdminLimits limits;
  limits.max_header_bytes = 8192;
  limits.max_body_bytes = 4096;
  Harness h(limits);
  REQUIRE(h.ok());
  SECTION("10 KiB of headers") {
    Client c = tcp_client(h);
    std::string headers;
    for (int i = 0; headers.size() < 10 * 1024; ++i) headers += "X-Filler-" + std::to_string(i) + ": " + std::string(60, 'f') + "\r\n";
    REQUIRE(c.send(get("/", headers)));
    auto r = c.read();
    REQUIRE(r);
    CHECK(r->status == 431);
    CHECK(c.wait_eof());
  }
  SECTION("one long header line, sent a byte at a time is still counted") {
    Client c = tcp_client(h);
    REQUIRE(c.send("GET / HTTP/1.1\r\nX-Long: "));
    bool sent = true;
    for (int i = 0; i < 9000 && sent; i += 500) sent = c.send(std::string(500, 'a'));
    auto r = c.read();
    REQUIRE(r);
    CHECK(r->status == 431);
  }
  SECTION("a big POST body, announced by Content-Length") {
    Client c = tcp_client(h);
    const std::string body(1 << 20, 'b');
    REQUIRE(c.send("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n"));
    c.send(body);  // the server drops what follows its answer; it may already have closed
    auto r = c.read();
    REQUIRE(r);
    CHECK(r->status == 413);
    CHECK(r->headers["connection"] == "close");
    CHECK(c.wait_eof());
  }
  SECTION("a chunked body that grows past the limit") {
    Client c = tcp_client(h);
    std::string chunks;
    for (int i = 0; i < 3; ++i) chunks += "800\r\n" + std::string(0x800, 'c') + "\r\n";
    REQUIRE(c.send("POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks));
    auto r = c.read();
    REQUIRE(r);
    CHECK(r->status == 413);
    CHECK(c.wait_eof());
  }
  SECTION("a body within the limit, after 100-continue") {
    Client c = tcp_client(h);
    REQUIRE(c.send("POST /ok HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4096\r\n\r\n"));
    auto cont = c.read();
    REQUIRE(cont);
    CHECK(cont->status == 100);
    REQUIRE(c.send(std::string(4096, 'k')));
    auto r = c.read();
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(json::parse(r->body)["body"].get<std::string>().size() == 4096);
  }
  CHECK(h.handler().calls <= 1);
  CHECK(h.shutdown());
}

TEST_CASE("admin http: a request that trickles in gets 408, an idle connection is closed", "[admin-http]") {
  AdminLimits limits;
  limits.request_timeout = 300ms;
  limits.idle_timeout = 300ms;
  Harness h(limits);
  REQUIRE(h.ok());
  SECTION("half a request line, then nothing (slow loris)") {
    Client c = tcp_client(h);
    REQUIRE(c.send("GET /slo"));
    auto r = c.read(5000ms);
    REQUIRE(r);
    CHECK(r->status == 408);
    CHECK(c.wait_eof());
  }
  SECTION("no new request on a keep-alive connection") {
    Client c = tcp_client(h);
    REQUIRE(c.send(get("/once")));
    auto r = c.read();
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(c.wait_eof(5000ms));
    CHECK(c.buffered().empty());  // closed without a word
  }
  SECTION("a connection that never sends anything") {
    Client c = tcp_client(h);
    CHECK(c.wait_eof(5000ms));
    CHECK(c.buffered().empty());
  }
  CHECK(h.shutdown());
}

TEST_CASE("admin http: connections over max_connections get a 503 and are closed at once", "[admin-http]") {
  AdminLimits limits;
  limits.max_connections = 2;
  Harness h(limits);
  REQUIRE(h.ok());
  Client a = tcp_client(h);
  Client b = tcp_client(h);
  // Answered requests prove both are accepted before the third connects.
  REQUIRE(a.send(get("/a")));
  REQUIRE(a.read());
  REQUIRE(b.send(get("/b")));
  REQUIRE(b.read());
  Client c = tcp_client(h);
  c.send(get("/c"));
  // Why, not a bare close (or a reset): the limit and when to come back.
  auto refused = c.read();
  REQUIRE(refused);
  CHECK(refused->status == 503);
  CHECK(refused->headers["retry-after"] == "1");
  CHECK(refused->headers["connection"] == "close");
  CHECK(json::parse(refused->body)["error"] ==
        "the admin endpoint has 2 connections open, its limit (idle keep-alive ones close after 30 s); retry later");
  CHECK(c.wait_eof());
  // Once one leaves, a new client is served (the server notices the close
  // on its own schedule: retry until a deadline).
  a.conn.close();
  bool served = false;
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!served && std::chrono::steady_clock::now() < deadline) {
    Client d = tcp_client(h);
    if (!d.send(get("/d"))) continue;
    auto r = d.read(2000ms);
    served = r && r->status == 200;
  }
  CHECK(served);
  CHECK(h.shutdown());
}

TEST_CASE("admin http: a 2 MiB response reaches a slow reader complete", "[admin-http]") {
  Harness h;
  REQUIRE(h.ok());
  Conn conn = connect_to("127.0.0.1", h.port());
  REQUIRE(conn.valid());
  // A small window (not a tiny one: loopback TCP with a window of a few KiB
  // crawls on delayed ACKs) and small reads.
  conn.set_rcvbuf(32768);
  REQUIRE(conn.send_all(get("/big?n=2097152")));
  // Small reads: the server meets a full socket buffer again and again.
  std::string got;
  while (got.find("\r\n\r\n") == std::string::npos || got.size() < got.find("\r\n\r\n") + 4 + 2097152) {
    auto chunk = conn.recv_some(4096, 10s);
    REQUIRE(chunk);
    got.append(chunk->begin(), chunk->end());
  }
  const auto end = got.find("\r\n\r\n");
  CHECK(got.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(got.find("Content-Length: 2097152\r\n") != std::string::npos);
  CHECK(got.size() == end + 4 + 2097152);
  CHECK(got.find_first_not_of('x', end + 4) == std::string::npos);
  CHECK(h.shutdown());
}

TEST_CASE("admin http: a client that never reads is cut off, others are served meanwhile", "[admin-http]") {
  AdminLimits limits;
  limits.write_stall_timeout = 300ms;
  Harness h(limits);
  REQUIRE(h.ok());
  Conn hog = connect_to("127.0.0.1", h.port());
  REQUIRE(hog.valid());
  REQUIRE(hog.send_all(get("/big?n=67108864")));
  // Another client is answered at once while the hog sits on its response.
  {
    Client other = tcp_client(h);
    REQUIRE(other.send(get("/ping")));
    auto r = other.read(5000ms);
    REQUIRE(r);
    CHECK(r->status == 200);
  }
  // The hog's answer does not move for write_stall_timeout: the server
  // closes it (the other client has gone: no connection left).
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (h.connections() > 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
  REQUIRE(h.connections() == 0);
  // The hog finally reads: a prefix of the response, then the server's close.
  std::size_t total = 0;
  for (;;) {
    auto chunk = hog.recv_some(1 << 16, 10s);
    if (!chunk) break;
    total += chunk->size();
  }
  CHECK(hog.eof_seen());
  CHECK(total > 0);
  CHECK(total < (std::size_t{64} << 20));
  CHECK(h.shutdown());
}

TEST_CASE("admin http: answers held by slow readers are bounded together: a large one past the budget gets 503",
          "[admin-http]") {
  AdminLimits limits;
  limits.max_queued_bytes = std::size_t{32} << 20;
  Harness h(limits);
  REQUIRE(h.ok());
  // Far more than the socket buffers take: most of it stays queued.
  constexpr std::size_t kBig = std::size_t{24} << 20;
  // The first slow reader's answer is queued whole (more than socket buffers take).
  Conn slow = connect_to("127.0.0.1", h.port());
  REQUIRE(slow.valid());
  REQUIRE(slow.send_all(get("/big?n=" + std::to_string(kBig))));
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (h.handler().calls.load() < 1 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  REQUIRE(h.handler().calls.load() >= 1);
  // A large answer on a connection of its own, read whole.
  auto ask_big = [&](std::size_t n) {
    Client other = tcp_client(h);
    REQUIRE(other.send(get("/big?n=" + std::to_string(n))));
    return other.read(20000ms);
  };
  // A second large answer would pass the budget: 503, with Retry-After.
  {
    auto r = ask_big(kBig);
    REQUIRE(r);
    CHECK(r->status == 503);
    CHECK(r->headers["retry-after"] == "1");
    CHECK(r->body.find("admin output budget") != std::string::npos);
  }
  // A small answer always goes.
  {
    Client other = tcp_client(h);
    REQUIRE(other.send(get("/ping")));
    auto r = other.read(5000ms);
    REQUIRE(r);
    CHECK(r->status == 200);
  }
  // Once the slow reader has read its answer, a large one goes again.
  std::size_t total = 0;
  while (total < kBig) {
    auto chunk = slow.recv_some(1 << 16, 10s);
    REQUIRE(chunk);
    total += chunk->size();
  }
  {
    auto r = ask_big(kBig);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->body.size() == kBig);
  }
  // An answer larger than the whole budget goes too when nothing else waits.
  {
    constexpr std::size_t kHuge = std::size_t{40} << 20;
    auto r = ask_big(kHuge);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->body.size() == kHuge);
  }
  CHECK(h.shutdown());
}

TEST_CASE("admin http: an answer larger than any buffer reaches a client that reads it, however long it pauses between reads",
          "[admin-http]") {
  // 48 MiB, more than socket buffers and libuv's queue would ever be cut at
  // before (16 MiB), read with pauses: the answer moves between the server's
  // looks, so it is never cut however long it takes.
  AdminLimits limits;
  limits.write_stall_timeout = 2000ms;  // far above the reader's pauses, on a loaded machine too
  Harness h(limits);
  REQUIRE(h.ok());
  Conn conn = connect_to("127.0.0.1", h.port());
  REQUIRE(conn.valid());
  constexpr std::size_t kSize = std::size_t{48} << 20;
  REQUIRE(conn.send_all(get("/big?n=" + std::to_string(kSize))));
  std::string head;
  std::size_t body = 0, since_pause = 0, end = std::string::npos;
  while (end == std::string::npos || body < kSize) {
    auto chunk = conn.recv_some(1 << 16, 10s);
    REQUIRE(chunk);
    if (end == std::string::npos) {
      head.append(chunk->begin(), chunk->end());
      end = head.find("\r\n\r\n");
      if (end != std::string::npos) body = head.size() - end - 4;
    } else {
      body += chunk->size();
      since_pause += chunk->size();
    }
    if (since_pause >= (std::size_t{1} << 20) && body < kSize / 4) {
      since_pause = 0;
      std::this_thread::sleep_for(150ms);  // the reader's pace, not a wait for the server
    }
  }
  CHECK(head.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(body == kSize);
  CHECK(h.shutdown());
}

TEST_CASE("admin http: pipelined requests wait while an answer is unread, then all are answered in order", "[admin-http]") {
  Harness h;
  REQUIRE(h.ok());
  Client c = tcp_client(h);
  // Six requests at once, each answered with 8 MiB (more than the socket
  // buffers take), and nothing read yet.
  constexpr int kRequests = 6;
  constexpr std::size_t kSize = 8 << 20;
  std::string burst;
  for (int i = 0; i < kRequests; ++i) burst += get("/big?n=" + std::to_string(kSize) + "&i=" + std::to_string(i));
  REQUIRE(c.send(burst));
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (h.handler().calls.load() < 1 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  REQUIRE(h.handler().calls.load() >= 1);
  // A round trip on another connection: the server has been through its
  // loop since the burst arrived, and has not answered the whole burst (it
  // would hold 48 MiB for a client that reads nothing).
  Client other = tcp_client(h);
  REQUIRE(other.send(get("/ping")));
  REQUIRE(other.read());
  CHECK(h.handler().calls.load() <= 3);
  // Reading, the client gets every answer, in order, whole.
  for (int i = 0; i < kRequests; ++i) {
    INFO(i);
    auto r = c.read(10000ms);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->body.size() == kSize);
  }
  CHECK(h.handler().calls.load() == kRequests + 1);
  CHECK(h.shutdown());
}

TEST_CASE("admin http: bytes a client sends after its last request are read, so answers are not lost to a reset",
          "[admin-http]") {
  // The last request (Connection: close) arrives while an earlier answer is
  // unread, so reading has stopped; more bytes follow it. They must be read
  // and dropped: bytes left unread when the server closes make the kernel
  // send a RST, which throws away whatever answers are still in its queue.
  Harness h;
  REQUIRE(h.ok());
  Client c = tcp_client(h);
  constexpr std::size_t kSize = 8 << 20;  // more than the socket buffers take
  REQUIRE(c.send(get("/big?n=" + std::to_string(kSize)) + get("/last", "Connection: close\r\n")));
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (h.handler().calls.load() < 1 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  REQUIRE(h.handler().calls.load() == 1);  // the first answered, reading stopped behind it
  REQUIRE(c.send(std::string(100, 'X')));   // after the last request: never parsed
  auto big = c.read(10000ms);
  REQUIRE(big);
  CHECK(big->body.size() == kSize);
  auto last = c.read();
  REQUIRE(last);
  CHECK(last->status == 200);
  CHECK(c.wait_eof());
  // The server lingers (kLingerTimeout), then closes: with nothing unread,
  // quietly, not with a reset.
  const auto closed_by = std::chrono::steady_clock::now() + 10s;
  while (h.connections() > 0 && std::chrono::steady_clock::now() < closed_by) std::this_thread::sleep_for(10ms);
  REQUIRE(h.connections() == 0);
  int error = 0;
  socklen_t len = sizeof error;
  REQUIRE(getsockopt(c.conn.fd(), SOL_SOCKET, SO_ERROR, &error, &len) == 0);
  CHECK(error == 0);
  CHECK(h.shutdown());
}

TEST_CASE("admin http: a Unix socket replaces a stale one, is 0660 and is removed at stop", "[admin-http]") {
  char dir_template[] = "/tmp/admin-http-test-XXXXXX";
  REQUIRE(::mkdtemp(dir_template) != nullptr);
  const std::string dir = dir_template;
  const std::string path = dir + "/admin.sock";
  {
    // A socket file whose server is gone.
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::memcpy(sun.sun_path, path.data(), path.size());
    REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&sun), sizeof sun) == 0);
    ::close(fd);
  }
  {
    Harness h({}, "unix:" + path);
    INFO(h.error());
    REQUIRE(h.ok());
    CHECK(h.bound() == "unix:" + path);
    struct stat st{};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0660);
    Client c(connect_unix(path));
    REQUIRE(c.conn.valid());
    REQUIRE(c.send(get("/over-unix?q=1")));
    auto r = c.read();
    REQUIRE(r);
    CHECK(r->status == 200);
    const json j = json::parse(r->body);
    CHECK(j["peer"] == "unix");
    CHECK(j["path"] == "/over-unix");
    {
      // A second server on the same live path is refused, and leaves no handle open.
      uv_loop_t loop;
      REQUIRE(uv_loop_init(&loop) == 0);
      EchoHandler handler;
      {
        AdminHttpServer second(&loop, handler);
        auto st2 = second.listen("unix:" + path);
        REQUIRE_FALSE(st2);
        CHECK(st2.error().message.find("another server") != std::string::npos);
        CHECK(second.closed());
      }
      CHECK(uv_loop_close(&loop) == 0);
    }
    CHECK(h.shutdown());
  }
  CHECK_FALSE(std::filesystem::exists(path));
  // A path that is not a socket is never deleted.
  {
    std::ofstream(path) << "not a socket";
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    EchoHandler handler;
    {
      AdminHttpServer s(&loop, handler);
      CHECK_FALSE(s.listen("unix:" + path));
    }
    CHECK(std::filesystem::exists(path));
    CHECK(uv_loop_close(&loop) == 0);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("admin http: listen addresses", "[admin-http]") {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  EchoHandler handler;
  for (const char* bad : {"127.0.0.1", "nonsense:80", "[::1]", "127.0.0.1:99999", "unix:", ""}) {
    INFO(bad);
    AdminHttpServer s(&loop, handler);
    CHECK_FALSE(s.listen(bad));
    CHECK(s.closed());
  }
  CHECK(uv_loop_close(&loop) == 0);

  Harness v6({}, "[::1]:0");
  if (!v6.ok()) {
    WARN("no IPv6 loopback: " << v6.error());
    CHECK(v6.shutdown());
    return;
  }
  CHECK(v6.bound().rfind("[::1]:", 0) == 0);
  Conn conn = connect_to("::1", v6.port());
  REQUIRE(conn.valid());
  Client c(std::move(conn));
  REQUIRE(c.send(get("/v6")));
  auto r = c.read();
  REQUIRE(r);
  CHECK(json::parse(r->body)["peer"].get<std::string>().rfind("[::1]:", 0) == 0);
  CHECK(v6.shutdown());
}

TEST_CASE("admin http: 200 random garbage requests never crash the server", "[admin-http]") {
  AdminLimits limits;
  limits.max_header_bytes = 2048;
  limits.max_body_bytes = 512;
  Harness h(limits);
  REQUIRE(h.ok());
  std::mt19937 rng(20240611);
  const std::string prefixes[] = {"", "GET / HTTP/1.1\r\n", "POST /x?a=%4", "GET /", "PUT / HTTP/1.1\r\nContent-Length: 9\r\n",
                                  "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"};
  const std::string alphabet = "\r\n :%+?&=/HTTPGET0123456789abcdefXx\t\x7f\x80\xff";
  int answered = 0;
  for (int i = 0; i < 200; ++i) {
    std::string req = prefixes[rng() % std::size(prefixes)];
    const std::size_t n = 1 + rng() % 3000;
    for (std::size_t k = 0; k < n; ++k) {
      req += (rng() % 2) != 0 ? alphabet[rng() % alphabet.size()] : static_cast<char>(rng() & 0xFF);
    }
    Client c = tcp_client(h);
    c.send(req);              // the server may close first: that is fine
    c.conn.shutdown_write();  // our EOF ends what the server would otherwise wait for
    c.wait_eof(5000ms);
    if (c.buffered().rfind("HTTP/1.1 ", 0) == 0) ++answered;
  }
  CHECK(answered > 0);
  // Still serving.
  Client c = tcp_client(h);
  REQUIRE(c.send(get("/alive")));
  auto r = c.read();
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(h.shutdown());
}
