// The TLS engine without sockets: two Channels joined in memory, with
// certificates made at test time. Handshake, data both ways, close_notify,
// each verification failure with its named reason, mutual TLS with and
// without allow-lists, and the context builder's errors by key.
#include <openssl/ssl.h>

#include <catch2/catch.hpp>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "conf/config.h"
#include "support/tls_pki.h"
#include "tls.h"

namespace isoproxy::test {
namespace {

using tls::Channel;
using Status = tls::Channel::Status;

struct Pki {
  TestPki pki;
  TestPki::Files ca, server, client, other_ca, stranger, expired, wildcard;
  Pki() {
    ca = pki.make_ca("ca");
    server = pki.make_leaf("server", "ca", "site-b.test", {"DNS:site-b.test", "IP:127.0.0.1"});
    client = pki.make_leaf("client", "ca", "site-a.test", {"DNS:site-a.test", "IP:192.0.2.1"});
    other_ca = pki.make_ca("other-ca");
    stranger = pki.make_leaf("stranger", "other-ca", "stranger.test", {"DNS:stranger.test"});
    expired = pki.make_leaf("expired", "ca", "expired.test", {"DNS:expired.test"}, -30, -1);
    wildcard = pki.make_leaf("wildcard", "ca", "any.test", {"DNS:*.test"});
  }
};

conf::TlsServerConfig server_config(const Pki& p) {
  conf::TlsServerConfig c;
  c.cert = p.server.cert;
  c.key = p.server.key;
  return c;
}

conf::TlsClientConfig client_config(const Pki& p) {
  conf::TlsClientConfig c;
  c.ca = p.ca.cert;
  return c;
}

std::shared_ptr<const tls::Context> server_ctx(const conf::TlsServerConfig& c) {
  auto r = tls::make_server_context(c);
  if (!r) {
    for (const auto& e : r.error()) UNSCOPED_INFO(e.key << ": " << e.message);
  }
  REQUIRE(r.ok());
  return *r;
}

std::shared_ptr<const tls::Context> client_ctx(const conf::TlsClientConfig& c) {
  auto r = tls::make_client_context(c);
  if (!r) {
    for (const auto& e : r.error()) UNSCOPED_INFO(e.key << ": " << e.message);
  }
  REQUIRE(r.ok());
  return *r;
}

// What each channel was last fed: a channel borrows its input until the next
// feed, as it borrows the loop's read buffer in a session.
std::map<const Channel*, std::vector<std::uint8_t>> g_fed;

void feed(Channel& to, std::vector<std::uint8_t> bytes) {
  auto& held = g_fed[&to];
  held = std::move(bytes);
  to.feed(held.data(), held.size());
}

// Hands `from`'s ciphertext to `to` and lets `to` advance. True if anything moved.
bool hand_over(Channel& from, Channel& to) {
  if (from.output().empty()) return false;
  std::vector<std::uint8_t> bytes = from.output();
  from.clear_output();
  feed(to, std::move(bytes));
  if (!to.established() && !to.failed()) to.handshake();
  return true;
}

// Runs the handshake to its end, one flight at a time, like two sockets would.
void handshake(Channel& client, Channel& server) {
  client.handshake();
  for (int i = 0; i < 20; ++i) {
    // Both ways each round (not ||, which would skip the second).
    const bool to_server = hand_over(client, server);
    const bool to_client = hand_over(server, client);
    const bool moved = to_server || to_client;
    if (!moved) break;
  }
}

// Plaintext `to` decrypts from what `from` has written.
std::string deliver(Channel& from, Channel& to) {
  std::vector<std::uint8_t> bytes = from.output();
  from.clear_output();
  feed(to, std::move(bytes));
  std::string out;
  std::uint8_t buf[16384];
  for (;;) {
    const auto r = to.read(buf, sizeof buf);
    if (r.status != Status::kOk) break;
    out.append(reinterpret_cast<const char*>(buf), r.n);
  }
  return out;
}

Status write(Channel& c, const std::string& s) {
  return c.write(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
}

}  // namespace

TEST_CASE("tls: handshake over memory, data both ways, close_notify", "[tls][unit]") {
  Pki p;
  auto sctx = server_ctx(server_config(p));
  auto cctx = client_ctx(client_config(p));
  auto server = Channel::accept(sctx);
  auto client = Channel::connect(cctx, "127.0.0.1");  // no server_name: the IP is checked
  handshake(*client, *server);
  REQUIRE(client->established());
  REQUIRE(server->established());
  CHECK(client->info().version == "TLSv1.3");  // 1.3 preferred
  CHECK(server->info().version == "TLSv1.3");
  CHECK_FALSE(client->info().cipher.empty());
  CHECK(client->info().peer_subject == p.server.subject);
  CHECK(client->info().peer_issuer == "CN=ca,O=isoproxy tests");
  CHECK(client->info().verify == "ok");
  CHECK(server->info().verify == "off");  // no client certificates asked
  CHECK(server->info().peer_subject.empty());

  REQUIRE(write(*client, "CR from the client") == Status::kOk);
  CHECK(deliver(*client, *server) == "CR from the client");
  // A large write is split into records and arrives whole.
  std::string big(200000, 'x');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  REQUIRE(write(*server, big) == Status::kOk);
  CHECK(deliver(*server, *client) == big);
  CHECK(client->output().empty());

  client->shutdown();
  std::vector<std::uint8_t> bytes = client->output();
  client->clear_output();
  feed(*server, std::move(bytes));
  std::uint8_t buf[64];
  CHECK(server->read(buf, sizeof buf).status == Status::kClosed);
  CHECK(server->info().close_notify);
}

TEST_CASE("tls: the upstream's certificate is verified, by name or by IP", "[tls][unit]") {
  Pki p;
  auto sctx = server_ctx(server_config(p));
  struct Case {
    std::string server_name, upstream_ip, verify;
  };
  for (const Case& c : {Case{"site-b.test", "192.0.2.99", "ok"}, Case{"", "127.0.0.1", "ok"},
                        Case{"other.test", "127.0.0.1", "hostname mismatch"},
                        Case{"", "192.0.2.7", "IP address mismatch"}, Case{"127.0.0.1", "192.0.2.7", "ok"}}) {
    INFO("server_name=" << c.server_name << " ip=" << c.upstream_ip);
    auto cc = client_config(p);
    cc.server_name = c.server_name;
    auto client = Channel::connect(client_ctx(cc), c.upstream_ip);
    auto server = Channel::accept(sctx);
    handshake(*client, *server);
    if (c.verify == "ok") {
      CHECK(client->established());
      CHECK(client->info().verify == "ok");
      // SNI only for a DNS name (RFC 6066 §3), and the server sees it.
      const bool dns = c.server_name == "site-b.test";
      CHECK(server->info().sni == (dns ? "site-b.test" : ""));
    } else {
      CHECK(client->failed());
      CHECK(client->failure().name == "tls-verify-failed");
      CHECK_THAT(client->failure().detail, Catch::StartsWith(c.verify));
      // The server hears why: an alert.
      hand_over(*client, *server);
      CHECK(server->failed());
      CHECK(server->failure().name == "tls-alert");
    }
  }
}

TEST_CASE("tls: a CA directory is used by its hashed names, and one without them is an error", "[tls][unit]") {
  Pki p;
  auto sctx = server_ctx(server_config(p));
  auto handshake_with = [&](const std::string& ca_dir) {
    auto cc = client_config(p);
    cc.ca = ca_dir;
    cc.server_name = "site-b.test";
    auto client = Channel::connect(client_ctx(cc), "127.0.0.1");
    auto server = Channel::accept(sctx);
    handshake(*client, *server);
    return client->established() && client->info().verify == "ok";
  };
  // As `openssl rehash` leaves it: the server's chain verifies, nothing to say.
  const std::string hashed = p.pki.make_ca_dir("hashed", {"ca", "other-ca"}, true);
  {
    auto cc = client_config(p);
    cc.ca = hashed;
    auto r = tls::make_client_context(cc);
    REQUIRE(r.ok());
    CHECK((*r)->warnings().empty());
  }
  CHECK(handshake_with(hashed));

  // Certificates copied in without a rehash: OpenSSL would find none and
  // refuse every peer, so the configuration is refused and says how to fix it.
  const std::string plain = p.pki.make_ca_dir("plain", {"ca"}, false);
  for (bool server_side : {false, true}) {
    INFO("server side: " << server_side);
    std::vector<tls::KeyError> errors;
    if (server_side) {
      auto c = server_config(p);
      c.client_ca = plain;
      c.verify_client = "require";
      auto r = tls::make_server_context(c);
      REQUIRE_FALSE(r.ok());
      errors = r.error();
    } else {
      auto c = client_config(p);
      c.ca = plain;
      auto r = tls::make_client_context(c);
      REQUIRE_FALSE(r.ok());
      errors = r.error();
    }
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].key == (server_side ? "client_ca" : "ca"));
    CHECK_THAT(errors[0].message, Catch::StartsWith(plain + ": no CA certificate under a hashed name"));
    CHECK_THAT(errors[0].message, Catch::EndsWith("prepare it with `openssl rehash " + plain + "` (or name a PEM file)"));
  }

  // A CA added after the last rehash: loads, with a warning that names it,
  // and indeed its certificates do not verify until the directory is rehashed.
  const std::string partial = p.pki.make_ca_dir("partial", {"other-ca"}, true);
  p.pki.make_ca_dir("partial", {"ca"}, false);
  auto cc = client_config(p);
  cc.ca = partial;
  auto r = tls::make_client_context(cc);
  REQUIRE(r.ok());
  REQUIRE((*r)->warnings().size() == 1);
  CHECK((*r)->warnings()[0].key == "ca");
  CHECK_THAT((*r)->warnings()[0].message,
             Catch::StartsWith(partial + ": 1 CA certificate(s) with no hashed name, which OpenSSL will not find: ca.pem (CN=ca"));
  CHECK_FALSE(handshake_with(partial));
}

TEST_CASE("tls: a server certificate from another CA, and verify = false", "[tls][unit]") {
  Pki p;
  auto sc = server_config(p);
  sc.cert = p.stranger.cert;
  sc.key = p.stranger.key;
  auto sctx = server_ctx(sc);
  {
    auto cc = client_config(p);
    cc.server_name = "stranger.test";
    auto client = Channel::connect(client_ctx(cc), "127.0.0.1");
    auto server = Channel::accept(sctx);
    handshake(*client, *server);
    REQUIRE(client->failed());
    CHECK(client->failure().name == "tls-verify-failed");
    CHECK(client->failure().detail == "unable to get local issuer certificate (depth 0, CN=stranger.test,O=isoproxy tests)");
    CHECK(client->info().verify == client->failure().detail);
  }
  {
    conf::TlsClientConfig cc;
    cc.verify = false;
    auto client = Channel::connect(client_ctx(cc), "127.0.0.1");
    auto server = Channel::accept(sctx);
    handshake(*client, *server);
    REQUIRE(client->established());
    CHECK(client->info().verify == "off");
    CHECK(client->info().peer_subject == p.stranger.subject);
  }
}

TEST_CASE("tls: mutual TLS refuses a missing, a foreign and an expired client certificate", "[tls][unit]") {
  Pki p;
  auto sc = server_config(p);
  sc.client_ca = p.ca.cert;
  sc.verify_client = "require";
  auto sctx = server_ctx(sc);
  struct Case {
    const char* what;
    std::string cert, key;
    std::string reason, detail;
  };
  const std::vector<Case> cases = {
      {"the CA's own client", p.client.cert, p.client.key, "", ""},
      {"no certificate", "", "", "tls-verify-failed", "no client certificate"},
      {"another CA", p.stranger.cert, p.stranger.key, "tls-verify-failed",
       "unable to get local issuer certificate (depth 0, CN=stranger.test,O=isoproxy tests)"},
      {"expired", p.expired.cert, p.expired.key, "tls-verify-failed",
       "certificate has expired (depth 0, CN=expired.test,O=isoproxy tests)"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    auto cc = client_config(p);
    cc.server_name = "site-b.test";
    cc.cert = c.cert;
    cc.key = c.key;
    // An expired certificate is refused by make_client_context itself (the
    // proxy never presents one); build that client's context by hand.
    std::shared_ptr<const tls::Context> cctx;
    if (c.cert == p.expired.cert) {
      auto plain = client_config(p);
      plain.server_name = "site-b.test";
      auto base = client_ctx(plain);
      REQUIRE(SSL_CTX_use_certificate_file(base->native(), c.cert.c_str(), SSL_FILETYPE_PEM) == 1);
      REQUIRE(SSL_CTX_use_PrivateKey_file(base->native(), c.key.c_str(), SSL_FILETYPE_PEM) == 1);
      cctx = base;
    } else {
      cctx = client_ctx(cc);
    }
    auto client = Channel::connect(cctx, "127.0.0.1");
    auto server = Channel::accept(sctx);
    handshake(*client, *server);
    if (c.reason.empty()) {
      REQUIRE(server->established());
      CHECK(server->info().verify == "ok");
      CHECK(server->info().peer_subject == p.client.subject);
      continue;
    }
    REQUIRE(server->failed());
    CHECK(server->failure().name == c.reason);
    CHECK(server->failure().detail == c.detail);
    // In TLS 1.3 the client is done before the server judges its certificate:
    // it learns of the refusal from the alert, as the session's next read.
    hand_over(*server, *client);
    if (client->established()) {
      std::uint8_t buf[64];
      CHECK(client->read(buf, sizeof buf).status == Status::kError);
    }
    CHECK(client->failed());
    INFO(client->failure().detail);
    CHECK(client->failure().name == "tls-alert");
  }
}

TEST_CASE("tls: mutual TLS allow-lists by subject and by subjectAltName", "[tls][unit]") {
  Pki p;
  struct Case {
    std::vector<std::string> subjects, sans;
    TestPki::Files who;
    bool allowed;
  };
  const std::vector<Case> cases = {
      {{p.client.subject}, {}, p.client, true},
      {{"CN=someone-else,O=isoproxy tests"}, {}, p.client, false},
      {{}, {"site-a.test"}, p.client, true},
      {{}, {"192.0.2.1"}, p.client, true},
      {{}, {"192.0.2.2", "other.test"}, p.client, false},
      // A wildcard in the certificate does not stand for an allowed name.
      {{}, {"site-a.test"}, p.wildcard, false},
      {{"CN=nobody"}, {"site-a.test"}, p.client, true},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    INFO("case " << i);
    auto sc = server_config(p);
    sc.client_ca = p.ca.cert;
    sc.verify_client = "require";
    sc.allow_subjects = c.subjects;
    sc.allow_sans = c.sans;
    auto cc = client_config(p);
    cc.cert = c.who.cert;
    cc.key = c.who.key;
    auto client = Channel::connect(client_ctx(cc), "127.0.0.1");
    auto server = Channel::accept(server_ctx(sc));
    handshake(*client, *server);
    if (c.allowed) {
      CHECK(server->established());
      CHECK_FALSE(server->failed());
    } else {
      CHECK(server->failed());
      CHECK(server->failure().name == "tls-peer-not-allowed");
      CHECK(server->failure().detail == "\"" + c.who.subject + "\" matches neither allow_subjects nor allow_sans");
      // Verified, then refused: whose certificate it was is said all the same.
      CHECK(server->info().peer_subject == c.who.subject);
      CHECK(server->info().verify == "ok");
      // Refused during the handshake: the client is told by an alert, not a
      // bare close. (The handshake handed it over; a TLS 1.3 client, done
      // with its side of the handshake, reads it with the next record.)
      CHECK(server->output().empty());
      if (!client->failed()) {
        std::uint8_t b[16];
        CHECK(client->read(b, sizeof b).status == Status::kError);
      }
      CHECK(client->failed());
      CHECK(client->failure().name == "tls-alert");
      CHECK(client->failure().detail == "the peer sent \"handshake failure\"");
    }
  }
}

TEST_CASE("tls: optional client certificates", "[tls][unit]") {
  Pki p;
  auto sc = server_config(p);
  sc.client_ca = p.ca.cert;
  sc.verify_client = "optional";
  auto sctx = server_ctx(sc);
  auto client = Channel::connect(client_ctx(client_config(p)), "127.0.0.1");
  auto server = Channel::accept(sctx);
  handshake(*client, *server);
  REQUIRE(server->established());
  CHECK(server->info().verify == "no-certificate");
}

TEST_CASE("tls: TLS 1.2 when the floor allows it, refused when it does not", "[tls][unit]") {
  Pki p;
  auto sc = server_config(p);
  auto sctx = server_ctx(sc);
  auto cctx = client_ctx(client_config(p));
  // A client that only speaks TLS 1.2.
  SSL_CTX_set_max_proto_version(cctx->native(), TLS1_2_VERSION);
  {
    auto client = Channel::connect(cctx, "127.0.0.1");
    auto server = Channel::accept(sctx);
    handshake(*client, *server);
    REQUIRE(server->established());
    CHECK(server->info().version == "TLSv1.2");
    CHECK(client->info().version == "TLSv1.2");
  }
  sc.min_version = "1.3";
  auto strict = server_ctx(sc);
  auto client = Channel::connect(cctx, "127.0.0.1");
  auto server = Channel::accept(strict);
  handshake(*client, *server);
  CHECK(server->failed());
  CHECK(server->failure().name == "tls-handshake-failed");
  CHECK(server->failure().detail == "unsupported protocol");
}

TEST_CASE("tls: a peer that sends garbage fails the handshake with a reason", "[tls][unit]") {
  Pki p;
  auto server = Channel::accept(server_ctx(server_config(p)));
  // A plaintext RFC 1006 CR sent to a TLS listener.
  const std::uint8_t cr[] = {0x03, 0x00, 0x00, 0x16, 0x11, 0xE0, 0x00, 0x00, 0x01, 0xCA, 0x00,
                             0xC1, 0x02, 0x01, 0x00, 0xC2, 0x02, 0x01, 0x02, 0xC0, 0x01, 0x0A};
  server->feed(cr, sizeof cr);
  CHECK(server->handshake() == Status::kError);
  CHECK(server->failure().name == "tls-handshake-failed");
  CHECK_FALSE(server->failure().detail.empty());
}

TEST_CASE("tls: context errors name their key", "[tls][unit]") {
  Pki p;
  const std::string garbage = p.pki.write("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
  auto errors_of = [](const Result<std::shared_ptr<const tls::Context>, std::vector<tls::KeyError>>& r) {
    std::vector<std::string> out;
    if (!r.ok())
      for (const auto& e : r.error()) out.push_back(e.key + ": " + e.message);
    return out;
  };
  {
    auto c = server_config(p);
    c.cert = garbage;
    const auto e = errors_of(tls::make_server_context(c));
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::StartsWith("cert: " + garbage + ": not a usable PEM certificate ("));
  }
  {
    auto c = server_config(p);
    c.key = p.client.key;  // another certificate's key
    const auto e = errors_of(tls::make_server_context(c));
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::StartsWith("key: " + p.client.key + ": does not match the certificate in " + p.server.cert));
  }
  {
    // An encrypted key is an error at once, never a pass-phrase prompt (which
    // would hold a reload on the terminal).
    BIO* in = BIO_new_file(p.server.key.c_str(), "r");
    REQUIRE(in != nullptr);
    EVP_PKEY* pkey = PEM_read_bio_PrivateKey(in, nullptr, nullptr, nullptr);
    BIO_free(in);
    REQUIRE(pkey != nullptr);
    const std::string enc = p.pki.path("server-encrypted.key");
    BIO* out = BIO_new_file(enc.c_str(), "w");
    REQUIRE(out != nullptr);
    char pass[] = "secret";
    CHECK(PEM_write_bio_PrivateKey(out, pkey, EVP_aes_256_cbc(), nullptr, 0, nullptr, pass) == 1);
    BIO_free(out);
    EVP_PKEY_free(pkey);
    auto c = server_config(p);
    c.key = enc;
    const auto e = errors_of(tls::make_server_context(c));
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::StartsWith("key: " + enc + ": is encrypted, and isoproxy cannot ask for a pass phrase"));
  }
  {
    auto c = server_config(p);
    c.cert = p.expired.cert;
    c.key = p.expired.key;
    const auto e = errors_of(tls::make_server_context(c));
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::StartsWith("cert: " + p.expired.cert + ": the certificate (CN=expired.test,O=isoproxy tests) expired on "));
  }
  {
    auto c = server_config(p);
    c.ciphers = "NO-SUCH-CIPHER";
    c.groups = "P-999";
    c.ciphersuites = "TLS_NOPE";
    const auto e = errors_of(tls::make_server_context(c));
    REQUIRE(e.size() == 3);
    CHECK_THAT(e[0], Catch::StartsWith("ciphers: \"NO-SUCH-CIPHER\" selects no cipher"));
    CHECK_THAT(e[1], Catch::StartsWith("ciphersuites: \"TLS_NOPE\""));
    CHECK_THAT(e[2], Catch::StartsWith("groups: \"P-999\""));
  }
  {
    auto c = server_config(p);
    c.client_ca = garbage;
    c.verify_client = "require";
    const auto e = errors_of(tls::make_server_context(c));
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::StartsWith("client_ca: " + garbage + ": no usable PEM CA certificate"));
  }
  {
    auto c = client_config(p);
    c.ca = garbage;
    const auto e = errors_of(tls::make_client_context(c));
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::StartsWith("ca: " + garbage));
  }
  auto summary = tls::read_certificate_summary(p.server.cert);
  REQUIRE(summary.ok());
  CHECK(summary->subject == p.server.subject);
  CHECK_FALSE(tls::read_certificate_summary(garbage).ok());
}

}  // namespace isoproxy::test
