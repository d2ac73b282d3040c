// A throw-away PKI for TLS tests, made with the OpenSSL API at test time:
// CAs, server and client certificates with subjectAltNames, and certificates
// that are expired or signed by another CA. Keys are EC P-256 (fast to make).
// Files are PEM in a temporary directory removed with the object.
//
//   TestPki pki;
//   pki.make_ca("ca");
//   auto server = pki.make_leaf("server", "ca", "site-b.test", {"DNS:site-b.test", "IP:127.0.0.1"});
//   auto old = pki.make_leaf("old", "ca", "old-client", {}, -30, -1);   // expired yesterday
//   auto crl = pki.make_crl("ca.crl", "ca", {"old"});                     // revokes it
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace isoproxy::test {

class TestPki {
 public:
  struct Files {
    std::string cert;  // PEM certificate path
    std::string key;   // PEM private key path
    std::string subject;  // RFC 2253 ("CN=site-b.test,O=isoproxy tests")
  };

  TestPki() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "isoproxy-pki-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
  }
  ~TestPki() {
    for (auto& [name, e] : entries_) {
      X509_free(e.cert);
      EVP_PKEY_free(e.key);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  TestPki(const TestPki&) = delete;
  TestPki& operator=(const TestPki&) = delete;

  const std::filesystem::path& dir() const { return dir_; }
  std::string path(const std::string& file) const { return (dir_ / file).string(); }

  // A self-signed CA called `name` (CN = `cn`, by default the name: another
  // CA of the same subject, with a key of its own, is an impostor).
  Files make_ca(const std::string& name, const std::string& cn = "") {
    return make(name, "", cn.empty() ? name : cn, {}, -1, 3650, true);
  }

  // A certificate for `cn` signed by the CA `issuer`, valid from now + from_days
  // to now + to_days (negative: in the past). sans: "DNS:x", "IP:127.0.0.1".
  Files make_leaf(const std::string& name, const std::string& issuer, const std::string& cn,
                  const std::vector<std::string>& sans, long from_days = -1, long to_days = 365) {
    return make(name, issuer, cn, sans, from_days, to_days, false);
  }

  static constexpr long kDay = 86400;

  // A CRL issued by the CA `issuer`, revoking the certificates made under the
  // names `revoked`, with thisUpdate now + this_s and nextUpdate now + next_s
  // seconds (negative: in the past). Written to `file` (PEM); its path.
  std::string make_crl(const std::string& file, const std::string& issuer, const std::vector<std::string>& revoked,
                       long this_s = -kDay, long next_s = 30 * kDay) {
    const Entry& ca = entries_.at(issuer);
    X509_CRL* crl = X509_CRL_new();
    X509_CRL_set_version(crl, 1);  // v2
    X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca.cert));
    ASN1_TIME* t = X509_gmtime_adj(nullptr, this_s);
    X509_CRL_set1_lastUpdate(crl, t);
    X509_gmtime_adj(t, next_s);
    X509_CRL_set1_nextUpdate(crl, t);
    X509_gmtime_adj(t, -2 * 86400L);  // revoked two days ago
    for (const auto& name : revoked) {
      X509_REVOKED* r = X509_REVOKED_new();
      X509_REVOKED_set_serialNumber(r, X509_get_serialNumber(entries_.at(name).cert));
      X509_REVOKED_set_revocationDate(r, t);
      X509_CRL_add0_revoked(crl, r);
    }
    ASN1_TIME_free(t);
    X509_CRL_sort(crl);
    if (X509_CRL_sign(crl, ca.key, EVP_sha256()) == 0) throw std::runtime_error("CRL sign failed");
    const std::string p = path(file);
    BIO* b = BIO_new_file(p.c_str(), "w");
    PEM_write_bio_X509_CRL(b, crl);
    BIO_free(b);
    X509_CRL_free(crl);
    return p;
  }

  // A CA directory `sub` (made if need be) holding the certificates of `cas`
  // as NAME.pem, each also under its hashed name (HHHHHHHH.0, a symlink, as
  // `openssl rehash` makes it) when `hashed`. Its path.
  std::string make_ca_dir(const std::string& sub, const std::vector<std::string>& cas, bool hashed) {
    const std::filesystem::path d = dir_ / sub;
    std::filesystem::create_directories(d);
    for (const auto& name : cas) {
      X509* cert = entries_.at(name).cert;
      const std::filesystem::path file = d / (name + ".pem");
      BIO* b = BIO_new_file(file.c_str(), "w");
      if (b == nullptr) throw std::runtime_error("cannot write " + file.string());
      PEM_write_bio_X509(b, cert);
      BIO_free(b);
      if (hashed) {
        char link[16];
        std::snprintf(link, sizeof link, "%08lx.0", X509_subject_name_hash(cert));
        std::filesystem::create_symlink(name + ".pem", d / link);
      }
    }
    return d.string();
  }

  // Writes text to a file in the directory (a broken PEM, a config...).
  std::string write(const std::string& file, const std::string& text) const {
    const std::string p = path(file);
    BIO* b = BIO_new_file(p.c_str(), "w");
    if (b == nullptr) throw std::runtime_error("cannot write " + p);
    BIO_write(b, text.data(), static_cast<int>(text.size()));
    BIO_free(b);
    return p;
  }

 private:
  struct Entry {
    X509* cert = nullptr;
    EVP_PKEY* key = nullptr;
  };

  static void add_ext(X509* cert, X509* issuer, int nid, const std::string& value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    if (ext == nullptr) throw std::runtime_error("bad extension " + value);
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
  }

  Files make(const std::string& name, const std::string& issuer_name, const std::string& cn,
             const std::vector<std::string>& sans, long from_days, long to_days, bool ca) {
    EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    if (key == nullptr) throw std::runtime_error("keygen failed");
    X509* cert = X509_new();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), ++serial_);
    X509_gmtime_adj(X509_getm_notBefore(cert), from_days * 86400L);
    X509_gmtime_adj(X509_getm_notAfter(cert), to_days * 86400L);
    X509_set_pubkey(cert, key);
    X509_NAME* subject = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("isoproxy tests"), -1, -1, 0);
    X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
    X509* issuer = cert;
    EVP_PKEY* issuer_key = key;
    if (!issuer_name.empty()) {
      const Entry& i = entries_.at(issuer_name);
      issuer = i.cert;
      issuer_key = i.key;
    }
    X509_set_issuer_name(cert, X509_get_subject_name(issuer));
    add_ext(cert, issuer, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    add_ext(cert, issuer, NID_key_usage, ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
    add_ext(cert, issuer, NID_subject_key_identifier, "hash");
    if (!ca) add_ext(cert, issuer, NID_authority_key_identifier, "keyid");
    if (!sans.empty()) {
      std::string v;
      for (const auto& s : sans) v += (v.empty() ? "" : ",") + s;
      add_ext(cert, issuer, NID_subject_alt_name, v);
    }
    if (X509_sign(cert, issuer_key, EVP_sha256()) == 0) throw std::runtime_error("sign failed");
    Files f{path(name + ".crt"), path(name + ".key"), "CN=" + cn + ",O=isoproxy tests"};
    BIO* b = BIO_new_file(f.cert.c_str(), "w");
    PEM_write_bio_X509(b, cert);
    BIO_free(b);
    b = BIO_new_file(f.key.c_str(), "w");
    PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
    BIO_free(b);
    entries_[name] = {cert, key};
    return f;
  }

  std::filesystem::path dir_;
  std::map<std::string, Entry> entries_;
  long serial_ = 0;
};

}  // namespace isoproxy::test
