#include "tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>

#include "conf/config.h"

namespace isoproxy::tls {

namespace {

// OpenSSL 3.0 names the alerts of TLS 1.2 only: those RFC 8446 added (one of
// them what a server that wants a client certificate sends) and any other
// number are named here.
std::string alert_text(int value) {
  const std::string name = SSL_alert_desc_string_long(value);
  if (name != "unknown") return name;
  switch (value) {
    case 109: return "missing extension";
    case 115: return "unknown PSK identity";
    case 116: return "certificate required";
    case 120: return "no application protocol";
    default: return "alert " + std::to_string(value);
  }
}

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;

// The reason of the earliest OpenSSL error queued (the specific one: "no
// start line" rather than the "PEM lib" it caused), without the library's
// codes, or `fallback`. Clears the queue.
std::string last_error(std::string_view fallback) {
  const unsigned long e = ERR_peek_error();
  std::string out;
  if (e != 0) {
    const char* r = ERR_reason_error_string(e);
    out = r != nullptr ? r : "error " + std::to_string(ERR_GET_REASON(e));
  }
  ERR_clear_error();
  return out.empty() ? std::string(fallback) : out;
}

std::string name_text(const X509_NAME* name) {
  if (name == nullptr) return {};
  BioPtr b(BIO_new(BIO_s_mem()));
  if (!b || X509_NAME_print_ex(b.get(), name, 0, XN_FLAG_RFC2253) < 0) return {};
  char* data = nullptr;
  const long n = BIO_get_mem_data(b.get(), &data);
  return n > 0 ? std::string(data, static_cast<std::size_t>(n)) : std::string();
}

std::string time_text(const ASN1_TIME* t) {
  std::tm tm{};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) return "?";
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

CertSummary summarise(const X509* x) {
  return {name_text(X509_get_subject_name(x)), name_text(X509_get_issuer_name(x)), time_text(X509_get0_notAfter(x))};
}

bool is_ip_literal(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The output BIO: whatever OpenSSL writes lands in the channel's buffer,
// which the session drains onto the socket after each call.
BIO_METHOD* sink_method() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "isoproxy-tls-output");
    BIO_meth_set_write_ex(m, [](BIO* b, const char* data, std::size_t len, std::size_t* written) -> int {
      auto* ch = static_cast<Channel*>(BIO_get_data(b));
      auto& out = ch->sink();
      out.insert(out.end(), reinterpret_cast<const std::uint8_t*>(data), reinterpret_cast<const std::uint8_t*>(data) + len);
      *written = len;
      return 1;
    });
    BIO_meth_set_ctrl(m, [](BIO*, int cmd, long, void*) -> long { return cmd == BIO_CTRL_FLUSH ? 1 : 0; });
    BIO_meth_set_create(m, [](BIO* b) -> int {
      BIO_set_init(b, 1);
      return 1;
    });
    return m;
  }();
  return method;
}

Channel* channel_of(const SSL* ssl) { return static_cast<Channel*>(SSL_get_app_data(ssl)); }

// Records the first certificate verification refused, and lets OpenSSL's
// verdict stand; a peer certificate that verified but is not on a server's
// allow-lists is refused here, so that the handshake fails with an alert
// that tells the client.
int verify_callback(int ok, X509_STORE_CTX* store) {
  auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  Channel* ch = ssl != nullptr ? channel_of(ssl) : nullptr;
  if (ch == nullptr) return ok;
  X509* cert = X509_STORE_CTX_get_current_cert(store);
  if (ok == 0) {
    ch->on_verify_failed(X509_STORE_CTX_get_error_depth(store), X509_STORE_CTX_get_error(store),
                         cert != nullptr ? name_text(X509_get_subject_name(cert)) : std::string());
    return 0;
  }
  if (X509_STORE_CTX_get_error_depth(store) == 0 && cert != nullptr && !ch->on_peer_certificate(cert)) {
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  return ok;
}

void info_callback(const SSL* ssl, int where, int ret) {
  // SSL_CB_READ_ALERT shares its alert bit with SSL_CB_WRITE_ALERT: test both bits.
  if ((where & SSL_CB_ALERT) == 0) return;
  if ((where & SSL_CB_WRITE) != 0) {
    // SSL_OP_NO_RENEGOTIATION answers a renegotiation with this warning.
    if ((ret & 0xFF) == SSL_AD_NO_RENEGOTIATION) {
      if (Channel* ch = channel_of(ssl)) ch->on_renegotiation_refused();
    }
    return;
  }
  if ((where & SSL_CB_READ) == 0) return;
  // A warning-level close_notify is the ordinary end; fatal alerts end the session.
  if ((ret >> 8) != SSL3_AL_FATAL) return;
  if (Channel* ch = channel_of(ssl)) ch->on_alert_received(ret & 0xFF);
}

int min_version(const std::string& v) { return v == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION; }

// What both roles share: protocol floor, no renegotiation, buffers released
// when idle, cipher and group choices.
void common_setup(SSL_CTX* ctx, const std::string& version, const std::string& ciphers, const std::string& suites,
                  const std::string& groups, std::vector<KeyError>& errors) {
  SSL_CTX_set_min_proto_version(ctx, min_version(version));
  SSL_CTX_set_max_proto_version(ctx, 0);  // the highest this OpenSSL has: TLS 1.3 is preferred
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  // Sessions are not resumed: each connection is verified in full, and a
  // reload never meets a session from a context it replaced.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_info_callback(ctx, info_callback);
  if (!ciphers.empty() && SSL_CTX_set_cipher_list(ctx, ciphers.c_str()) != 1)
    errors.push_back({"ciphers", "\"" + ciphers + "\" selects no cipher this OpenSSL knows (" + last_error("no cipher match") +
                                     "); see `openssl ciphers -v`"});
  if (!suites.empty() && SSL_CTX_set_ciphersuites(ctx, suites.c_str()) != 1)
    errors.push_back({"ciphersuites", "\"" + suites + "\" is not a list of TLS 1.3 suites (" + last_error("no suite match") +
                                          "), e.g. \"TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256\""});
  if (!groups.empty() && SSL_CTX_set1_groups_list(ctx, groups.c_str()) != 1) {
    ERR_clear_error();
    errors.push_back({"groups", "\"" + groups + "\" is not a list of groups this OpenSSL knows, e.g. \"X25519:P-256\""});
  }
}

// The certificate chain and key, and that they belong together and are valid now.
void load_own(SSL_CTX* ctx, const std::string& cert, const std::string& key, std::vector<KeyError>& errors,
              std::optional<CertSummary>& own) {
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
    errors.push_back({"cert", cert + ": not a usable PEM certificate (" + last_error("cannot read") + ")"});
    return;
  }
  X509* x = SSL_CTX_get0_certificate(ctx);
  if (x != nullptr) {
    own = summarise(x);
    if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) {
      errors.push_back({"cert", cert + ": the certificate (" + own->subject + ") expired on " + own->not_after});
    } else if (X509_cmp_current_time(X509_get0_notBefore(x)) >= 0) {
      errors.push_back({"cert", cert + ": the certificate (" + own->subject + ") is not valid before " +
                                    time_text(X509_get0_notBefore(x))});
    }
  }
  // An encrypted key would make OpenSSL ask for its pass phrase on the
  // terminal, which freezes a reload (the main loop waits on the prompt).
  // The callback answers nothing and notes that a pass phrase was wanted.
  bool encrypted = false;
  SSL_CTX_set_default_passwd_cb(ctx, [](char*, int, int, void* asked) -> int {
    if (asked != nullptr) *static_cast<bool*>(asked) = true;
    return 0;
  });
  SSL_CTX_set_default_passwd_cb_userdata(ctx, &encrypted);
  const int used = SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM);
  SSL_CTX_set_default_passwd_cb_userdata(ctx, nullptr);
  if (used != 1) {
    const unsigned long e = ERR_peek_last_error();
    if (encrypted) {
      ERR_clear_error();
      errors.push_back({"key", key + ": is encrypted, and isoproxy cannot ask for a pass phrase: store it unencrypted "
                                     "(openssl pkey -in " + key + " -out NEW.key) in a file only isoproxy's user can read"});
    } else if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
      ERR_clear_error();
      errors.push_back({"key", key + ": does not match the certificate in " + cert});
    } else {
      errors.push_back({"key", key + ": not a usable PEM private key (" + last_error("cannot read") + ")"});
    }
    return;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    errors.push_back({"key", key + ": does not match the certificate in " + cert + " (" + last_error("mismatch") + ")"});  // NOLINT
  }
}

// "5d3c0f1a.0": the name under which OpenSSL looks a CA up in a directory
// (the hash of its subject, then a collision counter).
bool is_hashed_name(const std::string& name) {
  const auto dot = name.find('.');
  if (dot != 8 || dot + 1 == name.size()) return false;
  auto hex = [](char ch) { return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'); };
  auto digit = [](char ch) { return ch >= '0' && ch <= '9'; };
  return std::all_of(name.begin(), name.begin() + 8, hex) && std::all_of(name.begin() + 9, name.end(), digit);
}

// OpenSSL finds a CA in a directory only by its hashed name, never by reading
// the files, so a directory not prepared with `openssl rehash` loads without
// a word and then refuses every peer at handshake time. A directory with no
// hashed name at all is an error; certificates that have none (added after
// the last rehash) are warned about.
void check_ca_dir(const std::string& key, const std::string& path, std::vector<KeyError>& errors,
                  std::vector<KeyError>& warnings) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<std::string> hashed, others;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;  // follows symlinks, as OpenSSL does
    std::string name = it->path().filename().string();
    (is_hashed_name(name) ? hashed : others).push_back(std::move(name));
  }
  if (ec) {
    errors.push_back({key, path + ": cannot list the CA directory (" + ec.message() + ")"});
    return;
  }
  const std::string fix = ": prepare it with `openssl rehash " + path + "` (or name a PEM file)";
  if (hashed.empty()) {
    errors.push_back({key, path + ": no CA certificate under a hashed name (like 5d3c0f1a.0), so OpenSSL would find none and refuse "
                                  "every peer" + fix});
    return;
  }
  std::vector<std::string> missing;
  for (const std::string& name : others) {
    BIO* in = BIO_new_file((fs::path(path) / name).c_str(), "r");
    if (in == nullptr) continue;
    while (X509* x = PEM_read_bio_X509(in, nullptr, nullptr, nullptr)) {
      char prefix[16];
      std::snprintf(prefix, sizeof prefix, "%08lx.", X509_subject_name_hash(x));
      if (std::none_of(hashed.begin(), hashed.end(), [&](const std::string& h) { return h.rfind(prefix, 0) == 0; }))
        missing.push_back(name + " (" + name_text(X509_get_subject_name(x)) + ")");
      X509_free(x);
    }
    BIO_free(in);
  }
  ERR_clear_error();
  if (!missing.empty()) {
    std::string list;
    for (std::size_t i = 0; i < missing.size() && i < 3; ++i) list += (i == 0 ? "" : ", ") + missing[i];
    if (missing.size() > 3) list += " and " + std::to_string(missing.size() - 3) + " more";
    warnings.push_back({key, path + ": " + std::to_string(missing.size()) + " CA certificate(s) with no hashed name, which OpenSSL "
                                    "will not find: " + list + fix});
  }
}

// CA certificates to verify the peer with: a PEM file or a hashed directory
// (c_rehash). `client_list`: also announce them to clients (server side).
void load_ca(SSL_CTX* ctx, const std::string& key, const std::string& path, bool client_list,
             std::vector<KeyError>& errors, std::vector<KeyError>& warnings) {
  if (is_directory(path)) {
    check_ca_dir(key, path, errors, warnings);
    if (SSL_CTX_load_verify_dir(ctx, path.c_str()) != 1) {
      errors.push_back({key, path + ": cannot use as a CA directory (" + last_error("cannot read") + ")"});
      return;
    }
    if (client_list) {
      STACK_OF(X509_NAME)* names = sk_X509_NAME_new_null();
      if (names != nullptr && SSL_add_dir_cert_subjects_to_stack(names, path.c_str()) == 1) {
        SSL_CTX_set_client_CA_list(ctx, names);
      } else {
        sk_X509_NAME_pop_free(names, X509_NAME_free);
        ERR_clear_error();
      }
    }
    return;
  }
  if (SSL_CTX_load_verify_file(ctx, path.c_str()) != 1) {
    errors.push_back({key, path + ": no usable PEM CA certificate (" + last_error("cannot read") + ")"});
    return;
  }
  if (client_list) {
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(path.c_str())) SSL_CTX_set_client_CA_list(ctx, names);
    ERR_clear_error();
  }
}

// Certificate revocation lists, PEM, one or more in the file. With them every
// certificate of the peer's chain is checked (X509_V_FLAG_CRL_CHECK_ALL, as
// HAProxy's crl-file and Envoy's crl do): each CA in it needs its CRL here,
// or verification fails with "unable to get certificate CRL". When the CAs
// come from a file (`ca_key` names its key), each CRL must be signed by one
// of them, and a CA without a CRL is warned about: either would refuse every
// peer at handshake time with nothing said before.
void load_crl(SSL_CTX* ctx, const std::string& path, const std::string& ca_key, const std::string& ca_path,
              std::vector<KeyError>& errors, std::vector<KeyError>& warnings, std::vector<CrlSummary>& out) {
  BIO* in = BIO_new_file(path.c_str(), "r");
  if (in == nullptr) {
    errors.push_back({"crl", path + ": cannot read (" + last_error("cannot open") + ")"});
    return;
  }
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  std::vector<X509_CRL*> crls;
  ERR_clear_error();
  while (X509_CRL* crl = PEM_read_bio_X509_CRL(in, nullptr, nullptr, nullptr)) {
    CrlSummary s;
    s.issuer = name_text(X509_CRL_get_issuer(crl));
    s.this_update = time_text(X509_CRL_get0_lastUpdate(crl));
    s.not_yet_valid = X509_cmp_current_time(X509_CRL_get0_lastUpdate(crl)) > 0;
    if (const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl)) {
      s.next_update = time_text(next);
      s.expired = X509_cmp_current_time(next) < 0;
      std::tm tm{};
      if (ASN1_TIME_to_tm(next, &tm) == 1) s.next_update_unix = static_cast<std::int64_t>(timegm(&tm));
    }
    if (const STACK_OF(X509_REVOKED)* r = X509_CRL_get_REVOKED(crl)) s.revoked = static_cast<std::size_t>(sk_X509_REVOKED_num(r));
    if (X509_STORE_add_crl(store, crl) != 1) {  // takes its own reference
      errors.push_back({"crl", path + ": the CRL of " + s.issuer + " cannot be used (" + last_error("cannot add") + ")"});
    }
    crls.push_back(crl);
    out.push_back(std::move(s));
  }
  BIO_free(in);
  // The reading ends with "no start line" after the last CRL: that is the end
  // of the file, not an error, once at least one was read.
  const unsigned long e = ERR_peek_last_error();
  const bool at_end = e == 0 || (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE);
  if (crls.empty()) {
    errors.push_back({"crl", path + ": no usable PEM CRL (-----BEGIN X509 CRL-----) in it (" + last_error("none found") + ")"});
  } else if (!at_end) {
    errors.push_back({"crl", path + ": CRL number " + std::to_string(crls.size() + 1) + " in it cannot be read (" +
                                 last_error("cannot read") + ")"});
  }
  ERR_clear_error();
  if (errors.empty() && !ca_path.empty() && !is_directory(ca_path)) {
    // The CAs of the file, against the CRLs' issuers and signatures.
    STACK_OF(X509)* cas = X509_STORE_get1_all_certs(store);
    const int n = cas != nullptr ? sk_X509_num(cas) : 0;
    std::vector<bool> has_crl(static_cast<std::size_t>(n), false);
    for (std::size_t k = 0; k < crls.size(); ++k) {
      bool named = false, signed_by = false;
      for (int i = 0; i < n; ++i) {
        X509* ca = sk_X509_value(cas, i);
        if (X509_NAME_cmp(X509_get_subject_name(ca), X509_CRL_get_issuer(crls[k])) != 0) continue;
        named = true;
        if (X509_CRL_verify(crls[k], X509_get0_pubkey(ca)) == 1) {
          signed_by = true;
          has_crl[static_cast<std::size_t>(i)] = true;
        }
      }
      ERR_clear_error();
      if (!named) {
        errors.push_back({"crl", path + ": the CRL of " + out[k].issuer + " is from no CA in " + ca_key + " (" + ca_path +
                                     "): every chain is refused (\"unable to get certificate CRL\")"});
      } else if (!signed_by) {
        errors.push_back({"crl", path + ": the CRL of " + out[k].issuer + " is not signed by that CA's key in " + ca_key +
                                     " (" + ca_path + "): every chain through it is refused (\"CRL signature failure\")"});
      }
    }
    for (int i = 0; i < n; ++i) {
      if (has_crl[static_cast<std::size_t>(i)]) continue;
      warnings.push_back({"crl", path + ": no CRL from " + name_text(X509_get_subject_name(sk_X509_value(cas, i))) +
                                     " (a CA in " + ca_key + "): every certificate chain through it is refused "
                                     "(\"unable to get certificate CRL\"); add its CRL"});
    }
    sk_X509_pop_free(cas, X509_free);
  }
  // Out of date: OpenSSL refuses every certificate a CRL covers once none of
  // its issuer's is current. Said at every start, reload and check, so that
  // the job that fetches CRLs is fixed before the link goes down.
  for (std::size_t k = 0; k < out.size(); ++k) {
    const CrlSummary& s = out[k];
    if (!s.expired && !s.not_yet_valid) continue;
    const bool fresh_one = std::any_of(out.begin(), out.end(), [&](const CrlSummary& o) {
      return o.issuer == s.issuer && !o.expired && !o.not_yet_valid;
    });
    const bool said = std::any_of(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(k),
                                  [&](const CrlSummary& o) { return o.issuer == s.issuer; });
    if (fresh_one || said) continue;
    if (s.expired) {
      warnings.push_back({"crl", path + ": the CRL of " + s.issuer + " expired on " + s.next_update +
                                     ": every certificate it covers is refused (\"CRL has expired\") until a fresh one is "
                                     "loaded (replace the file, then SIGHUP)"});
    } else {
      warnings.push_back({"crl", path + ": the CRL of " + s.issuer + " is not valid before " + s.this_update +
                                     " (is this host's clock right?): every certificate it covers is refused until then"});
    }
  }
  for (X509_CRL* crl : crls) X509_CRL_free(crl);
  const unsigned long flags = X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL;
  X509_STORE_set_flags(store, flags);
  X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx), flags);
}

}  // namespace

Context::~Context() { SSL_CTX_free(ctx_); }

Result<std::shared_ptr<const Context>, std::vector<KeyError>> make_server_context(const conf::TlsServerConfig& c) {
  std::shared_ptr<Context> out(new Context(Context::Role::kServer));
  std::vector<KeyError> errors;
  ERR_clear_error();
  out->ctx_ = SSL_CTX_new(TLS_server_method());
  if (out->ctx_ == nullptr) return unexpected(std::vector<KeyError>{{"", "OpenSSL: " + last_error("SSL_CTX_new failed")}});
  SSL_CTX* ctx = out->ctx_;
  common_setup(ctx, c.min_version, c.ciphers, c.ciphersuites, c.groups, errors);
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_num_tickets(ctx, 0);
  load_own(ctx, c.cert, c.key, errors, out->own_);
  out->client_verify_ = c.verify_client == "require"    ? Context::ClientVerify::kRequire
                        : c.verify_client == "optional" ? Context::ClientVerify::kOptional
                                                        : Context::ClientVerify::kOff;
  if (!c.client_ca.empty()) load_ca(ctx, "client_ca", c.client_ca, true, errors, out->warnings_);
  if (!c.crl.empty()) load_crl(ctx, c.crl, "client_ca", c.client_ca, errors, out->warnings_, out->crls_);
  switch (out->client_verify_) {
    case Context::ClientVerify::kRequire:
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_callback);
      break;
    case Context::ClientVerify::kOptional:
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_callback);
      break;
    case Context::ClientVerify::kOff:
      SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
      break;
  }
  out->allow_subjects_ = c.allow_subjects;
  out->allow_sans_ = c.allow_sans;
  out->handshake_timeout_ = c.handshake_timeout;
  if (!errors.empty()) return unexpected(std::move(errors));
  return std::shared_ptr<const Context>(std::move(out));
}

Result<std::shared_ptr<const Context>, std::vector<KeyError>> make_client_context(const conf::TlsClientConfig& c) {
  std::shared_ptr<Context> out(new Context(Context::Role::kClient));
  std::vector<KeyError> errors;
  ERR_clear_error();
  out->ctx_ = SSL_CTX_new(TLS_client_method());
  if (out->ctx_ == nullptr) return unexpected(std::vector<KeyError>{{"", "OpenSSL: " + last_error("SSL_CTX_new failed")}});
  SSL_CTX* ctx = out->ctx_;
  common_setup(ctx, c.min_version, c.ciphers, c.ciphersuites, c.groups, errors);
  if (!c.cert.empty()) {
    load_own(ctx, c.cert, c.key, errors, out->own_);
  } else {
    // Called when a server asks for a client certificate and none is set:
    // noted, so that the failure that follows can say why; none is sent.
    SSL_CTX_set_client_cert_cb(ctx, [](SSL* ssl, X509**, EVP_PKEY**) -> int {
      if (Channel* ch = channel_of(ssl)) ch->on_client_certificate_requested();
      return 0;
    });
  }
  out->verify_peer_ = c.verify;
  if (c.verify) {
    if (!c.ca.empty()) {
      load_ca(ctx, "ca", c.ca, false, errors, out->warnings_);
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
      errors.push_back({"ca", "the system's CA store cannot be read (" + last_error("cannot read") + "): name a ca file"});
    }
    if (!c.crl.empty()) load_crl(ctx, c.crl, "ca", c.ca, errors, out->warnings_, out->crls_);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_callback);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  }
  out->server_name_ = c.server_name;
  out->handshake_timeout_ = c.handshake_timeout;
  if (!errors.empty()) return unexpected(std::move(errors));
  return std::shared_ptr<const Context>(std::move(out));
}

// ---------------------------------------------------------------------------
// Channel

Channel::Channel(std::shared_ptr<const Context> ctx, SSL* ssl) : ctx_(std::move(ctx)), ssl_(ssl) {
  SSL_set_app_data(ssl_, this);
  BIO* in = BIO_new(BIO_s_mem());  // empty: reads "retry" until the first feed
  BIO* out = BIO_new(sink_method());
  if (in == nullptr || out == nullptr) std::abort();  // out of memory
  BIO_set_data(out, this);
  SSL_set_bio(ssl_, in, out);
}

Channel::~Channel() { SSL_free(ssl_); }

std::unique_ptr<Channel> Channel::accept(std::shared_ptr<const Context> ctx) {
  SSL* ssl = SSL_new(ctx->native());
  if (ssl == nullptr) std::abort();  // out of memory
  SSL_set_accept_state(ssl);
  return std::unique_ptr<Channel>(new Channel(std::move(ctx), ssl));
}

std::unique_ptr<Channel> Channel::connect(std::shared_ptr<const Context> ctx, std::string_view upstream_ip) {
  SSL* ssl = SSL_new(ctx->native());
  if (ssl == nullptr) std::abort();
  SSL_set_connect_state(ssl);
  auto ch = std::unique_ptr<Channel>(new Channel(ctx, ssl));
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  // Names in certificates are matched whole: "*.example" never stands for "a.b.example".
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  const std::string& name = ctx->server_name();
  const std::string ip(name.empty() ? upstream_ip : std::string_view(name));
  const bool name_is_ip = name.empty() || is_ip_literal(name);
  bool checked = true;
  if (name_is_ip) {
    // RFC 6066 §3: no IP literal in SNI; the address is checked against the
    // certificate's IP subjectAltNames instead.
    if (ctx->verify_peer()) checked = X509_VERIFY_PARAM_set1_ip_asc(param, ip.c_str()) == 1;
  } else {
    SSL_set_tlsext_host_name(ssl, name.c_str());
    ch->info_.sni = name;
    if (ctx->verify_peer()) checked = X509_VERIFY_PARAM_set1_host(param, name.c_str(), name.size()) == 1;
  }
  ERR_clear_error();
  if (!checked) {
    // Fail closed: without the name check any certificate of the CA would do.
    ch->failed_ = true;
    ch->failure_ = {"tls-handshake-failed", "cannot check the certificate against \"" + ip + "\""};
  }
  return ch;
}

void Channel::feed(const std::uint8_t* data, std::size_t n) {
  // A read-only memory BIO over the caller's buffer: no copy, and nothing
  // held once OpenSSL has taken what it needs (a partial record goes into
  // its own record buffer). Empty means "retry", not end of stream.
  BIO* in = BIO_new_mem_buf(data, static_cast<int>(n));
  if (in == nullptr) std::abort();
  BIO_set_mem_eof_return(in, -1);
  SSL_set0_rbio(ssl_, in);
}

bool Channel::inside_record() const {
  // Bytes OpenSSL holds but has not made a record of (SSL_pending counts the
  // decrypted ones, which the session reads before it sees a FIN).
  return SSL_has_pending(ssl_) == 1 && SSL_pending(ssl_) == 0;
}

void Channel::drop_input() {
  // Only when something is left: the common case costs nothing.
  if (BIO_ctrl_pending(SSL_get_rbio(ssl_)) == 0) return;
  BIO* empty = BIO_new(BIO_s_mem());
  if (empty == nullptr) std::abort();
  SSL_set0_rbio(ssl_, empty);
}

Channel::Status Channel::handshake() {
  if (established_) return Status::kOk;
  if (failed_) return Status::kError;
  ERR_clear_error();
  const int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    complete_handshake();
    return failed_ ? Status::kError : Status::kOk;
  }
  return fail(r, true);
}

void Channel::complete_handshake() {
  established_ = true;
  info_.version = SSL_get_version(ssl_);
  if (const SSL_CIPHER* c = SSL_get_current_cipher(ssl_)) info_.cipher = SSL_CIPHER_get_name(c);
  if (ctx_->role() == Context::Role::kServer) {
    if (const char* sni = SSL_get_servername(ssl_, TLSEXT_NAMETYPE_host_name)) info_.sni = sni;
  }
  X509* peer = SSL_get0_peer_certificate(ssl_);
  if (peer != nullptr) {
    info_.peer_subject = name_text(X509_get_subject_name(peer));
    info_.peer_issuer = name_text(X509_get_issuer_name(peer));
  }
  const bool verifying = ctx_->role() == Context::Role::kClient ? ctx_->verify_peer()
                                                                : ctx_->client_verify() != Context::ClientVerify::kOff;
  if (!verifying) {
    info_.verify = "off";
  } else if (peer == nullptr) {
    info_.verify = "no-certificate";
  } else {
    const long v = SSL_get_verify_result(ssl_);
    info_.verify = v == X509_V_OK ? "ok" : X509_verify_cert_error_string(v);
  }
  // Mutual TLS with allow-lists: a certificate was judged by the verify
  // callback (on_peer_certificate); without one, with verify_client =
  // "optional", the client is refused here.
  if (ctx_->role() == Context::Role::kServer && (!ctx_->allow_subjects().empty() || !ctx_->allow_sans().empty()) &&
      peer == nullptr) {
    failed_ = true;
    failure_ = {"tls-peer-not-allowed", "no client certificate"};
  }
}

bool Channel::on_peer_certificate(X509* peer) {
  // The allow-lists: an exact subject, or a subjectAltName DNS name or IP
  // address (a wildcard in the certificate does not match an entry).
  if (ctx_->role() != Context::Role::kServer || (ctx_->allow_subjects().empty() && ctx_->allow_sans().empty())) return true;
  const std::string subject = name_text(X509_get_subject_name(peer));
  bool allowed = false;
  for (const auto& s : ctx_->allow_subjects()) allowed = allowed || s == subject;
  for (const auto& s : ctx_->allow_sans()) {
    if (allowed) break;
    if (is_ip_literal(s)) {
      allowed = X509_check_ip_asc(peer, s.c_str(), 0) == 1;
    } else {
      allowed = X509_check_host(peer, s.c_str(), s.size(), X509_CHECK_FLAG_NO_WILDCARDS | X509_CHECK_FLAG_NEVER_CHECK_SUBJECT,
                                nullptr) == 1;
    }
  }
  ERR_clear_error();
  if (!allowed && not_allowed_.empty()) {
    not_allowed_ = "\"" + subject + "\" matches neither allow_subjects nor allow_sans";
    // The chain verified (depth 0 comes last): the close line and the stats
    // say whose certificate it was, as for a peer that was let in.
    info_.peer_subject = subject;
    info_.peer_issuer = name_text(X509_get_issuer_name(peer));
    info_.verify = "ok";
  }
  return allowed;
}

Channel::ReadResult Channel::read(std::uint8_t* buf, std::size_t cap) {
  if (failed_) return {Status::kError};
  ERR_clear_error();
  std::size_t n = 0;
  const int r = SSL_read_ex(ssl_, buf, cap, &n);
  if (r == 1) return {Status::kOk, n};
  return {fail(0, false)};
}

Channel::Status Channel::write(const std::uint8_t* data, std::size_t n) {
  if (failed_) return Status::kError;
  if (n == 0) return Status::kOk;
  ERR_clear_error();
  std::size_t written = 0;
  // The output BIO takes everything, so one call encrypts all of it.
  if (SSL_write_ex(ssl_, data, n, &written) == 1 && written == n) return Status::kOk;
  const Status s = fail(0, false);
  if (s == Status::kError) return s;
  failed_ = true;
  failure_ = {"tls-error", "write did not complete"};
  return Status::kError;
}

void Channel::shutdown() {
  if (!established_ || failed_ || shutdown_sent_) return;
  shutdown_sent_ = true;
  ERR_clear_error();
  SSL_shutdown(ssl_);  // queues close_notify; 0 (ours sent) and 1 (both) are both fine
  ERR_clear_error();
}

void Channel::clear_output() {
  // Freed, not kept: an idle channel holds no buffer.
  std::vector<std::uint8_t>().swap(out_);
}

void Channel::on_alert_received(int value) {
  if (alert_received_.empty()) alert_received_ = alert_text(value);
}

void Channel::on_verify_failed(int depth, int err, const std::string& subject) {
  if (!verify_failure_.empty()) return;
  verify_failure_ = X509_verify_cert_error_string(err);
  verify_failure_ += " (depth " + std::to_string(depth) + (subject.empty() ? "" : ", " + subject) + ")";
}

Channel::Status Channel::fail(int ssl_ret, bool in_handshake) {
  const int err = SSL_get_error(ssl_, ssl_ret);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return Status::kWantMore;
  if (err == SSL_ERROR_ZERO_RETURN && established_) {
    info_.close_notify = true;
    return Status::kClosed;
  }
  failed_ = true;
  const unsigned long e = ERR_peek_last_error();
  const std::string reason = last_error(err == SSL_ERROR_ZERO_RETURN ? "the peer closed during the handshake"
                                        : err == SSL_ERROR_SYSCALL  ? "unexpected end of stream"
                                                                    : "failed");
  if (!not_allowed_.empty()) {
    failure_ = {"tls-peer-not-allowed", not_allowed_};
  } else if (!verify_failure_.empty()) {
    failure_ = {"tls-verify-failed", verify_failure_};
  } else if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
    failure_ = {"tls-verify-failed", "no client certificate"};
  } else if (!alert_received_.empty()) {
    failure_ = {"tls-alert", "the peer sent \"" + alert_received_ + "\""};
    if (renegotiation_refused_) {
      failure_.detail += " after isoproxy refused its renegotiation (TLS 1.2 renegotiation is not supported)";
    } else if (client_cert_requested_ && alert_received_ != "certificate required") {
      failure_.detail += " after asking for a client certificate: none is configured (cert and key in upstream_tls)";
    }
  } else if (in_handshake || !established_) {
    failure_ = {"tls-handshake-failed", reason};
  } else {
    failure_ = {"tls-error", reason};
  }
  if (failure_.name == "tls-verify-failed") info_.verify = verify_failure_.empty() ? "no-certificate" : verify_failure_;
  return Status::kError;
}

Result<CertSummary> read_certificate_summary(const std::string& pem_path) {
  BioPtr b(BIO_new_file(pem_path.c_str(), "r"));
  if (!b) return unexpected(Error{"tls-cert", pem_path + ": " + last_error("cannot open")});
  X509Ptr x(PEM_read_bio_X509(b.get(), nullptr, nullptr, nullptr));
  if (!x) return unexpected(Error{"tls-cert", pem_path + ": " + last_error("no PEM certificate")});
  return summarise(x.get());
}

}  // namespace isoproxy::tls
