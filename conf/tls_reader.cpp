#include "conf/tls_reader.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <toml++/toml.h>

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "tls.h"

namespace isoproxy::conf {

namespace {

namespace fs = std::filesystem;

std::string in_quotes(std::string_view s) { return "\"" + std::string(s) + "\""; }

bool is_ip(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

// A DNS name as certificates carry it: labels of letters, digits and '-'.
bool is_dns_name(std::string_view s) {
  if (s.empty() || s.size() > 253 || s.front() == '.' || s.back() == '.') return false;
  std::size_t label = 0;
  for (const char c : s) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
    if (!ok || ++label > 63) return false;
  }
  return true;
}

enum class PathKind { kFile, kFileOrDirectory };

// A path key: resolved against the configuration file's directory, and
// checked to exist and be readable. Empty when absent or wrong.
std::string path_key(TableReader& r, std::string_view key, PathKind kind, bool& ok) {
  const auto value = r.optional_string(key);
  if (!value) {
    if (r.node(key) != nullptr) ok = false;
    return {};
  }
  if (value->empty()) {
    r.error(key, "empty path");
    ok = false;
    return {};
  }
  fs::path p(*value);
  if (p.is_relative()) {
    const fs::path base = fs::path(r.sink().file()).parent_path();
    std::error_code ec;
    p = fs::absolute(base / p, ec);
  }
  p = p.lexically_normal();
  const std::string text = p.string();
  std::error_code ec;
  const auto st = fs::status(p, ec);
  if (ec || !fs::exists(st)) {
    r.error(key, text + ": no such file" + (p.string() != *value ? " (relative paths are taken from the configuration file's directory)" : ""));
    ok = false;
    return {};
  }
  if (fs::is_directory(st) && kind == PathKind::kFile) {
    r.error(key, text + ": is a directory, expected a PEM file");
    ok = false;
    return {};
  }
  if (::access(text.c_str(), R_OK) != 0) {
    r.error(key, text + ": not readable by this user");
    ok = false;
    return {};
  }
  return text;
}

Duration handshake_timeout(TableReader& r, Duration def, bool& ok) {
  const std::size_t before = r.sink().errors().size();
  const Duration d = r.duration("handshake_timeout", def);
  if (r.sink().errors().size() != before) {
    ok = false;
  } else if (d.count() <= 0) {
    r.error("handshake_timeout", "must be more than 0: a client that never finishes its handshake would hold the session");
    ok = false;
  }
  return d;
}

// The keys both sides share.
template <typename C>
void read_common(TableReader& r, C& c, bool& ok) {
  const std::size_t before = r.sink().errors().size();
  c.min_version = r.choice("min_version", c.min_version, {"1.2", "1.3"});
  c.ciphers = r.string("ciphers", c.ciphers);
  c.ciphersuites = r.string("ciphersuites", c.ciphersuites);
  c.groups = r.string("groups", c.groups);
  if (r.sink().errors().size() != before) ok = false;
  c.handshake_timeout = handshake_timeout(r, c.handshake_timeout, ok);
}

void report(TableReader& r, const std::vector<tls::KeyError>& errors) {
  for (const auto& e : errors) r.error(e.key.empty() ? "cert" : e.key, e.message);
}

void report_warnings(TableReader& r, const tls::Context& ctx) {
  for (const auto& w : ctx.warnings()) r.warning(w.key, w.message);
}

template <typename C>
void common_toml(std::string& o, const C& c) {
  o += "min_version = " + toml_string(c.min_version) + "\n";
  if (!c.ciphers.empty()) o += "ciphers = " + toml_string(c.ciphers) + "\n";
  if (!c.ciphersuites.empty()) o += "ciphersuites = " + toml_string(c.ciphersuites) + "\n";
  if (!c.groups.empty()) o += "groups = " + toml_string(c.groups) + "\n";
  o += "handshake_timeout = " + toml_string(format_duration(c.handshake_timeout)) + "\n";
}

std::string list_toml(const std::vector<std::string>& v) {
  std::string o = "[";
  for (std::size_t i = 0; i < v.size(); ++i) o += (i ? ", " : "") + toml_string(v[i]);
  return o + "]";
}

}  // namespace

std::shared_ptr<const TlsServerConfig> read_tls_server(TableReader& parent, std::string_view key) {
  const toml::table* t = parent.table(key);
  if (t == nullptr) return nullptr;
  TableReader r(*t, parent.path() + "." + std::string(key), parent.sink());
  auto c = std::make_shared<TlsServerConfig>();
  bool ok = true;
  c->cert = path_key(r, "cert", PathKind::kFile, ok);
  if (r.node("cert") == nullptr) {
    r.error("cert", "required: the PEM file with this listener's certificate (and its chain)");
    ok = false;
  }
  c->key = path_key(r, "key", PathKind::kFile, ok);
  if (r.node("key") == nullptr) {
    r.error("key", "required: the PEM file with the certificate's private key");
    ok = false;
  }
  c->client_ca = path_key(r, "client_ca", PathKind::kFileOrDirectory, ok);
  const bool has_ca = r.node("client_ca") != nullptr;
  std::size_t before = r.sink().errors().size();
  c->verify_client = r.choice("verify_client", has_ca ? "require" : "off", {"off", "optional", "require"});
  if (r.sink().errors().size() != before) ok = false;
  if (c->verify_client != "off" && !has_ca && r.node("verify_client") != nullptr) {
    r.error("verify_client", "needs client_ca: the CA that client certificates must be signed by");
    ok = false;
  }
  before = r.sink().errors().size();
  c->allow_subjects = r.string_list("allow_subjects", {});
  c->allow_sans = r.string_list("allow_sans", {});
  if (r.sink().errors().size() != before) ok = false;
  for (const char* k : {"allow_subjects", "allow_sans"}) {
    if (r.node(k) != nullptr && c->verify_client == "off") {
      r.error(k, "only with client certificates: set client_ca (and verify_client)");
      ok = false;
    }
  }
  if (c->verify_client == "optional" && (!c->allow_subjects.empty() || !c->allow_sans.empty())) {
    // The lists need a certificate, which "optional" does not ask for: such
    // a client completes its handshake and is then refused, with no alert.
    r.warning(c->allow_subjects.empty() ? "allow_sans" : "allow_subjects",
              "with verify_client = \"optional\", a client without a certificate passes the handshake and is then "
              "closed (tls-peer-not-allowed), with no TLS alert to say why; verify_client = \"require\" refuses it "
              "during the handshake");
  }
  for (const auto& s : c->allow_subjects) {
    if (s.find('=') == std::string::npos) {
      r.error("allow_subjects", in_quotes(s) + " is not a subject: write it as RFC 2253 prints it, e.g. \"CN=mta.example.net,O=Example\" "
                                             "(`openssl x509 -noout -subject -nameopt RFC2253`)");
      ok = false;
    }
  }
  for (const auto& s : c->allow_sans) {
    if (!is_ip(s) && !is_dns_name(s)) {
      r.error("allow_sans", in_quotes(s) + " is neither a DNS name nor an IP address");
      ok = false;
    }
  }
  c->crl = path_key(r, "crl", PathKind::kFile, ok);
  if (r.node("crl") != nullptr && c->verify_client == "off") {
    r.error("crl", "only with client certificates: set client_ca (and verify_client)");
    ok = false;
  }
  read_common(r, *c, ok);
  r.finish();
  if (!ok || c->cert.empty() || c->key.empty()) return nullptr;
  auto ctx = tls::make_server_context(*c);
  if (!ctx) {
    report(r, ctx.error());
    return nullptr;
  }
  report_warnings(r, **ctx);
  c->context = *ctx;
  return c;
}

std::optional<std::shared_ptr<const TlsClientConfig>> read_tls_client(TableReader& parent, std::string_view key,
                                                                      bool allow_off, bool& ok) {
  const toml::node* n = parent.node(key);
  if (n == nullptr) return std::nullopt;
  if (allow_off) {
    if (const auto* b = n->as_boolean()) {
      if (!b->get()) return std::shared_ptr<const TlsClientConfig>();
      parent.error(key, "write a table of TLS settings (e.g. tls = { ca = \"ca.pem\" }), or false for plaintext");
      ok = false;
      return std::nullopt;
    }
  }
  const toml::table* t = n->as_table();
  if (t == nullptr) {
    parent.error(key, std::string("expected a table of TLS settings") + (allow_off ? " or false" : "") + ", found " + type_name(*n));
    ok = false;
    return std::nullopt;
  }
  TableReader r(*t, parent.path() + "." + std::string(key), parent.sink());
  auto c = std::make_shared<TlsClientConfig>();
  bool mine = true;
  const std::size_t before = r.sink().errors().size();
  c->verify = r.boolean("verify", true);
  if (r.sink().errors().size() != before) mine = false;
  c->ca = path_key(r, "ca", PathKind::kFileOrDirectory, mine);
  if (!c->verify) {
    if (r.node("ca") != nullptr) {
      r.error("ca", "not used with verify = false: remove ca, or verify the upstream (remove verify = false)");
      mine = false;
    }
    r.warning("verify", "false: the upstream's certificate is not verified, so anyone on the path can pose as the "
                        "upstream and read the traffic");
  }
  c->crl = path_key(r, "crl", PathKind::kFile, mine);
  if (!c->verify && r.node("crl") != nullptr) {
    r.error("crl", "not used with verify = false: remove crl, or verify the upstream (remove verify = false)");
    mine = false;
  } else if (r.node("crl") != nullptr && r.node("ca") == nullptr) {
    r.error("crl", "needs ca: with the system's CA store, every CA of a public chain would need its CRL in this "
                   "file, or the upstream is refused (\"unable to get certificate CRL\")");
    mine = false;
  }
  c->server_name = r.string("server_name", "");
  if (r.node("server_name") != nullptr && !is_ip(c->server_name) && !is_dns_name(c->server_name)) {
    r.error("server_name", in_quotes(c->server_name) + " is neither a DNS name nor an IP address");
    mine = false;
  }
  c->cert = path_key(r, "cert", PathKind::kFile, mine);
  c->key = path_key(r, "key", PathKind::kFile, mine);
  const bool has_cert = r.node("cert") != nullptr, has_key = r.node("key") != nullptr;
  if (has_cert != has_key) {
    r.error(has_cert ? "cert" : "key", has_cert ? "a client certificate needs its key: add key" : "key without cert: add the certificate (cert)");
    mine = false;
  }
  read_common(r, *c, mine);
  r.finish();
  if (!mine) {
    ok = false;
    return std::nullopt;
  }
  auto ctx = tls::make_client_context(*c);
  if (!ctx) {
    report(r, ctx.error());
    ok = false;
    return std::nullopt;
  }
  report_warnings(r, **ctx);
  c->context = *ctx;
  return std::shared_ptr<const TlsClientConfig>(std::move(c));
}

std::string tls_server_toml(const TlsServerConfig& c, std::string_view header) {
  std::string o = "[" + std::string(header) + "]\n";
  o += "cert = " + toml_string(c.cert) + "\n";
  o += "key = " + toml_string(c.key) + "\n";
  if (!c.client_ca.empty()) o += "client_ca = " + toml_string(c.client_ca) + "\n";
  o += "verify_client = " + toml_string(c.verify_client) + "\n";
  if (!c.crl.empty()) o += "crl = " + toml_string(c.crl) + "\n";
  if (!c.allow_subjects.empty()) o += "allow_subjects = " + list_toml(c.allow_subjects) + "\n";
  if (!c.allow_sans.empty()) o += "allow_sans = " + list_toml(c.allow_sans) + "\n";
  common_toml(o, c);
  return o;
}

std::string tls_client_toml(const TlsClientConfig& c, std::string_view header) {
  std::string o = "[" + std::string(header) + "]\n";
  o += std::string("verify = ") + (c.verify ? "true" : "false") + "\n";
  if (!c.ca.empty()) o += "ca = " + toml_string(c.ca) + "\n";
  if (!c.crl.empty()) o += "crl = " + toml_string(c.crl) + "\n";
  if (!c.server_name.empty()) o += "server_name = " + toml_string(c.server_name) + "\n";
  if (!c.cert.empty()) o += "cert = " + toml_string(c.cert) + "\nkey = " + toml_string(c.key) + "\n";
  common_toml(o, c);
  return o;
}

}  // namespace isoproxy::conf
