// The TLS tables of the configuration: [listener.tls], [listener.upstream_tls]
// and a tsap-route route's `tls`, read from files next to real certificates
// made at test time. Defaults; relative paths; every mistake at its
// line:col with its key; a certificate that cannot be used is a config
// error; verify = false loads with a warning; the effective configuration
// loads back the same.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "check_cmd.h"
#include "conf/loader.h"
#include "filters/filter.h"
#include "support/tls_pki.h"
#include "tls.h"

namespace isoproxy::conf {
namespace {

using namespace std::chrono_literals;
using test::TestPki;

struct Files {
  TestPki pki;
  TestPki::Files ca, server, client, expired;
  Files() {
    ca = pki.make_ca("ca");
    server = pki.make_leaf("server", "ca", "server.test", {"DNS:server.test"});
    client = pki.make_leaf("client", "ca", "client.test", {"DNS:client.test"});
    expired = pki.make_leaf("expired", "ca", "expired.test", {}, -10, -1);
  }
  // Writes the config next to the certificates and loads it.
  LoadResult load(const std::string& text) {
    const std::string path = pki.write("isoproxy.toml", text);
    return load_config_file(path);
  }
  std::string path() const { return pki.path("isoproxy.toml"); }
};

std::vector<std::string> errors(const LoadResult& r) {
  std::vector<std::string> out;
  if (!r.ok())
    for (const auto& e : r.error()) out.push_back(e.to_string());
  return out;
}

std::string all(const LoadResult& r) {
  std::string out;
  for (const auto& e : errors(r)) out += e + "\n";
  return out;
}

const char* kListener = "[[listener]]\nlisten = \"127.0.0.1:1102\"\nupstream = \"192.0.2.10:102\"\n";

}  // namespace

TEST_CASE("tls config: a listener's tls and upstream_tls with their defaults, paths relative to the file", "[conf][tls]") {
  Files f;
  auto r = f.load(std::string(kListener) +
                  "[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\n"
                  "[listener.upstream_tls]\n");
  INFO(all(r));
  REQUIRE(r.ok());
  const auto& l = r->listeners[0];
  REQUIRE(l.tls);
  CHECK(l.tls->cert == f.server.cert);  // resolved against the file's directory
  CHECK(l.tls->key == f.server.key);
  CHECK(l.tls->client_ca.empty());
  CHECK(l.tls->verify_client == "off");
  CHECK(l.tls->min_version == "1.2");
  CHECK(l.tls->handshake_timeout == 10s);
  REQUIRE(l.tls->context);
  CHECK(l.tls->context->own_certificate()->subject == f.server.subject);
  REQUIRE(l.upstream_tls);
  CHECK(l.upstream_tls->verify);  // verification is on unless written off
  CHECK(l.upstream_tls->ca.empty());  // the system's store
  CHECK(l.upstream_tls->context);
  CHECK(r->warnings.empty());
}

TEST_CASE("tls config: every key is read", "[conf][tls]") {
  Files f;
  const std::string ca_dir = f.pki.make_ca_dir("cas", {"ca"}, true);
  auto r = f.load(std::string(kListener) +
                  "[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\n"
                  "verify_client = \"optional\"\nallow_subjects = [\"CN=client.test,O=isoproxy tests\"]\n"
                  "allow_sans = [\"client.test\", \"192.0.2.1\"]\nmin_version = \"1.3\"\n"
                  "ciphers = \"ECDHE-ECDSA-AES256-GCM-SHA384\"\nciphersuites = \"TLS_AES_256_GCM_SHA384\"\n"
                  "groups = \"X25519:P-256\"\nhandshake_timeout = \"3s\"\n"
                  "[listener.upstream_tls]\nca = \"" + ca_dir + "\"\nserver_name = \"mta.example.net\"\n"
                  "cert = \"client.crt\"\nkey = \"client.key\"\nmin_version = \"1.3\"\nhandshake_timeout = \"4s\"\n");
  INFO(all(r));
  REQUIRE(r.ok());
  const auto& t = *r->listeners[0].tls;
  CHECK(t.client_ca == f.ca.cert);
  CHECK(t.verify_client == "optional");
  CHECK(t.allow_subjects == std::vector<std::string>{"CN=client.test,O=isoproxy tests"});
  CHECK(t.allow_sans == std::vector<std::string>{"client.test", "192.0.2.1"});
  CHECK(t.min_version == "1.3");
  CHECK(t.ciphers == "ECDHE-ECDSA-AES256-GCM-SHA384");
  CHECK(t.ciphersuites == "TLS_AES_256_GCM_SHA384");
  CHECK(t.groups == "X25519:P-256");
  CHECK(t.handshake_timeout == 3s);
  CHECK(t.context->client_verify() == tls::Context::ClientVerify::kOptional);
  // The allow-lists need a certificate, which "optional" does not ask for.
  REQUIRE(r->warnings.size() == 1);
  CHECK(r->warnings[0].find("listener[0].tls.allow_subjects: with verify_client = \"optional\", a client without a "
                            "certificate passes the handshake and is then closed") != std::string::npos);
  const auto& u = *r->listeners[0].upstream_tls;
  CHECK(u.ca == ca_dir);  // a directory of CA certificates (hashed) is fine too
  CHECK(u.server_name == "mta.example.net");
  CHECK(u.cert == f.client.cert);
  CHECK(u.handshake_timeout == 4s);
  CHECK(u.context->own_certificate()->subject == f.client.subject);
  // client_ca makes verify_client default to "require".
  auto req = f.load(std::string(kListener) + "[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\n");
  REQUIRE(req.ok());
  CHECK(req->listeners[0].tls->verify_client == "require");
  CHECK(req->warnings.empty());
}

TEST_CASE("tls config: each mistake at its line:col with its key", "[conf][tls]") {
  Files f;
  const std::string p = f.path();
  const std::string d = f.pki.dir().string();
  struct Case {
    std::string tables;
    std::string error;
  };
  const std::vector<Case> cases = {
      {"[listener.tls]\nkey = \"server.key\"\n", p + ":4:1: listener[0].tls.cert: required: the PEM file with this listener's certificate (and its chain)"},
      {"[listener.tls]\ncert = \"nope.crt\"\nkey = \"server.key\"\n",
       p + ":5:8: listener[0].tls.cert: " + d + "/nope.crt: no such file (relative paths are taken from the configuration file's directory)"},
      {"[listener.tls]\ncert = \"" + d + "\"\nkey = \"server.key\"\n", p + ":5:8: listener[0].tls.cert: " + d + ": is a directory, expected a PEM file"},
      {"[listener.tls]\ncert = \"server.key\"\nkey = \"server.key\"\n",
       p + ":5:8: listener[0].tls.cert: " + d + "/server.key: not a usable PEM certificate (no start line)"},
      {"[listener.tls]\ncert = \"server.crt\"\nkey = \"client.key\"\n",
       p + ":6:7: listener[0].tls.key: " + d + "/client.key: does not match the certificate in " + d + "/server.crt"},
      {"[listener.tls]\ncert = \"expired.crt\"\nkey = \"expired.key\"\n", p + ":5:8: listener[0].tls.cert: " + d +
                                                                            "/expired.crt: the certificate (CN=expired.test,O=isoproxy tests) expired on "},
      {"[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nverify_client = \"require\"\n",
       p + ":7:17: listener[0].tls.verify_client: needs client_ca: the CA that client certificates must be signed by"},
      {"[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nallow_sans = [\"client.test\"]\n",
       p + ":7:14: listener[0].tls.allow_sans: only with client certificates: set client_ca (and verify_client)"},
      {"[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\nallow_subjects = [\"client.test\"]\n",
       p + ":8:18: listener[0].tls.allow_subjects: \"client.test\" is not a subject: write it as RFC 2253 prints it, e.g. "
           "\"CN=mta.example.net,O=Example\" (`openssl x509 -noout -subject -nameopt RFC2253`)"},
      {"[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nmin_version = \"1.1\"\n",
       p + ":7:15: listener[0].tls.min_version: expected one of \"1.2\", \"1.3\", found \"1.1\""},
      {"[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nhandshake_timeout = \"0\"\n",
       p + ":7:21: listener[0].tls.handshake_timeout: must be more than 0: a client that never finishes its handshake would hold the session"},
      {"[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nciphers = \"NOPE\"\n",
       p + ":7:11: listener[0].tls.ciphers: \"NOPE\" selects no cipher this OpenSSL knows"},
      {"[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_cert = \"client.crt\"\n",
       p + ":7:1: listener[0].tls.client_cert: unknown key; did you mean \"client_ca\"?"},
      {"[listener.upstream_tls]\nverify = false\nca = \"ca.crt\"\n",
       p + ":6:6: listener[0].upstream_tls.ca: not used with verify = false: remove ca, or verify the upstream (remove verify = false)"},
      {"[listener.upstream_tls]\ncert = \"client.crt\"\n", p + ":5:8: listener[0].upstream_tls.cert: a client certificate needs its key: add key"},
      {"[listener.upstream_tls]\nserver_name = \"bad name!\"\n",
       p + ":5:15: listener[0].upstream_tls.server_name: \"bad name!\" is neither a DNS name nor an IP address"},
      {"[listener.upstream_tls]\nverfy = false\n", p + ":5:1: listener[0].upstream_tls.verfy: unknown key; did you mean \"verify\"?"},
      {"upstream_tls = \"on\"\n", p + ":4:16: listener[0].upstream_tls: expected a table of TLS settings, found a string"},
  };
  for (const auto& c : cases) {
    INFO(c.tables);
    auto r = f.load(std::string(kListener) + c.tables);
    const auto e = errors(r);
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::StartsWith(c.error));
  }
}

TEST_CASE("tls config: verify = false loads, with a warning that check prints", "[conf][tls]") {
  Files f;
  auto r = f.load(std::string(kListener) + "[listener.upstream_tls]\nverify = false\n");
  INFO(all(r));
  REQUIRE(r.ok());
  CHECK_FALSE(r->listeners[0].upstream_tls->verify);
  CHECK_FALSE(r->listeners[0].upstream_tls->context->verify_peer());
  REQUIRE(r->warnings.size() == 1);
  CHECK(r->warnings[0] == f.path() + ":5:10: listener[0].upstream_tls.verify: false: the upstream's certificate is not "
                                     "verified, so anyone on the path can pose as the upstream and read the traffic");
  std::ostringstream out, err;
  CHECK(isoproxy::run_check(f.path(), false, out, err) == 0);
  CHECK(err.str() == "warning: " + r->warnings[0] + "\n");
  CHECK(out.str() == f.path() + ": ok\n");
}

TEST_CASE("tls config: crl is read on both sides, checked, and an out-of-date CRL is warned about", "[conf][tls]") {
  Files f;
  const std::string crl = f.pki.make_crl("ca.crl", "ca", {"client"});
  const std::string old = f.pki.make_crl("old.crl", "ca", {}, -40 * TestPki::kDay, -10 * TestPki::kDay);     // nextUpdate ten days ago
  const std::string early = f.pki.make_crl("early.crl", "ca", {}, 2 * TestPki::kDay, 30 * TestPki::kDay);   // thisUpdate in two days
  const std::string garbage = f.pki.write("garbage.crl", "not a CRL\n");
  f.pki.make_ca("other", "other");
  f.pki.make_ca("impostor", "ca");  // the CA's name, another key
  const std::string foreign = f.pki.make_crl("foreign.crl", "other", {});
  const std::string forged = f.pki.make_crl("forged.crl", "impostor", {});
  auto text_of = [](const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  // Files made of others: a good CRL then a broken one, two CAs, an old and a current CRL.
  const std::string broken = f.pki.write("broken.crl", text_of(crl) + "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n");
  f.pki.write("two-cas.crt", text_of(f.ca.cert) + text_of(f.pki.path("other.crt")));
  f.pki.write("old-and-new.crl", text_of(old) + text_of(crl));
  const std::string tls = "[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\n";
  auto r = f.load(std::string(kListener) + tls + "crl = \"ca.crl\"\n[listener.upstream_tls]\nca = \"ca.crt\"\ncrl = \"ca.crl\"\n");
  INFO(all(r));
  REQUIRE(r.ok());
  CHECK(r->warnings.empty());
  CHECK(r->listeners[0].tls->crl == crl);
  CHECK(r->listeners[0].upstream_tls->crl == crl);
  for (const auto* ctx : {r->listeners[0].tls->context.get(), r->listeners[0].upstream_tls->context.get()}) {
    REQUIRE(ctx->crls().size() == 1);
    CHECK(ctx->crls()[0].issuer == "CN=ca,O=isoproxy tests");
    CHECK(ctx->crls()[0].revoked == 1);
    CHECK_FALSE(ctx->crls()[0].expired);
    CHECK_FALSE(ctx->crls()[0].next_update.empty());
  }
  // Both a listener's and an upstream's CRL show in the effective configuration.
  std::ostringstream out, err;
  CHECK(isoproxy::run_check(f.path(), true, out, err) == 0);
  CHECK(out.str().find("crl = \"" + crl + "\"") != std::string::npos);

  const std::string p = f.path();
  struct Case {
    std::string tables;
    std::string error;
  };
  const std::vector<Case> cases = {
      {"[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\ncrl = \"ca.crl\"\n",
       p + ":7:7: listener[0].tls.crl: only with client certificates: set client_ca (and verify_client)"},
      {tls + "crl = \"garbage.crl\"\n", p + ":8:7: listener[0].tls.crl: " + garbage + ": no usable PEM CRL (-----BEGIN X509 CRL-----) in it"},
      {tls + "crl = \"nope.crl\"\n", p + ":8:7: listener[0].tls.crl: " + f.pki.path("nope.crl") + ": no such file"},
      {"[listener.upstream_tls]\nverify = false\ncrl = \"ca.crl\"\n",
       p + ":6:7: listener[0].upstream_tls.crl: not used with verify = false: remove crl, or verify the upstream (remove verify = false)"},
      {"[listener.upstream_tls]\ncrl = \"ca.crl\"\n",
       p + ":5:7: listener[0].upstream_tls.crl: needs ca: with the system's CA store, every CA of a public chain would need its CRL"},
      {tls + "crl = \"foreign.crl\"\n", p + ":8:7: listener[0].tls.crl: " + foreign + ": the CRL of CN=other,O=isoproxy tests is "
                                      "from no CA in client_ca (" + f.ca.cert + "): every chain is refused"},
      {tls + "crl = \"forged.crl\"\n", p + ":8:7: listener[0].tls.crl: " + forged + ": the CRL of CN=ca,O=isoproxy tests is not "
                                     "signed by that CA's key in client_ca (" + f.ca.cert + ")"},
      {tls + "crl = \"broken.crl\"\n", p + ":8:7: listener[0].tls.crl: " + broken + ": CRL number 2 in it cannot be read"},
  };
  for (const auto& c : cases) {
    INFO(c.tables);
    auto bad = f.load(std::string(kListener) + c.tables);
    const auto e = errors(bad);
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::StartsWith(c.error));
  }
  // Out of date: loads (OpenSSL refuses what it covers), with a warning that says so.
  auto expired = f.load(std::string(kListener) + tls + "crl = \"old.crl\"\n");
  REQUIRE(expired.ok());
  CHECK(expired->listeners[0].tls->context->crls()[0].expired);
  REQUIRE(expired->warnings.size() == 1);
  CHECK_THAT(expired->warnings[0], Catch::StartsWith(p + ":8:7: listener[0].tls.crl: " + old +
                                                      ": the CRL of CN=ca,O=isoproxy tests expired on "));
  CHECK_THAT(expired->warnings[0], Catch::EndsWith("every certificate it covers is refused (\"CRL has expired\") until a "
                                                   "fresh one is loaded (replace the file, then SIGHUP)"));
  // An old CRL beside a current one of the same CA is no matter.
  auto both = f.load(std::string(kListener) + tls + "crl = \"old-and-new.crl\"\n");
  REQUIRE(both.ok());
  CHECK(both->warnings.empty());
  // A CA of client_ca without a CRL: every chain through it would be refused.
  auto missing = f.load(std::string(kListener) +
                        "[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"two-cas.crt\"\ncrl = \"ca.crl\"\n");
  INFO(all(missing));
  REQUIRE(missing.ok());
  REQUIRE(missing->warnings.size() == 1);
  CHECK_THAT(missing->warnings[0], Catch::EndsWith(crl + ": no CRL from CN=other,O=isoproxy tests (a CA in client_ca): every "
                                                   "certificate chain through it is refused (\"unable to get certificate "
                                                   "CRL\"); add its CRL"));
  auto future = f.load(std::string(kListener) + "[listener.upstream_tls]\nca = \"ca.crt\"\ncrl = \"early.crl\"\n");
  REQUIRE(future.ok());
  REQUIRE(future->warnings.size() == 1);
  CHECK_THAT(future->warnings[0], Catch::Contains(early + ": the CRL of CN=ca,O=isoproxy tests is not valid before "));
}

TEST_CASE("tls config: a route's tls overrides the listener's, or says plaintext", "[conf][tls]") {
  Files f;
  auto r = f.load("[[listener]]\nlisten = \"127.0.0.1:1102\"\nfilters = [\"route\"]\n"
                  "[listener.upstream_tls]\nca = \"ca.crt\"\n"
                  "[filter.route]\nkind = \"tsap-route\"\n"
                  "[[filter.route.route]]\nname = \"tls\"\ncalled = \"A\"\nupstream = \"192.0.2.1:3102\"\n"
                  "tls = { ca = \"ca.crt\", server_name = \"a.example.net\" }\n"
                  "[[filter.route.route]]\nname = \"plain\"\ncalled = \"B\"\nupstream = \"192.0.2.2:102\"\ntls = false\n"
                  "[[filter.route.route]]\nname = \"inherit\"\ncalled = \"C\"\nupstream = \"192.0.2.3:102\"\n"
                  "[[filter.route.route]]\nname = \"sub\"\ncalled = \"D\"\nupstream = \"192.0.2.4:102\"\n"
                  "[filter.route.route.tls]\nverify = false\n");
  INFO(all(r));
  REQUIRE(r.ok());
  const std::string settings = r->filters.at("route").factory->settings_toml();
  CHECK(settings.find("[filter.route.route.tls]\nverify = true\nca = \"" + f.ca.cert + "\"\nserver_name = \"a.example.net\"\n") != std::string::npos);
  CHECK(settings.find("name = \"plain\"\nupstream = \"192.0.2.2:102\"\ncalled = [\"B\"]\ntls = false\n") != std::string::npos);
  CHECK(r->warnings.size() == 1);  // the route with verify = false
  auto bad = f.load("[[listener]]\nlisten = \"127.0.0.1:1102\"\nfilters = [\"route\"]\n"
                    "[filter.route]\nkind = \"tsap-route\"\n"
                    "[[filter.route.route]]\ncalled = \"A\"\nupstream = \"192.0.2.1:3102\"\ntls = true\n");
  const auto e = errors(bad);
  REQUIRE(e.size() == 1);
  CHECK(e[0] == f.path() + ":9:7: filter.route.route[0].tls: write a table of TLS settings (e.g. tls = { ca = \"ca.pem\" }), or false for plaintext");
}

TEST_CASE("tls config: the effective configuration loads back the same", "[conf][tls]") {
  Files f;
  auto r = f.load(std::string(kListener) +
                  "[listener.tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\n"
                  "allow_sans = [\"client.test\"]\ngroups = \"X25519\"\n"
                  "[listener.upstream_tls]\nca = \"ca.crt\"\nserver_name = \"192.0.2.10\"\n");
  INFO(all(r));
  REQUIRE(r.ok());
  const std::string text = effective_config_toml(*r);
  CHECK(text.find("[listener.tls]\ncert = \"" + f.server.cert + "\"\n") != std::string::npos);
  CHECK(text.find("[listener.upstream_tls]\nverify = true\nca = \"" + f.ca.cert + "\"\nserver_name = \"192.0.2.10\"\n") !=
        std::string::npos);
  auto again = f.load(text);
  INFO(all(again));
  REQUIRE(again.ok());
  CHECK(effective_config_toml(*again) == text);
}

}  // namespace isoproxy::conf
