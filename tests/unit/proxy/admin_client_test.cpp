// The admin endpoint's client: address forms, and answers of every shape from
// a scripted server on loopback (good, chunked, read-to-close, error status,
// oversized, cut short, not HTTP, silent).
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <thread>

#include "admin_client.h"
#include "support/peers.h"

namespace isoproxy {
namespace {

using namespace std::chrono_literals;
using test::Conn;
using test::TestServer;

// A server that reads one request (to the blank line), records it, and
// answers with `reply` (then closes), or with nothing if `reply` is empty
// (it waits for the client to give up).
struct Scripted {
  explicit Scripted(std::string reply)
      : server([this, reply = std::move(reply)](Conn& c) {
          std::string req;
          while (req.find("\r\n\r\n") == std::string::npos) {
            auto some = c.recv_some(65536, 5s);
            if (!some || some->empty()) return;
            req.append(some->begin(), some->end());
          }
          {
            std::lock_guard<std::mutex> lk(mu);
            request = req;
          }
          if (reply.empty()) {
            c.recv_some(65536, 10s);  // until the client closes
            return;
          }
          c.send_all(reply);
          c.close();
        }) {}
  AdminAddress address() const { return *parse_admin_address("127.0.0.1:" + std::to_string(server.port())); }
  std::string last_request() {
    std::lock_guard<std::mutex> lk(mu);
    return request;
  }
  std::mutex mu;
  std::string request;
  TestServer server;
};

std::string response(int status, const std::string& reason, const std::string& body, const std::string& extra = "") {
  return "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Type: application/json\r\n" + extra +
         "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

}  // namespace

TEST_CASE("admin client: address forms", "[admin-client]") {
  auto tcp = parse_admin_address("127.0.0.1:9102");
  REQUIRE(tcp);
  CHECK_FALSE(tcp->is_unix);
  CHECK(tcp->host == "127.0.0.1");
  CHECK(tcp->port == 9102);
  CHECK(tcp->text == "127.0.0.1:9102");
  auto v6 = parse_admin_address("[::1]:9102");
  REQUIRE(v6);
  CHECK(v6->host == "::1");
  CHECK(v6->port == 9102);
  auto name = parse_admin_address("localhost:80");
  REQUIRE(name);
  CHECK(name->host == "localhost");
  auto un = parse_admin_address("unix:/run/isoproxy/admin.sock");
  REQUIRE(un);
  CHECK(un->is_unix);
  CHECK(un->path == "/run/isoproxy/admin.sock");

  for (const char* bad : {"", "127.0.0.1", "127.0.0.1:", ":9102", "127.0.0.1:http", "127.0.0.1:65536", "::1:9102",
                          "[::1]", "[::1]9102", "[127.0.0.1]:9102", "unix:", "host name:1", "127.0.0.1:-1"}) {
    INFO(bad);
    auto r = parse_admin_address(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().kind == "bad-address");
  }
  CHECK(parse_admin_address("::1:9102").error().message.find("brackets") != std::string::npos);
  CHECK(parse_admin_address("127.0.0.1:0").error().message.find("port 0") != std::string::npos);
  // Said as what they are: no address, a URL, and a value quoted whole (a trailing space shown).
  CHECK(parse_admin_address("").error().message == "no address given: expected HOST:PORT, [IPV6]:PORT or unix:/PATH");
  CHECK(parse_admin_address("http://127.0.0.1:9102/stats").error().message ==
        "\"http://127.0.0.1:9102/stats\": a URL; give the address alone (127.0.0.1:9102)");
  CHECK(parse_admin_address("127.0.0.1:9102 ").error().message ==
        "\"127.0.0.1:9102 \": the port must be a number 1..65535");
  CHECK_FALSE(parse_admin_address("unix:/" + std::string(200, 'a')));

  // From [admin] listen: wildcards are reached on loopback; "off" is an error.
  CHECK(admin_address_from_listen("0.0.0.0:9102")->text == "127.0.0.1:9102");
  CHECK(admin_address_from_listen("[::]:9102")->host == "::1");
  CHECK(admin_address_from_listen("off").error().kind == "admin-off");
  CHECK(url_encode("EXCHANGE TSAP/1&x=ü") == "EXCHANGE%20TSAP%2F1%26x%3D%C3%BC");
}

TEST_CASE("admin client: a JSON answer, and the request that asked for it", "[admin-client]") {
  Scripted s(response(200, "OK", "{\"sessions\":[]}\n"));
  REQUIRE(s.server.ok());
  auto j = get_json(s.address(), "/sessions?closed=1");
  REQUIRE(j);
  CHECK((*j)["sessions"].is_array());
  const std::string req = s.last_request();
  CHECK(req.rfind("GET /sessions?closed=1 HTTP/1.1\r\n", 0) == 0);
  CHECK(req.find("\r\nHost: 127.0.0.1:") != std::string::npos);
  CHECK(req.find("\r\nConnection: close\r\n") != std::string::npos);
}

TEST_CASE("admin client: chunked and read-to-close bodies", "[admin-client]") {
  {
    Scripted s("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n");
    auto j = get_json(s.address(), "/stats");
    REQUIRE(j);
    CHECK((*j)["a"] == 1);
  }
  {
    Scripted s("HTTP/1.0 200 OK\r\n\r\n{\"b\":2}");
    auto j = get_json(s.address(), "/stats");
    REQUIRE(j);
    CHECK((*j)["b"] == 2);
  }
}

TEST_CASE("admin client: an error status carries the server's message", "[admin-client]") {
  Scripted s(response(400, "Bad Request", "{\"error\": \"state must be one of connecting, established\"}"));
  auto j = get_json(s.address(), "/sessions?state=x");
  REQUIRE_FALSE(j);
  CHECK(j.error().kind == "http");
  CHECK(j.error().message == "400 Bad Request: state must be one of connecting, established");

  Scripted plain(response(502, "Bad Gateway", "<html>\x1b[2J</html>"));
  auto p = get_json(plain.address(), "/stats");
  REQUIRE_FALSE(p);
  CHECK(p.error().message == "502 Bad Gateway: <html>?[2J</html>");
}

TEST_CASE("admin client: what is not a whole, valid, bounded answer is an error", "[admin-client]") {
  {
    Scripted s(response(200, "OK", "{\"sessions\": [1, 2"));
    auto j = get_json(s.address(), "/sessions");
    REQUIRE_FALSE(j);
    CHECK(j.error().kind == "json");
    // Not "at byte 19 of 18": the text stops inside a value.
    CHECK(j.error().message == "the answer to /sessions is not valid JSON: it ends inside a value (after 18 bytes)");
  }
  {
    Scripted s(response(200, "OK", "{\"a\": nope}"));
    auto j = get_json(s.address(), "/stats");
    REQUIRE_FALSE(j);
    CHECK(j.error().message == "the answer to /stats is not valid JSON (at byte 8 of 11)");
    Scripted empty(response(200, "OK", ""));
    auto e = get_json(empty.address(), "/stats");
    REQUIRE_FALSE(e);
    CHECK(e.error().message == "the answer to /stats is empty, not JSON");
  }
  {
    // Content-Length promises more than comes: cut short.
    Scripted s("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"a\":1}");
    auto j = get_json(s.address(), "/stats");
    REQUIRE_FALSE(j);
    CHECK(j.error().kind == "protocol");
    CHECK(j.error().message.find("cut short") != std::string::npos);
  }
  {
    Scripted s("SSH-2.0-OpenSSH_9.2\r\n");
    auto r = http_get(s.address(), "/stats");
    REQUIRE_FALSE(r);
    CHECK(r.error().kind == "protocol");
  }
  {
    // Over the cap, announced by Content-Length or sent as chunks.
    AdminClientOptions o;
    o.max_response_bytes = 1000;
    Scripted big(response(200, "OK", std::string(5000, ' ')));
    auto r = http_get(big.address(), "/sessions", o);
    REQUIRE_FALSE(r);
    CHECK(r.error().kind == "too-large");
    std::string chunks = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 20; ++i) chunks += "64\r\n" + std::string(100, 'x') + "\r\n";
    Scripted chunked(chunks + "0\r\n\r\n");
    auto c = http_get(chunked.address(), "/sessions", o);
    REQUIRE_FALSE(c);
    CHECK(c.error().kind == "too-large");
  }
  {
    // Connected, but no answer: the read timeout.
    AdminClientOptions o;
    o.read_timeout = 300ms;
    Scripted silent("");
    const auto t0 = std::chrono::steady_clock::now();
    auto r = http_get(silent.address(), "/stats", o);
    REQUIRE_FALSE(r);
    CHECK(r.error().kind == "timeout");
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  }
  {
    // A server that closes without a word (a port that accepts and drops).
    TestServer dropper([](Conn& c) { c.close(); });
    auto r = http_get(*parse_admin_address("127.0.0.1:" + std::to_string(dropper.port())), "/stats");
    REQUIRE_FALSE(r);
    CHECK(r.error().kind != "timeout");
  }
}

TEST_CASE("admin client: nothing listening, over TCP and a Unix socket", "[admin-client]") {
  // A port that was just free: bind, read its number, close.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0);
  socklen_t len = sizeof sin;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
  ::close(fd);
  auto r = http_get(*parse_admin_address("127.0.0.1:" + std::to_string(ntohs(sin.sin_port))), "/stats");
  REQUIRE_FALSE(r);
  CHECK(r.error().kind == "connect");
  CHECK(r.error().message == "connection refused");

  const auto path = std::filesystem::temp_directory_path() / ("isoproxy-no-such-" + std::to_string(::getpid()) + ".sock");
  auto u = http_get(*parse_admin_address("unix:" + path.string()), "/stats");
  REQUIRE_FALSE(u);
  CHECK(u.error().kind == "connect");
  CHECK(u.error().message == "no such file or directory");
}

}  // namespace isoproxy
