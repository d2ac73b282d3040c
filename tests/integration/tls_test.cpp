// TLS on either leg through the real binary: against Debian's `openssl
// s_server` and `openssl s_client` (plaintext to TLS, TLS to plaintext, TLS
// to TLS, the vendor CC repaired across TLS), mutual TLS refusals, upstream
// verification, the handshake timeout, 1 GiB through TLS on both legs, reload
// with a bad certificate, and the example pair of isoproxies. Certificates
// are made at test time (tests/support/tls_pki.h).
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>
#include <sys/socket.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include "codec/x224.h"
#include "support/http.h"
#include "support/peers.h"
#include "support/piped_process.h"
#include "support/proxy_process.h"
#include "support/tls_pki.h"

using namespace isoproxy::test;
namespace codec = isoproxy::codec;
using namespace std::chrono_literals;

namespace {

struct Certs {
  TestPki pki;
  TestPki::Files ca, proxy, upstream, client, other_ca, stranger, expired;
  Certs() {
    ca = pki.make_ca("ca");
    proxy = pki.make_leaf("proxy", "ca", "proxy.test", {"DNS:proxy.test", "IP:127.0.0.1"});
    upstream = pki.make_leaf("upstream", "ca", "upstream.test", {"DNS:upstream.test", "IP:127.0.0.1"});
    client = pki.make_leaf("client", "ca", "client.test", {"DNS:client.test"});
    other_ca = pki.make_ca("other-ca");
    stranger = pki.make_leaf("stranger", "other-ca", "stranger.test", {"DNS:stranger.test", "IP:127.0.0.1"});
    expired = pki.make_leaf("expired", "ca", "expired.test", {"DNS:expired.test"}, -30, -1);
  }
};

std::string q(const std::string& s) { return "\"" + s + "\""; }

const std::string& openssl_binary() {
  static const std::string path = find_on_path("openssl");
  return path;
}

// A listener with the filters that repair the vendor CC and annotate.
std::string listener_config(const std::string& name, std::uint16_t upstream_port, const std::string& tables) {
  return "[[listener]]\nname = " + q(name) + "\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
         std::to_string(upstream_port) + "\"\nfilters = [\"annotate\", \"reserved\"]\n" + tables +
         "\n[filter.annotate]\nkind = \"tsap-annotate\"\n[filter.reserved]\nkind = \"tpkt-reserved\"\n";
}

std::string server_tls(const TestPki::Files& f, const std::string& extra = "") {
  return "[listener.tls]\ncert = " + q(f.cert) + "\nkey = " + q(f.key) + "\n" + extra;
}

std::string upstream_tls(const std::string& body) { return "[listener.upstream_tls]\n" + body; }

// `openssl s_server` as the far MTA: its standard input is what it sends, its
// standard output what it received (after its own connection report).
std::unique_ptr<PipedProcess> start_s_server(const TestPki::Files& f, std::uint16_t& port,
                                             const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv = {openssl_binary(), "s_server", "-accept", "127.0.0.1:0", "-cert", f.cert,
                                   "-key", f.key, "-naccept", "1"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto p = std::make_unique<PipedProcess>(std::move(argv));
  if (!p->started()) return p;
  if (auto m = p->wait_for_out_text(std::regex(R"(ACCEPT 127\.0\.0\.1:(\d+))"), 10s)) port = static_cast<std::uint16_t>(std::stoi((*m)[1]));
  return p;
}

// `openssl s_client` as the client MTA: quiet, so its standard output is
// exactly what it received.
std::unique_ptr<PipedProcess> start_s_client(const Certs& c, std::uint16_t port, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv = {openssl_binary(), "s_client", "-connect", "127.0.0.1:" + std::to_string(port),
                                   "-quiet", "-CAfile", c.ca.cert, "-verify_return_error", "-servername", "proxy.test",
                                   "-verify_hostname", "proxy.test"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return std::make_unique<PipedProcess>(std::move(argv));
}

ByteVec prefix(const ByteVec& v, std::size_t n) { return ByteVec(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(std::min(n, v.size()))); }

ByteVec cc_for(const ByteVec& cr, std::uint8_t reserved) {
  auto d = codec::decode_frame(codec::Bytes(cr));
  return make_cc_reply(d->tpdu, 0x0029, reserved);
}

// The fields of the close line of session `id` ("[S<id>] close ...").
std::map<std::string, std::string> close_fields(ProxyProcess& p, int id, std::chrono::milliseconds timeout = 10s) {
  auto line = p.wait_for_line(std::regex("\\[S" + std::to_string(id) + "\\] close reason="), timeout);
  if (!line) return {};
  return parse_fields(*line);
}

// ---------------------------------------------------------------------------
// Test-side TLS with the OpenSSL API, blocking, every call bounded by socket
// timeouts.

struct CtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using CtxPtr = std::unique_ptr<SSL_CTX, CtxFree>;

CtxPtr client_ctx(const Certs& c, const TestPki::Files* own = nullptr) {
  CtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_load_verify_file(ctx.get(), c.ca.cert.c_str());
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (own != nullptr) {
    SSL_CTX_use_certificate_chain_file(ctx.get(), own->cert.c_str());
    SSL_CTX_use_PrivateKey_file(ctx.get(), own->key.c_str(), SSL_FILETYPE_PEM);
  }
  return ctx;
}

CtxPtr server_ctx(const TestPki::Files& f) {
  CtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  SSL_CTX_use_certificate_chain_file(ctx.get(), f.cert.c_str());
  SSL_CTX_use_PrivateKey_file(ctx.get(), f.key.c_str(), SSL_FILETYPE_PEM);
  return ctx;
}

void set_timeouts(int fd, int seconds) {
  timeval tv{seconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

class TlsConn {
 public:
  // Connects to 127.0.0.1:port and completes the handshake (SNI and host check: `name`).
  // With `rcvbuf`, the socket's receive buffer is set that small before it
  // connects, so that the window it offers stays small.
  static std::unique_ptr<TlsConn> connect(std::uint16_t port, SSL_CTX* ctx, const std::string& name, std::string& err,
                                          int rcvbuf = 0) {
    int fd = -1;
    if (rcvbuf > 0) {
      fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
      auto a = make_sockaddr("127.0.0.1", port);
      if (fd < 0 || !a || ::connect(fd, a->get(), a->length) != 0) {
        err = std::string("connect: ") + std::strerror(errno);
        if (fd >= 0) ::close(fd);
        return nullptr;
      }
    } else {
      Conn c = connect_to("127.0.0.1", port);
      if (!c.valid()) {
        err = c.error();
        return nullptr;
      }
      fd = ::dup(c.fd());
    }
    set_timeouts(fd, 30);
    SSL* ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, name.c_str());
    SSL_set1_host(ssl, name.c_str());
    auto t = std::unique_ptr<TlsConn>(new TlsConn(fd, ssl));
    if (SSL_connect(ssl) != 1) {
      err = "SSL_connect: " + errors();
      return nullptr;
    }
    return t;
  }
  // Accepts one connection on `listen_fd` and completes the handshake.
  static std::unique_ptr<TlsConn> accept(int listen_fd, SSL_CTX* ctx, std::string& err) {
    pollfd p{listen_fd, POLLIN, 0};
    if (::poll(&p, 1, 30000) != 1) {
      err = "no connection";
      return nullptr;
    }
    const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      err = "accept failed";
      return nullptr;
    }
    set_timeouts(fd, 30);
    SSL* ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    auto t = std::unique_ptr<TlsConn>(new TlsConn(fd, ssl));
    if (SSL_accept(ssl) != 1) {
      err = "SSL_accept: " + errors();
      return nullptr;
    }
    return t;
  }
  ~TlsConn() {
    SSL_free(ssl_);
    ::close(fd_);
  }

  bool write_all(const std::uint8_t* data, std::size_t n) {
    std::size_t w = 0;
    return n == 0 || (SSL_write_ex(ssl_, data, n, &w) == 1 && w == n);
  }
  bool write_all(const ByteVec& v) { return write_all(v.data(), v.size()); }
  bool read_exact(std::uint8_t* data, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
      std::size_t r = 0;
      if (SSL_read_ex(ssl_, data + got, n - got, &r) != 1) return false;
      got += r;
    }
    return true;
  }
  std::optional<ByteVec> read_frame() {
    ByteVec f(4);
    if (!read_exact(f.data(), 4)) return std::nullopt;
    const std::size_t len = (static_cast<std::size_t>(f[2]) << 8) | f[3];
    if (len < 4) return std::nullopt;
    f.resize(len);
    if (!read_exact(f.data() + 4, len - 4)) return std::nullopt;
    return f;
  }
  // True once the peer has closed (close_notify or EOF) with nothing more to read.
  bool read_closed() {
    std::uint8_t b;
    std::size_t r = 0;
    return SSL_read_ex(ssl_, &b, 1, &r) != 1;
  }
  void shutdown() { SSL_shutdown(ssl_); }
  // A TLS 1.3 KeyUpdate asking the peer to update too (it must answer), sent
  // with `data`; false once the socket stops taking bytes (the send timeout).
  bool key_update_with(const ByteVec& data) {
    return SSL_key_update(ssl_, SSL_KEY_UPDATE_REQUESTED) == 1 && write_all(data);
  }
  int fd() const { return fd_; }
  // TLS 1.2: asks the peer to renegotiate; true if the new handshake completed.
  bool renegotiate() { return SSL_renegotiate(ssl_) == 1 && SSL_do_handshake(ssl_) == 1; }
  void set_send_timeout(int seconds) {
    timeval tv{seconds, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }

  std::string peer_subject() const {
    X509* x = SSL_get0_peer_certificate(ssl_);
    if (x == nullptr) return {};
    BIO* b = BIO_new(BIO_s_mem());
    X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
    char* data = nullptr;
    const long n = BIO_get_mem_data(b, &data);
    std::string s(data, static_cast<std::size_t>(n));
    BIO_free(b);
    return s;
  }

 private:
  TlsConn(int fd, SSL* ssl) : fd_(fd), ssl_(ssl) {}
  static std::string errors() {
    std::string out;
    while (const unsigned long e = ERR_get_error()) {
      char buf[256];
      ERR_error_string_n(e, buf, sizeof buf);
      out += std::string(out.empty() ? "" : "; ") + buf;
    }
    return out.empty() ? "failed" : out;
  }
  int fd_;
  SSL* ssl_;
};

// A listening socket on 127.0.0.1:0.
struct Listening {
  int fd = -1;
  std::uint16_t port = 0;
  Listening() {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    auto a = make_sockaddr("127.0.0.1", 0);
    ::bind(fd, a->get(), a->length);
    ::listen(fd, 8);
    SockAddr b;
    b.length = sizeof b.storage;
    ::getsockname(fd, b.get(), &b.length);
    port = address_port(b.get());
  }
  ~Listening() { ::close(fd); }
};

}  // namespace

TEST_CASE("tls: openssl s_client through isoproxy to a plaintext vendor MTA, CC repaired", "[tls][integration]") {
  REQUIRE_FALSE(openssl_binary().empty());
  Certs c;
  FrameLog seen;
  TestServer upstream(responder_handler({.reserved = 0x11, .log = &seen}));
  REQUIRE(upstream.ok());
  ProxyProcess proxy(listener_config("tls-in", upstream.port(), server_tls(c.proxy)));
  REQUIRE(proxy.started());
  auto port = proxy.listen_port("tls-in");
  REQUIRE(port);
  // The listener says what it presents.
  CHECK(proxy.wait_for_line(std::regex(R"(listener tls-in: TLS certificate "CN=proxy.test,O=isoproxy tests" \(issuer "CN=ca,O=isoproxy tests"\), valid until \S+; client certificates off)")));

  auto cli = start_s_client(c, *port);
  REQUIRE(cli->started());
  const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  REQUIRE(cli->write(cr));
  // The CR arrives in plaintext, byte for byte.
  REQUIRE(seen.wait_size(1, 10s));
  CHECK(seen.frames()[0] == cr);
  // The vendor's CC (reserved 0x11) reaches s_client repaired, through TLS.
  const ByteVec cc = cc_for(cr, 0x00);
  REQUIRE(cli->wait_for_out_size(cc.size(), 10s));
  CHECK(prefix(cli->out(), cc.size()) == cc);
  const ByteVec dt = make_dt("IPM heading and body");
  REQUIRE(cli->write(dt));
  REQUIRE(cli->wait_for_out_size(cc.size() + dt.size(), 10s));
  CHECK(cli->out() == [&] { ByteVec all = cc; all.insert(all.end(), dt.begin(), dt.end()); return all; }());
  // A DR ends it: the responder closes, isoproxy sends close_notify and FIN,
  // and s_client ends.
  REQUIRE(cli->write(make_dr(0x80)));
  const auto f = close_fields(proxy, 1);
  INFO(proxy.text());
  CHECK(f.at("reason") == "upstream-closed");
  CHECK(f.at("client_tls") == "TLSv1.3");
  CHECK_FALSE(f.at("client_cipher").empty());
  CHECK(f.at("client_verify") == "off");
  CHECK(f.count("upstream_tls") == 0);
  CHECK(f.at("filters").find("reserved.repaired=1") != std::string::npos);
  CHECK(f.at("c2u_frames") == "3");
  CHECK(cli->wait_exit(10s));
}

TEST_CASE("tls: plaintext client through isoproxy to openssl s_server, CC repaired", "[tls][integration]") {
  REQUIRE_FALSE(openssl_binary().empty());
  Certs c;
  std::uint16_t sport = 0;
  auto srv = start_s_server(c.upstream, sport);
  REQUIRE(srv->started());
  REQUIRE(sport != 0);
  // The upstream's IP is checked in its certificate (no server_name).
  ProxyProcess proxy("[global]\naccess_log = \"stderr\"\n" +
                     listener_config("tls-out", sport, upstream_tls("ca = " + q(c.ca.cert) + "\n")));
  REQUIRE(proxy.started());
  auto port = proxy.listen_port("tls-out");
  REQUIRE(port);

  Conn conn = connect_to("127.0.0.1", *port);
  REQUIRE(conn.valid());
  const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  REQUIRE(conn.send_all(cr));
  auto at = srv->wait_for_out_bytes(cr, 0, 10s);
  INFO(proxy.text());
  REQUIRE(at);
  REQUIRE(srv->write(vendor_cc()));
  auto cc = conn.recv_frame(10s);
  REQUIRE(cc);
  CHECK(*cc == vendor_cc_repaired());
  const ByteVec up = make_dt("to the MTA"), down = make_dt("from the MTA");
  REQUIRE(conn.send_all(up));
  CHECK(srv->wait_for_out_bytes(up, *at + cr.size(), 10s));
  REQUIRE(srv->write(down));
  auto got = conn.recv_frame(10s);
  REQUIRE(got);
  CHECK(*got == down);
  conn.shutdown_write();
  CHECK(conn.wait_eof(10s));
  const auto f = close_fields(proxy, 1);
  CHECK(f.at("reason") == "client-closed");
  CHECK(f.at("upstream_tls") == "TLSv1.3");
  CHECK(f.at("upstream_peer") == "CN=upstream.test,O=isoproxy tests");
  CHECK(f.at("upstream_verify") == "ok");
  CHECK(f.count("client_tls") == 0);
  CHECK(f.at("filters").find("reserved.repaired=1") != std::string::npos);
  // The same per leg in the session's JSON (access log, admin endpoint).
  auto json_line = proxy.wait_for_line(std::regex(R"(^\{"age_s")"));
  REQUIRE(json_line);
  const auto j = nlohmann::json::parse(*json_line);
  CHECK(j["client_tls"].is_null());
  CHECK(j["upstream_tls"]["state"] == "established");
  CHECK(j["upstream_tls"]["version"] == "TLSv1.3");
  CHECK(j["upstream_tls"]["peer_subject"] == "CN=upstream.test,O=isoproxy tests");
  CHECK(j["upstream_tls"]["peer_issuer"] == "CN=ca,O=isoproxy tests");
  CHECK(j["upstream_tls"]["verify"] == "ok");
  CHECK(j["upstream_tls"]["sni"].is_null());  // an IP is never sent as SNI
  CHECK(j["upstream_tls"]["cipher"].is_string());
  // The closed-session list renders the session it kept when asked, its TLS
  // state freed long before: the same text as the access log wrote at close.
  auto aport = admin_port(proxy);
  REQUIRE(aport);
  const auto kept = http(*aport, "GET", "/sessions?closed=1");
  REQUIRE(kept.status == 200);
  const auto list = nlohmann::json::parse(kept.body);
  REQUIRE(list["sessions"].size() == 1);
  CHECK(list["sessions"][0].dump() == j.dump());
  const auto one = http(*aport, "GET", "/sessions/" + std::to_string(j["id"].get<std::uint64_t>()));
  REQUIRE(one.status == 200);
  CHECK(one.body == *json_line + "\n");
}

TEST_CASE("tls: SIGTERM during the upstream handshake: the handshake ends, the CR goes out, then the drain",
          "[tls][integration][drain]") {
  REQUIRE_FALSE(openssl_binary().empty());
  Certs c;
  std::uint16_t sport = 0;
  auto srv = start_s_server(c.upstream, sport);
  REQUIRE(srv->started());
  REQUIRE(sport != 0);
  // Both deadlines far beyond the test's: the drain must not wait for them.
  ProxyProcess proxy("[global]\ndrain_timeout = \"30s\"\n" +
                     listener_config("tls-out", sport, "handshake_timeout = \"30s\"\n" +
                                                           upstream_tls("ca = " + q(c.ca.cert) + "\nhandshake_timeout = \"30s\"\n")));
  auto port = proxy.listen_port("tls-out");
  REQUIRE(port);
  // The upstream stopped: its kernel completes the TCP handshake, nobody answers the ClientHello.
  REQUIRE(::kill(srv->pid(), SIGSTOP) == 0);
  Conn conn = connect_to("127.0.0.1", *port);
  REQUIRE(conn.valid());
  const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  REQUIRE(conn.send_all(cr));
  // The CR has reached isoproxy and waits for the handshake.
  auto aport = admin_port(proxy);
  REQUIRE(aport);
  bool read = false;
  for (int i = 0; i < 200 && !read; ++i) {
    const auto r = http(*aport, "GET", "/sessions");
    const auto j = nlohmann::json::parse(r.body, nullptr, false);
    read = r.status == 200 && !j.is_discarded() && j["sessions"].size() == 1 &&
           j["sessions"][0]["to_upstream"]["bytes"] == cr.size();
    if (!read) std::this_thread::sleep_for(10ms);
  }
  REQUIRE(read);
  REQUIRE(proxy.signal(SIGTERM));
  REQUIRE(proxy.wait_for_line(std::regex(R"(SIGTERM: draining 1 session)"), 5s));
  REQUIRE(::kill(srv->pid(), SIGCONT) == 0);
  INFO(proxy.text());
  CHECK(srv->wait_for_out_bytes(cr, 0, 10s));
  CHECK(proxy.wait_exit(10s) == 0);
  const auto f = close_fields(proxy, 1);
  CHECK(f.at("reason") == "drain");
  CHECK(f.at("upstream_tls") == "TLSv1.3");
}

TEST_CASE("tls: bytes held for an upstream handshake that fails are not counted as relayed", "[tls][integration]") {
  Certs c;
  // Accepts, reads the ClientHello, never answers.
  TestServer silent([](Conn& conn) { (void)conn.wait_eof(10s); });
  REQUIRE(silent.ok());
  ProxyProcess proxy(listener_config("stall", silent.port(),
                                     upstream_tls("ca = " + q(c.ca.cert) + "\nhandshake_timeout = \"300ms\"\n")));
  auto port = proxy.listen_port("stall");
  REQUIRE(port);
  Conn conn = connect_to("127.0.0.1", *port);
  REQUIRE(conn.valid());
  const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  const ByteVec dt = make_dt(std::string(100, 'x'));
  ByteVec both = cr;
  both.insert(both.end(), dt.begin(), dt.end());
  REQUIRE(conn.send_all(both));
  CHECK(conn.wait_eof(10s));
  const auto f = close_fields(proxy, 1);
  INFO(proxy.text());
  CHECK(f.at("reason") == "tls-handshake-timeout: upstream: no TLS handshake within 300ms");
  auto aport = admin_port(proxy);
  REQUIRE(aport);
  const auto st = nlohmann::json::parse(http(*aport, "GET", "/stats").body);
  CHECK(st["bytes"]["to_upstream"] == 0);
  CHECK(st["bytes"]["to_client"] == 0);
}

TEST_CASE("tls: openssl s_client through isoproxy to openssl s_server, TLS on both legs", "[tls][integration]") {
  REQUIRE_FALSE(openssl_binary().empty());
  Certs c;
  std::uint16_t sport = 0;
  // s_server asks for a client certificate: isoproxy presents its own.
  auto srv = start_s_server(c.upstream, sport, {"-Verify", "1", "-CAfile", c.ca.cert});
  REQUIRE(sport != 0);
  ProxyProcess proxy(listener_config(
      "both", sport,
      server_tls(c.proxy, "client_ca = " + q(c.ca.cert) + "\n") +
          upstream_tls("ca = " + q(c.ca.cert) + "\nserver_name = \"upstream.test\"\ncert = " + q(c.proxy.cert) +
                       "\nkey = " + q(c.proxy.key) + "\n")));
  REQUIRE(proxy.started());
  auto port = proxy.listen_port("both");
  REQUIRE(port);
  auto cli = start_s_client(c, *port, {"-cert", c.client.cert, "-key", c.client.key});
  const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  REQUIRE(cli->write(cr));
  auto at = srv->wait_for_out_bytes(cr, 0, 10s);
  INFO(proxy.text());
  INFO(srv->err());
  REQUIRE(at);
  REQUIRE(srv->write(vendor_cc()));
  REQUIRE(cli->wait_for_out_size(vendor_cc_repaired().size(), 10s));
  CHECK(cli->out() == vendor_cc_repaired());
  cli->kill();  // the client vanishes: the session ends, both legs closed
  const auto f = close_fields(proxy, 1);
  CHECK((f.at("reason") == "client-closed" || f.at("reason") == "client-reset"));
  CHECK(f.at("client_tls") == "TLSv1.3");
  CHECK(f.at("client_peer") == "CN=client.test,O=isoproxy tests");
  CHECK(f.at("client_verify") == "ok");
  CHECK(f.at("upstream_tls") == "TLSv1.3");
  CHECK(f.at("upstream_peer") == "CN=upstream.test,O=isoproxy tests");
  CHECK(f.at("upstream_verify") == "ok");
  CHECK(f.at("filters").find("reserved.repaired=1") != std::string::npos);
}

TEST_CASE("tls: mutual TLS refuses a missing, a foreign and an expired client certificate", "[tls][integration]") {
  REQUIRE_FALSE(openssl_binary().empty());
  Certs c;
  TestServer upstream(responder_handler({.reserved = 0x11}));
  ProxyProcess proxy(listener_config("mtls", upstream.port(),
                                     server_tls(c.proxy, "client_ca = " + q(c.ca.cert) + "\nverify_client = \"require\"\n")));
  REQUIRE(proxy.started());
  auto port = proxy.listen_port("mtls");
  REQUIRE(port);
  struct Case {
    const char* what;
    std::vector<std::string> args;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {"no certificate", {}, "tls-verify-failed: client: no client certificate"},
      {"another CA", {"-cert", c.stranger.cert, "-key", c.stranger.key},
       "tls-verify-failed: client: unable to get local issuer certificate (depth 0, CN=stranger.test,O=isoproxy tests)"},
      {"expired", {"-cert", c.expired.cert, "-key", c.expired.key},
       "tls-verify-failed: client: certificate has expired (depth 0, CN=expired.test,O=isoproxy tests)"},
  };
  int id = 0;
  for (const auto& k : cases) {
    INFO(k.what);
    ++id;
    auto cli = start_s_client(c, *port, k.args);
    REQUIRE(cli->write(make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
    const auto f = close_fields(proxy, id);
    INFO(proxy.text());
    REQUIRE_FALSE(f.empty());
    CHECK(f.at("reason") == k.reason);
    CHECK(f.at("upstream") == "-");  // never connected
    CHECK(f.at("c2u_bytes") == "0");
    CHECK(f.at("client_tls") == "failed");
    // s_client hears why (an alert) and ends.
    CHECK(cli->wait_exit(10s));
    CHECK(cli->out().empty());
  }
  CHECK(upstream.accepted_count() == 0);  // nothing relayed, not even a connection
  // The CA's own client gets through.
  auto cli = start_s_client(c, *port, {"-cert", c.client.cert, "-key", c.client.key});
  const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  REQUIRE(cli->write(cr));
  const ByteVec cc = cc_for(cr, 0x00);
  REQUIRE(cli->wait_for_out_size(cc.size(), 10s));
  CHECK(cli->out() == cc);
  CHECK(upstream.accepted_count() == 1);
  cli->kill();
  const auto f = close_fields(proxy, 4);
  CHECK(f.at("client_peer") == "CN=client.test,O=isoproxy tests");
  CHECK(f.at("client_verify") == "ok");
}

TEST_CASE("tls: an upstream that wants a client certificate we do not have: said in the close reason",
          "[tls][integration]") {
  // TLS 1.3 has certificate_required (116), which OpenSSL 3.0 does not name;
  // TLS 1.2 answers a missing certificate with handshake_failure, which
  // alone says nothing, so isoproxy adds what came before it.
  REQUIRE_FALSE(openssl_binary().empty());
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"-tls1_3", "tls-alert: upstream: the peer sent \"certificate required\""},
      {"-tls1_2",
       "tls-alert: upstream: the peer sent \"handshake failure\" after asking for a client certificate: none is "
       "configured (cert and key in upstream_tls)"},
  };
  for (const auto& [version, reason] : cases) {
    INFO(version);
    Certs c;
    std::uint16_t sport = 0;
    auto srv = start_s_server(c.upstream, sport, {"-Verify", "1", "-CAfile", c.ca.cert, version});
    REQUIRE(sport != 0);
    ProxyProcess proxy(listener_config("want-cert", sport, upstream_tls("ca = " + q(c.ca.cert) + "\n")));
    auto port = proxy.listen_port("want-cert");
    REQUIRE(port);
    Conn conn = connect_to("127.0.0.1", *port);
    REQUIRE(conn.send_all(make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
    CHECK(conn.wait_eof(10s));
    const auto f = close_fields(proxy, 1);
    INFO(proxy.text());
    CHECK(f.at("reason") == reason);
  }
}

namespace {

// A TLS listener in front of a plaintext responder, for tests that drive
// the client side with the OpenSSL API.
struct TlsFront {
  Certs c;
  TestServer upstream{responder_handler({})};
  ProxyProcess proxy{listener_config("tls-in", upstream.port(), server_tls(c.proxy))};
  std::uint16_t port = 0;
  TlsFront() {
    REQUIRE(upstream.ok());
    auto p = proxy.listen_port("tls-in");
    REQUIRE(p);
    port = *p;
  }
  // A session through it: handshake, CR, CC.
  std::unique_ptr<TlsConn> session(SSL_CTX* ctx) {
    std::string err;
    auto t = TlsConn::connect(port, ctx, "proxy.test", err);
    INFO(err);
    REQUIRE(t);
    REQUIRE(t->write_all(make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
    REQUIRE(t->read_frame());
    return t;
  }
};

}  // namespace

TEST_CASE("tls: a FIN without close_notify is said in the close line, and one inside a record is logged",
          "[tls][integration]") {
  TlsFront front;
  CtxPtr ctx = client_ctx(front.c);
  for (int id = 1; id <= 3; ++id) {
    INFO("session " << id);
    auto t = front.session(ctx.get());
    if (id == 1) {
      t->shutdown();  // close_notify, then the FIN
    } else if (id == 3) {
      // The first 30 octets of a 100-octet application data record, then the FIN.
      ByteVec part = {0x17, 0x03, 0x03, 0x00, 0x64};
      part.resize(30, 0xAB);
      REQUIRE(::send(t->fd(), part.data(), part.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(part.size()));
    }
    ::shutdown(t->fd(), SHUT_WR);
    const auto f = close_fields(front.proxy, id);
    INFO(front.proxy.text());
    REQUIRE_FALSE(f.empty());
    if (id == 1) {
      CHECK(f.count("client_close_notify") == 0);
    } else {
      CHECK(f.at("client_close_notify") == "no");
    }
  }
  CHECK(front.proxy.count_lines(std::regex(R"(\[S3\] client closed inside a TLS record, without close_notify)")) == 1);
  CHECK(front.proxy.count_lines(std::regex(R"(closed inside a TLS record)")) == 1);  // not session 2's bare FIN
}

TEST_CASE("tls: a client that asks to renegotiate is told no, and the close line says so", "[tls][integration]") {
  // isoproxy refuses TLS 1.2 renegotiation (a no_renegotiation warning);
  // OpenSSL's client then gives up with handshake_failure.
  TlsFront front;
  CtxPtr ctx = client_ctx(front.c);
  SSL_CTX_set_max_proto_version(ctx.get(), TLS1_2_VERSION);
  auto t = front.session(ctx.get());
  CHECK_FALSE(t->renegotiate());
  const auto f = close_fields(front.proxy, 1);
  INFO(front.proxy.text());
  CHECK(f.at("reason") ==
        "tls-alert: client: the peer sent \"handshake failure\" after isoproxy refused its renegotiation (TLS 1.2 "
        "renegotiation is not supported)");
}

TEST_CASE("tls: a client that sends KeyUpdates and never reads is stopped at high water", "[tls][integration]") {
  // Each KeyUpdate the client requests makes isoproxy's TLS answer with one
  // of its own, queued toward a client that does not read. Past high_water
  // that client is no longer read, so its writes stall; before, the answers
  // piled up without bound. (The kernel's send buffer toward the client takes
  // a few MB of answers first: about 200,000 updates, 13 s.)
  Certs c;
  std::atomic<std::size_t> sunk{0};
  TestServer upstream([&](Conn& conn) {  // CC, then reads and drops everything
    auto cr = conn.recv_frame(10s);
    if (!cr) return;
    if (!conn.send_all(codec::Bytes(cc_for(*cr, 0x00)))) return;
    std::uint8_t buf[16384];
    for (;;) {
      const ssize_t n = ::recv(conn.fd(), buf, sizeof buf, 0);
      if (n <= 0) return;
      sunk += static_cast<std::size_t>(n);
    }
  });
  REQUIRE(upstream.ok());
  ProxyProcess proxy("[[listener]]\nname = \"ku\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                     std::to_string(upstream.port()) + "\"\nhigh_water = \"4KiB\"\nlow_water = \"1KiB\"\n" +
                     server_tls(c.proxy));
  auto port = proxy.listen_port("ku");
  REQUIRE(port);
  auto ctx = client_ctx(c);
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  std::string err;
  // A small receive window: isoproxy's answers soon wait on its side.
  auto t = TlsConn::connect(*port, ctx.get(), "proxy.test", err, 4096);
  INFO(err);
  REQUIRE(t);
  const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  REQUIRE(t->write_all(cr));
  REQUIRE(t->read_frame());  // the CC; nothing is read from here on
  t->set_send_timeout(2);
  const ByteVec dt = make_dt("k");
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  std::size_t updates = 0;
  bool stalled = false;
  while (updates < 2'000'000 && std::chrono::steady_clock::now() < deadline) {
    if (!t->key_update_with(dt)) {
      stalled = true;
      break;
    }
    ++updates;
  }
  INFO(updates << " KeyUpdates sent; " << sunk.load() << " octets reached the upstream");
  CHECK(stalled);
  CHECK(sunk.load() >= cr.size() + 100 * dt.size());  // data went through until then
  CHECK(proxy.running());
}

TEST_CASE("tls: a TLS client that writes everything before it reads, while the upstream does the same, is not deadlocked",
          "[tls][integration]") {
  // Full duplex: each side writes 20 MB and reads only afterwards (the
  // client) or meanwhile (the upstream). Toward the client the queue passes
  // high water at once; reading the client must go on, as for a plaintext one.
  Certs c;
  constexpr std::size_t kEach = 20u << 20;  // well past what the kernel buffers take
  const ByteVec chunk = make_dt(std::string(60000, 'u'));
  const ByteVec client_chunk = make_dt(std::string(60000, 'c'));
  const std::size_t n_chunks = kEach / chunk.size();
  std::atomic<std::size_t> upstream_got{0};
  std::atomic<bool> upstream_sent_all{false};
  std::atomic<std::size_t> upstream_sent{0};
  TestServer upstream([&](Conn& conn) {
    auto cr = conn.recv_frame(10s);
    if (!cr) return;
    if (!conn.send_all(codec::Bytes(cc_for(*cr, 0x00)))) return;
    std::thread reader([&] {
      std::uint8_t buf[65536];
      for (;;) {
        const ssize_t n = ::recv(conn.fd(), buf, sizeof buf, 0);
        if (n <= 0) return;
        upstream_got += static_cast<std::size_t>(n);
      }
    });
    bool ok = true;
    for (std::size_t i = 0; i < n_chunks && ok; ++i) {
      ok = conn.send_all(codec::Bytes(chunk));
      if (ok) upstream_sent += chunk.size();
    }
    upstream_sent_all = ok;
    reader.join();
  });
  REQUIRE(upstream.ok());
  ProxyProcess proxy("[[listener]]\nname = \"duplex\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                     std::to_string(upstream.port()) + "\"\nhigh_water = \"64KiB\"\nlow_water = \"16KiB\"\n" +
                     server_tls(c.proxy));
  auto port = proxy.listen_port("duplex");
  REQUIRE(port);
  auto ctx = client_ctx(c);
  std::string err;
  auto t = TlsConn::connect(*port, ctx.get(), "proxy.test", err, 65536);
  INFO(err);
  REQUIRE(t);
  const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  REQUIRE(t->write_all(cr));
  REQUIRE(t->read_frame());  // the CC
  // The upstream first fills every buffer toward the client, until its own
  // writes block: isoproxy then holds more than high water for a client
  // that does not read, before that client writes a byte.
  std::size_t last = 0;
  for (int i = 0; i < 100; ++i) {
    std::this_thread::sleep_for(100ms);
    const std::size_t now = upstream_sent.load();
    if (now != 0 && now == last) break;
    last = now;
  }
  REQUIRE(last != 0);
  REQUIRE_FALSE(upstream_sent_all.load());
  t->set_send_timeout(10);
  std::size_t written = 0;
  for (std::size_t i = 0; i < n_chunks; ++i) {
    if (!t->write_all(client_chunk)) break;
    written += client_chunk.size();
  }
  INFO(proxy.text().substr(0, 4000));
  CHECK(written == n_chunks * client_chunk.size());
  // Now the client reads what the upstream sent, all of it, in order.
  std::size_t got = 0;
  bool same = true;
  for (std::size_t i = 0; i < n_chunks && same; ++i) {
    auto f = t->read_frame();
    same = f && *f == chunk;
    if (same) got += f->size();
  }
  CHECK(got == n_chunks * chunk.size());
  CHECK(upstream_sent_all.load());
  const auto want = n_chunks * client_chunk.size();  // the CR was read by recv_frame
  for (int i = 0; i < 500 && upstream_got.load() < want; ++i) std::this_thread::sleep_for(10ms);
  CHECK(upstream_got.load() == want);
}

TEST_CASE("tls: the upstream's certificate is verified, verify = false is said at start and per session", "[tls][integration]") {
  REQUIRE_FALSE(openssl_binary().empty());
  Certs c;
  const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  struct Case {
    const char* what;
    TestPki::Files cert;
    std::string tls;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {"another CA", c.stranger, "ca = " + q(c.ca.cert) + "\n",
       "tls-verify-failed: upstream: unable to get local issuer certificate (depth 0, CN=stranger.test,O=isoproxy tests)"},
      {"wrong name", c.upstream, "ca = " + q(c.ca.cert) + "\nserver_name = \"mta.example.net\"\n",
       "tls-verify-failed: upstream: hostname mismatch (depth 0, CN=upstream.test,O=isoproxy tests)"},
  };
  for (const auto& k : cases) {
    INFO(k.what);
    std::uint16_t sport = 0;
    auto srv = start_s_server(k.cert, sport);
    REQUIRE(sport != 0);
    ProxyProcess proxy(listener_config("up", sport, upstream_tls(k.tls)));
    auto port = proxy.listen_port("up");
    REQUIRE(port);
    Conn conn = connect_to("127.0.0.1", *port);
    REQUIRE(conn.send_all(cr));
    // The client is let go at once: its CR, waiting for the handshake, goes
    // with the failed channel (it once held the close for the 5 s flush bound).
    CHECK(conn.wait_eof(3s));
    const auto f = close_fields(proxy, 1);
    INFO(proxy.text());
    CHECK(f.at("reason") == k.reason);
    CHECK(f.at("upstream_tls") == "failed");
    // The CR never reached the impostor (the session is closed: nothing more can go).
    const ByteVec out = srv->out();
    CHECK(std::search(out.begin(), out.end(), cr.begin(), cr.end()) == out.end());
  }
  // verify = false: explicit, and said at start-up and on every session.
  std::uint16_t sport = 0;
  auto srv = start_s_server(c.stranger, sport);
  REQUIRE(sport != 0);
  ProxyProcess proxy(listener_config("noverify", sport, upstream_tls("verify = false\n")));
  auto port = proxy.listen_port("noverify");
  REQUIRE(port);
  CHECK(proxy.wait_for_line(std::regex(R"( warning .*listener\[0\]\.upstream_tls\.verify: false: the upstream's certificate is not verified)")));
  Conn conn = connect_to("127.0.0.1", *port);
  REQUIRE(conn.send_all(cr));
  REQUIRE(srv->wait_for_out_bytes(cr, 0, 10s));
  CHECK(proxy.wait_for_line(std::regex(R"(\[S1\] upstream 127\.0\.0\.1:\d+: TLS certificate not verified \(verify = false\))")));
  REQUIRE(srv->write(vendor_cc()));
  auto cc = conn.recv_frame(10s);
  REQUIRE(cc);
  CHECK(*cc == vendor_cc_repaired());
  conn.close();
  const auto f = close_fields(proxy, 1);
  CHECK(f.at("upstream_verify") == "off");
  CHECK(f.at("upstream_peer") == "CN=stranger.test,O=isoproxy tests");
}

TEST_CASE("tls: a CRL refuses revoked client and upstream certificates, SIGHUP loads a new one", "[tls][integration][crl]") {
  REQUIRE_FALSE(openssl_binary().empty());
  Certs c;
  const auto revoked = c.pki.make_leaf("revoked", "ca", "revoked.test", {"DNS:revoked.test"});
  // The file the configuration names; its content changes under it.
  const std::string crl = c.pki.make_crl("live.crl", "ca", {"revoked"});
  TestServer upstream(responder_handler({.reserved = 0x11}));
  ProxyProcess proxy(listener_config("crl", upstream.port(),
                                     server_tls(c.proxy, "client_ca = " + q(c.ca.cert) + "\ncrl = " + q(crl) + "\n")));
  auto port = proxy.listen_port("crl");
  REQUIRE(port);
  const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  const ByteVec cc = cc_for(cr, 0x00);
  int id = 0;
  // Relays for `who`, or is refused with `reason`.
  auto attempt = [&](const TestPki::Files& who, const std::string& reason) {
    ++id;
    auto cli = start_s_client(c, *port, {"-cert", who.cert, "-key", who.key});
    REQUIRE(cli->write(cr));
    if (reason.empty()) {
      REQUIRE(cli->wait_for_out_size(cc.size(), 10s));
      CHECK(cli->out() == cc);
      cli->kill();
    }
    const auto f = close_fields(proxy, id);
    INFO(proxy.text());
    REQUIRE_FALSE(f.empty());
    if (reason.empty()) {
      CHECK(f.at("client_verify") == "ok");
    } else {
      CHECK(f.at("reason") == reason);
      CHECK(f.at("upstream") == "-");
      CHECK(cli->wait_exit(10s));
    }
  };
  attempt(c.client, "");
  attempt(revoked, "tls-verify-failed: client: certificate revoked (depth 0, CN=revoked.test,O=isoproxy tests)");
  CHECK(upstream.accepted_count() == 1);

  // The CA revokes the other client too: a new CRL, then SIGHUP.
  c.pki.make_crl("live.crl", "ca", {"revoked", "client"});
  REQUIRE(proxy.signal(SIGHUP));
  REQUIRE(proxy.wait_for_line(std::regex("reloaded .*: 1 listener")));
  attempt(c.client, "tls-verify-failed: client: certificate revoked (depth 0, CN=client.test,O=isoproxy tests)");

  // A CRL past its nextUpdate: said at the reload, and then every certificate
  // it covers is refused, the good one too.
  c.pki.make_crl("live.crl", "ca", {}, -40 * TestPki::kDay, -10 * TestPki::kDay);
  REQUIRE(proxy.signal(SIGHUP));
  CHECK(proxy.wait_for_line(std::regex(R"( warning .*listener\[0\]\.tls\.crl: .*live\.crl: the CRL of CN=ca,O=isoproxy tests expired on )")));
  REQUIRE(proxy.wait_for_lines(std::regex("reloaded .*: 1 listener"), 2));
  attempt(revoked, "tls-verify-failed: client: CRL has expired (depth 0, CN=revoked.test,O=isoproxy tests)");

  // The upstream's certificate, against upstream_tls's crl.
  const std::string up_crl = c.pki.make_crl("upstream.crl", "ca", {"upstream"});
  std::uint16_t sport = 0;
  auto srv = start_s_server(c.upstream, sport);
  REQUIRE(sport != 0);
  ProxyProcess out(listener_config("up", sport, upstream_tls("ca = " + q(c.ca.cert) + "\ncrl = " + q(up_crl) + "\n")));
  auto oport = out.listen_port("up");
  REQUIRE(oport);
  Conn conn = connect_to("127.0.0.1", *oport);
  REQUIRE(conn.send_all(cr));
  CHECK(conn.wait_eof(10s));
  const auto f = close_fields(out, 1);
  INFO(out.text());
  CHECK(f.at("reason") == "tls-verify-failed: upstream: certificate revoked (depth 0, CN=upstream.test,O=isoproxy tests)");
  const ByteVec got = srv->out();
  CHECK(std::search(got.begin(), got.end(), cr.begin(), cr.end()) == got.end());
}

TEST_CASE("tls: a route's CRL that runs out while isoproxy runs is warned about too", "[tls][integration][crl]") {
  Certs c;
  const std::string crl = c.pki.make_crl("route-soon.crl", "ca", {}, -TestPki::kDay, 4);  // nextUpdate in 4 s
  ProxyProcess proxy("[[listener]]\nname = \"routed\"\nlisten = \"127.0.0.1:0\"\nfilters = [\"route\"]\n\n"
                     "[filter.route]\nkind = \"tsap-route\"\n"
                     "[[filter.route.route]]\nname = \"remote\"\ncalled = \"EXCHANGETSAP1\"\nupstream = \"127.0.0.1:9\"\n"
                     "tls = { ca = " + q(c.ca.cert) + ", crl = " + q(crl) + ", server_name = \"upstream.test\" }\n");
  REQUIRE(proxy.listen_port("routed"));
  INFO(proxy.text());
  CHECK(proxy.wait_for_line(std::regex(
      R"( warning filter route route remote: the CRL of CN=ca,O=isoproxy tests \(upstream certificates, .*route-soon\.crl\) expires at \S+, in less than 24 h)")));
  CHECK(proxy.wait_for_line(std::regex(
      R"( warning filter route route remote: the CRL of CN=ca,O=isoproxy tests \(upstream certificates, .*route-soon\.crl\) expired at \S+: every certificate it covers is now refused)"),
      15s));
}

TEST_CASE("tls: a CRL that runs out while isoproxy runs is warned about a day ahead and when it does", "[tls][integration][crl]") {
  REQUIRE_FALSE(openssl_binary().empty());
  Certs c;
  const std::string crl = c.pki.make_crl("soon.crl", "ca", {}, -TestPki::kDay, 4);  // nextUpdate in 4 s
  TestServer upstream(responder_handler());
  ProxyProcess proxy(listener_config("soon", upstream.port(),
                                     server_tls(c.proxy, "client_ca = " + q(c.ca.cert) + "\ncrl = " + q(crl) + "\n")));
  auto port = proxy.listen_port("soon");
  REQUIRE(port);
  auto ahead = proxy.wait_for_line(std::regex(
      R"( warning listener soon: the CRL of CN=ca,O=isoproxy tests \(client certificates, .*soon\.crl\) expires at \S+, in less than 24 h: replace the file)"));
  INFO(proxy.text());
  REQUIRE(ahead);
  // When nextUpdate passes, without a reload or a session to notice it.
  auto expired = proxy.wait_for_line(std::regex(
      R"( warning listener soon: the CRL of CN=ca,O=isoproxy tests \(client certificates, .*soon\.crl\) expired at \S+: every certificate it covers is now refused)"),
      15s);
  REQUIRE(expired);
  // And it is so.
  auto cli = start_s_client(c, *port, {"-cert", c.client.cert, "-key", c.client.key});
  REQUIRE(cli->write(make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
  const auto f = close_fields(proxy, 1);
  REQUIRE_FALSE(f.empty());
  CHECK(f.at("reason") == "tls-verify-failed: client: CRL has expired (depth 0, CN=client.test,O=isoproxy tests)");
  // Each said once.
  CHECK(proxy.count_lines(std::regex("in less than 24 h")) == 1);
  CHECK(proxy.count_lines(std::regex("is now refused")) == 1);
}

TEST_CASE("tls: a client that never completes the handshake, and one that speaks plaintext", "[tls][integration]") {
  Certs c;
  TestServer upstream(responder_handler());
  ProxyProcess proxy(listener_config("slow", upstream.port(), server_tls(c.proxy, "handshake_timeout = \"300ms\"\n")));
  auto port = proxy.listen_port("slow");
  REQUIRE(port);
  {
    Conn conn = connect_to("127.0.0.1", *port);
    REQUIRE(conn.valid());
    CHECK(conn.wait_eof(10s));
    const auto f = close_fields(proxy, 1);
    CHECK(f.at("reason") == "tls-handshake-timeout: client: no TLS handshake within 300ms");
    CHECK(f.at("client_tls") == "handshake");
  }
  {
    Conn conn = connect_to("127.0.0.1", *port);
    REQUIRE(conn.send_all(make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
    CHECK(conn.wait_eof(10s));
    const auto f = close_fields(proxy, 2);
    CHECK_THAT(f.at("reason"), Catch::StartsWith("tls-handshake-failed: client: "));
    CHECK(f.at("c2u_bytes") == "0");
  }
  CHECK(upstream.accepted_count() == 0);
}

TEST_CASE("tls: 1 GiB through TLS on both legs arrives byte-exact, memory bounded", "[tls][integration][tls-bulk]") {
  Certs c;
  CtxPtr up_ctx = server_ctx(c.upstream);
  Listening up;
  const AsanSmallQuarantine small_quarantine;  // the RSS bound below
  ProxyProcess proxy(listener_config("bulk", up.port,
                                     server_tls(c.proxy) + upstream_tls("ca = " + q(c.ca.cert) + "\nserver_name = \"upstream.test\"\n")));
  auto port = proxy.listen_port("bulk");
  REQUIRE(port);

  // Frame i carries kPayload octets of a random block, starting at a
  // different offset each time: a lost, repeated, reordered or changed octet
  // shows.
  constexpr std::size_t kPayload = 65535 - 7;
  constexpr std::uint64_t kTotal = 1ull << 30;
  const std::size_t frames = static_cast<std::size_t>((kTotal + kPayload - 1) / kPayload);
  std::vector<std::uint8_t> block(1 << 20);
  std::mt19937_64 rng(42);
  for (auto& b : block) b = static_cast<std::uint8_t>(rng());
  auto frame_bytes = [&](std::size_t i, ByteVec& out) {
    const std::size_t payload = i + 1 == frames ? static_cast<std::size_t>(kTotal - kPayload * (frames - 1)) : kPayload;
    const std::size_t len = payload + 7;
    out.resize(len);
    out[0] = 0x03;
    out[1] = 0x00;
    out[2] = static_cast<std::uint8_t>(len >> 8);
    out[3] = static_cast<std::uint8_t>(len & 0xFF);
    out[4] = 0x02;
    out[5] = 0xF0;
    out[6] = i + 1 == frames ? 0x80 : 0x00;
    const std::size_t off = (i * 7919) % block.size();
    const std::size_t first = std::min(payload, block.size() - off);
    std::memcpy(out.data() + 7, block.data() + off, first);
    std::memcpy(out.data() + 7 + first, block.data(), payload - first);
  };

  std::atomic<std::uint64_t> received{0};
  std::string up_error;
  std::thread upstream([&] {
    std::string err;
    auto t = TlsConn::accept(up.fd, up_ctx.get(), err);
    if (!t) {
      up_error = err;
      return;
    }
    auto cr = t->read_frame();
    if (!cr) {
      up_error = "no CR";
      return;
    }
    auto d = codec::decode_frame(codec::Bytes(*cr));
    if (!d || !t->write_all(make_cc_reply(d->tpdu, 0x0029, 0x11))) {
      up_error = "no CR";
      return;
    }
    ByteVec want;
    for (std::size_t i = 0; i < frames; ++i) {
      auto f = t->read_frame();
      frame_bytes(i, want);
      if (!f) {
        up_error = "stream ended at frame " + std::to_string(i);
        return;
      }
      if (*f != want) {
        up_error = "frame " + std::to_string(i) + " differs";
        return;
      }
      received += f->size() - 7;
    }
    // The client's close_notify comes through as ours ends.
    if (!t->read_closed()) up_error = "data after the last frame";
    t->shutdown();
  });

  std::string err;
  CtxPtr cli_ctx = client_ctx(c);
  auto t = TlsConn::connect(*port, cli_ctx.get(), "proxy.test", err);
  INFO(err);
  REQUIRE(t);
  const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  REQUIRE(t->write_all(cr));
  auto cc = t->read_frame();
  REQUIRE(cc);
  CHECK(*cc == cc_for(cr, 0x00));  // repaired on the way
  const auto rss_start = proxy.rss_kib();
  REQUIRE(rss_start);
  std::size_t rss_max = *rss_start;
  const auto start = std::chrono::steady_clock::now();
  ByteVec f;
  bool sent = true;
  for (std::size_t i = 0; i < frames && sent; ++i) {
    frame_bytes(i, f);
    sent = t->write_all(f);
    if (i % 1024 == 0) rss_max = std::max(rss_max, proxy.rss_kib().value_or(0));
  }
  REQUIRE(sent);
  t->shutdown();
  CHECK(t->read_closed());
  upstream.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(up_error == "");
  CHECK(received.load() == kTotal);
  std::fprintf(stderr, "tls: 1 GiB through isoproxy with TLS on both legs in %.1f s: %.0f MB/s; RSS %zu KiB -> max %zu KiB\n",
               secs, static_cast<double>(kTotal) / secs / 1e6, *rss_start, rss_max);
  // High water is 256 KiB per direction: the proxy must not buffer the stream.
  CHECK(rss_max < *rss_start + 32 * 1024);
  const auto fields = close_fields(proxy, 1, 30s);
  CHECK(fields.at("c2u_bytes") == std::to_string(kTotal + 7 * frames + cr.size()));
  CHECK(fields.at("client_tls") == "TLSv1.3");
  CHECK(fields.at("upstream_tls") == "TLSv1.3");
}

TEST_CASE("tls: SIGHUP reloads certificates, a bad one keeps the old and the log says why", "[tls][integration]") {
  Certs c;
  TestServer upstream(responder_handler());
  // Files the configuration names; their content changes under it.
  const std::string cert = c.pki.path("live.crt"), key = c.pki.path("live.key");
  std::filesystem::copy_file(c.proxy.cert, cert);
  std::filesystem::copy_file(c.proxy.key, key);
  ProxyProcess proxy(listener_config("reload", upstream.port(), server_tls({cert, key, ""})));
  auto port = proxy.listen_port("reload");
  REQUIRE(port);
  CtxPtr ctx = client_ctx(c);
  auto subject_now = [&](const std::string& name) {
    std::string err;
    auto t = TlsConn::connect(*port, ctx.get(), name, err);
    INFO(err);
    return t ? t->peer_subject() : std::string("(no connection: " + err + ")");
  };
  CHECK(subject_now("proxy.test") == "CN=proxy.test,O=isoproxy tests");

  // A certificate that is not one.
  c.pki.write("live.crt", "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n");
  REQUIRE(proxy.signal(SIGHUP));
  auto why = proxy.wait_for_line(std::regex(R"(reload: .*listener\[0\]\.tls\.cert: .*live\.crt: not a usable PEM certificate)"));
  INFO(proxy.text());
  REQUIRE(why);
  REQUIRE(proxy.wait_for_line(std::regex("reload failed: 1 error; the running configuration stays in force")));
  CHECK(subject_now("proxy.test") == "CN=proxy.test,O=isoproxy tests");

  // A key that belongs to another certificate.
  std::filesystem::copy_file(c.proxy.cert, cert, std::filesystem::copy_options::overwrite_existing);
  std::filesystem::copy_file(c.upstream.key, key, std::filesystem::copy_options::overwrite_existing);
  REQUIRE(proxy.signal(SIGHUP));
  REQUIRE(proxy.wait_for_lines(std::regex(R"(reload: .*listener\[0\]\.tls\.key: .*live\.key: does not match the certificate)"), 1));
  REQUIRE(proxy.wait_for_lines(std::regex("reload failed"), 2));
  CHECK(subject_now("proxy.test") == "CN=proxy.test,O=isoproxy tests");

  // A good new certificate is taken.
  std::filesystem::copy_file(c.upstream.cert, cert, std::filesystem::copy_options::overwrite_existing);
  REQUIRE(proxy.signal(SIGHUP));
  REQUIRE(proxy.wait_for_line(std::regex("reloaded .*: 1 listener")));
  CHECK(proxy.wait_for_line(std::regex(R"(listener reload: TLS certificate "CN=upstream.test,O=isoproxy tests")")));
  CHECK(subject_now("upstream.test") == "CN=upstream.test,O=isoproxy tests");
  CHECK(proxy.count_lines(std::regex("reload failed")) == 2);
}

TEST_CASE("tls: the example pair of isoproxies joins two plaintext MTAs over mutual TLS", "[tls][integration][example]") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(ISOPROXY_SOURCE_DIR) / "conf" / "examples" / "tls-pair";
  auto read = [](const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  std::string a = read(dir / "site-a.toml"), b = read(dir / "site-b.toml");
  REQUIRE_FALSE(a.empty());
  REQUIRE_FALSE(b.empty());

  // The pair's own CA and the two sites' certificates, under the names the
  // examples use.
  TestPki pki;
  pki.make_ca("ca");
  pki.make_leaf("site-a", "ca", "site-a.example.net", {"DNS:site-a.example.net"});
  pki.make_leaf("site-b", "ca", "site-b.example.net", {"DNS:site-b.example.net"});
  TestServer mta_b(responder_handler({.reserved = 0x11}));  // the vendor MTA behind site B

  // Substitute what the examples say for this host's test addresses and
  // files; every substitution must find its text, so that the test follows
  // the examples.
  auto subst = [](std::string& text, const std::string& from, const std::string& to) {
    const auto at = text.find(from);
    INFO("missing in the example: " << from);
    REQUIRE(at != std::string::npos);
    text.replace(at, from.size(), to);
  };
  subst(b, "listen = \"0.0.0.0:3102\"", "listen = \"127.0.0.1:0\"");
  subst(b, "upstream = \"10.2.0.25:102\"", "upstream = \"127.0.0.1:" + std::to_string(mta_b.port()) + "\"");
  for (std::string* t : {&a, &b}) {
    for (const char* f : {"ca.crt", "site-a.crt", "site-a.key", "site-b.crt", "site-b.key"}) {
      std::size_t at;
      while ((at = t->find(std::string("/etc/isoproxy/tls/") + f)) != std::string::npos)
        t->replace(at, std::string("/etc/isoproxy/tls/").size() + std::strlen(f), pki.path(f));
    }
  }
  ProxyProcess site_b(b);
  const auto b_port = site_b.listen_port(0);
  INFO(site_b.text());
  REQUIRE(b_port);
  subst(a, "listen = \"0.0.0.0:102\"", "listen = \"127.0.0.1:0\"");
  subst(a, "upstream = \"198.51.100.20:3102\"", "upstream = \"127.0.0.1:" + std::to_string(*b_port) + "\"");
  ProxyProcess site_a(a);
  auto port = site_a.listen_port(0);
  INFO(site_a.text());
  INFO(site_b.text());
  REQUIRE(port);

  Conn conn = connect_to("127.0.0.1", *port);
  const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  REQUIRE(conn.send_all(cr));
  auto cc = conn.recv_frame(10s);
  REQUIRE(cc);
  CHECK(*cc == cc_for(cr, 0x00));  // repaired by site B, carried over TLS by both
  const ByteVec dt = make_dt("across the untrusted network");
  REQUIRE(conn.send_all(dt));
  auto echo = conn.recv_frame(10s);
  REQUIRE(echo);
  CHECK(*echo == dt);
  conn.shutdown_write();
  CHECK(conn.wait_eof(10s));
  const auto fa = close_fields(site_a, 1);
  const auto fb = close_fields(site_b, 1);
  CHECK(fa.at("reason") == "client-closed");
  CHECK(fa.at("upstream_tls") == "TLSv1.3");
  CHECK(fa.at("upstream_peer") == "CN=site-b.example.net,O=isoproxy tests");
  CHECK(fa.at("upstream_verify") == "ok");
  CHECK(fb.at("client_tls") == "TLSv1.3");
  CHECK(fb.at("client_peer") == "CN=site-a.example.net,O=isoproxy tests");
  CHECK(fb.at("client_verify") == "ok");
  CHECK(fb.at("filters").find("reserved.repaired=1") != std::string::npos);
  CHECK(mta_b.accepted_count() == 1);
}

TEST_CASE("tls: a tsap-route route originates TLS to its upstream, another stays plaintext", "[tls][integration]") {
  REQUIRE_FALSE(openssl_binary().empty());
  Certs c;
  std::uint16_t sport = 0;
  auto srv = start_s_server(c.upstream, sport);
  REQUIRE(sport != 0);
  FrameLog plain_seen;
  TestServer plain(responder_handler({.reserved = 0x11, .log = &plain_seen}));
  ProxyProcess proxy("[[listener]]\nname = \"routed\"\nlisten = \"127.0.0.1:0\"\nfilters = [\"annotate\", \"route\", \"reserved\"]\n"
                     "[filter.annotate]\nkind = \"tsap-annotate\"\n[filter.reserved]\nkind = \"tpkt-reserved\"\n"
                     "[filter.route]\nkind = \"tsap-route\"\n"
                     "[[filter.route.route]]\nname = \"remote\"\ncalled = \"EXCHANGETSAP1\"\nupstream = \"127.0.0.1:" +
                     std::to_string(sport) + "\"\ntls = { ca = " + q(c.ca.cert) + ", server_name = \"upstream.test\" }\n" +
                     "[[filter.route.route]]\nname = \"local\"\ncalled = \"LOCALTSAP\"\nupstream = \"127.0.0.1:" +
                     std::to_string(plain.port()) + "\"\n");
  auto port = proxy.listen_port("routed");
  REQUIRE(port);
  {
    // The CR is held until the route is chosen, then waits for the handshake.
    Conn conn = connect_to("127.0.0.1", *port);
    const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
    REQUIRE(conn.send_all(cr));
    INFO(proxy.text());
    REQUIRE(srv->wait_for_out_bytes(cr, 0, 10s));
    REQUIRE(srv->write(vendor_cc()));
    auto cc = conn.recv_frame(10s);
    REQUIRE(cc);
    CHECK(*cc == vendor_cc_repaired());
    conn.close();
    const auto f = close_fields(proxy, 1);
    CHECK(f.at("route") == "route/remote");
    CHECK(f.at("upstream_tls") == "TLSv1.3");
    CHECK(f.at("upstream_peer") == "CN=upstream.test,O=isoproxy tests");
  }
  {
    Conn conn = connect_to("127.0.0.1", *port);
    const ByteVec cr = make_cr("SWISSLIFETSAP", "LOCALTSAP");
    REQUIRE(conn.send_all(cr));
    auto cc = conn.recv_frame(10s);
    REQUIRE(cc);
    CHECK(*cc == cc_for(cr, 0x00));
    REQUIRE(plain_seen.wait_size(1));
    CHECK(plain_seen.frames()[0] == cr);  // in plaintext
    conn.close();
    const auto f = close_fields(proxy, 2);
    CHECK(f.at("route") == "route/local");
    CHECK(f.count("upstream_tls") == 0);
  }
}
