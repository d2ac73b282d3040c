// TLS for either leg of a session, with OpenSSL 3 over memory BIOs (DESIGN.md
// §5): the socket stays libuv's, OpenSSL never touches a file descriptor and
// never blocks. A Context is built once from configuration (at load, so that
// a bad certificate is a configuration error) and shared; each TLS leg gets a
// Channel from it:
//
//   feed(ciphertext read from the socket)
//   handshake() until established(), then read() plaintext until kWantMore
//   write(plaintext) to encrypt
//   output() / clear_output(): ciphertext to put on the socket
//
// Reads borrow the caller's buffer (a read-only memory BIO over it, replaced
// at every feed); ciphertext produced goes to a per-channel buffer that the
// caller drains after each call. An idle channel holds no buffer: OpenSSL's
// own record buffers are released (SSL_MODE_RELEASE_BUFFERS) and the output
// buffer is freed once drained.
//
// Failures carry a named close reason: tls-handshake-failed, tls-verify-failed
// (with the X509 verify error), tls-alert (an alert the peer sent), tls-error
// (after the handshake), tls-peer-not-allowed (mutual TLS allow-list).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "result.h"

struct ssl_ctx_st;
struct ssl_st;
struct x509_st;
struct bio_st;

namespace isoproxy::conf {
struct TlsServerConfig;
struct TlsClientConfig;
}  // namespace isoproxy::conf

namespace isoproxy::tls {

// A configuration problem found while building a context: which key of the
// TLS table it is about, and what is wrong.
struct KeyError {
  std::string key;
  std::string message;
};

// A certificate revocation list loaded with `crl`: whose it is and when it
// is valid (OpenSSL refuses every certificate a CRL covers once it expires).
struct CrlSummary {
  std::string issuer;       // RFC 2253
  std::string this_update;  // "2026-01-01T00:00:00Z"
  std::string next_update;  // empty: the CRL names none
  std::int64_t next_update_unix = 0;  // seconds since the epoch; 0: none
  std::size_t revoked = 0;
  bool expired = false;         // next_update has passed
  bool not_yet_valid = false;   // this_update is in the future
};

// What a certificate says, for logs and stats.
struct CertSummary {
  std::string subject;    // RFC 2253, e.g. "CN=site-a,O=Example"
  std::string issuer;
  std::string not_after;  // "2026-01-01T00:00:00Z"
};

class Context {
 public:
  enum class Role : std::uint8_t { kServer, kClient };
  enum class ClientVerify : std::uint8_t { kOff, kOptional, kRequire };

  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  Role role() const { return role_; }
  ssl_ctx_st* native() const { return ctx_; }
  // The certificate this side presents (server: always; client: if configured).
  const std::optional<CertSummary>& own_certificate() const { return own_; }

  // Server: how client certificates are asked for, and which ones are let in
  // after verification (empty lists: every certificate the CA signed).
  ClientVerify client_verify() const { return client_verify_; }
  const std::vector<std::string>& allow_subjects() const { return allow_subjects_; }
  const std::vector<std::string>& allow_sans() const { return allow_sans_; }

  // Client: verification of the server's certificate, and the name checked
  // (and sent as SNI when it is a DNS name); empty: the upstream's IP.
  bool verify_peer() const { return verify_peer_; }
  const std::string& server_name() const { return server_name_; }

  std::chrono::milliseconds handshake_timeout() const { return handshake_timeout_; }

  // The CRLs the peer's certificate chain is checked against (`crl`); empty: none.
  const std::vector<CrlSummary>& crls() const { return crls_; }
  // What loads but will refuse peers (a CRL out of date, a CA without one),
  // for the configuration's warnings.
  const std::vector<KeyError>& warnings() const { return warnings_; }

 private:
  friend Result<std::shared_ptr<const Context>, std::vector<KeyError>> make_server_context(const conf::TlsServerConfig&);
  friend Result<std::shared_ptr<const Context>, std::vector<KeyError>> make_client_context(const conf::TlsClientConfig&);
  explicit Context(Role role) : role_(role) {}

  Role role_;
  ssl_ctx_st* ctx_ = nullptr;
  std::optional<CertSummary> own_;
  ClientVerify client_verify_ = ClientVerify::kOff;
  std::vector<std::string> allow_subjects_, allow_sans_;
  bool verify_peer_ = true;
  std::string server_name_;
  std::chrono::milliseconds handshake_timeout_{10000};
  std::vector<CrlSummary> crls_;
  std::vector<KeyError> warnings_;
};

// Every error found, each naming its key ("cert", "key", "client_ca", ...).
Result<std::shared_ptr<const Context>, std::vector<KeyError>> make_server_context(const conf::TlsServerConfig& c);
Result<std::shared_ptr<const Context>, std::vector<KeyError>> make_client_context(const conf::TlsClientConfig& c);

// What a channel's peer and handshake came to, per leg, for stats.
struct Info {
  std::string version;       // "TLSv1.3"; empty before the handshake completes
  std::string cipher;        // "TLS_AES_256_GCM_SHA384"
  std::string peer_subject;  // RFC 2253; empty if the peer sent no certificate
  std::string peer_issuer;
  std::string verify;        // "ok", "no-certificate", "off" (not verified), or the X509 error
  std::string sni;           // client: the name sent; server: the name received
  bool close_notify = false; // the peer ended with a close_notify
};

// A failure, as a close reason: "name: detail" (the session adds the leg).
struct Failure {
  std::string name;    // tls-handshake-failed, tls-verify-failed, tls-alert, tls-error, tls-peer-not-allowed
  std::string detail;  // "certificate has expired (depth 0, CN=old)"
};

class Channel {
 public:
  enum class Status : std::uint8_t {
    kOk,        // done (handshake complete / bytes read)
    kWantMore,  // needs more ciphertext from the peer
    kClosed,    // the peer sent close_notify
    kError,     // failure(): the session must close
  };
  struct ReadResult {
    Status status;
    std::size_t n = 0;  // plaintext bytes when kOk
  };

  // A server-side channel (a listener's client leg).
  static std::unique_ptr<Channel> accept(std::shared_ptr<const Context> ctx);
  // A client-side channel (an upstream leg). `upstream_ip` is checked against
  // the certificate's IP addresses when the context names no server_name.
  static std::unique_ptr<Channel> connect(std::shared_ptr<const Context> ctx, std::string_view upstream_ip);
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // Ciphertext from the socket. The bytes are borrowed until the next feed:
  // call handshake()/read() until kWantMore before the buffer is reused, or
  // drop_input() to give up what is left.
  void feed(const std::uint8_t* data, std::size_t n);
  void drop_input();
  // Advances the handshake. kOk once it is complete (also when it was already).
  Status handshake();
  bool established() const { return established_; }
  bool failed() const { return failed_; }
  // Part of a record came and the rest did not (yet): what a FIN now cuts off.
  bool inside_record() const;
  // Decrypts into buf (at most one record per call).
  ReadResult read(std::uint8_t* buf, std::size_t cap);
  // Encrypts all of `data` into output() (memory never refuses a write).
  // Only once established().
  Status write(const std::uint8_t* data, std::size_t n);
  // Queues a close_notify (once), after what was written.
  void shutdown();

  // Ciphertext waiting for the socket; clear_output() once it is taken.
  const std::vector<std::uint8_t>& output() const { return out_; }
  void clear_output();

  const Info& info() const { return info_; }
  const Failure& failure() const { return failure_; }
  const Context& context() const { return *ctx_; }

  // Internal (OpenSSL callbacks).
  void on_alert_received(int value);
  void on_renegotiation_refused() { renegotiation_refused_ = true; }
  void on_client_certificate_requested() { client_cert_requested_ = true; }
  void on_verify_failed(int depth, int err, const std::string& subject);
  // The peer's certificate (verified): false if a server's allow-lists refuse it.
  bool on_peer_certificate(x509_st* peer);
  std::vector<std::uint8_t>& sink() { return out_; }

 private:
  Channel(std::shared_ptr<const Context> ctx, ssl_st* ssl);
  Status fail(int ssl_ret, bool in_handshake);
  void complete_handshake();

  std::shared_ptr<const Context> ctx_;  // the SSL_CTX outlives every channel made from it
  ssl_st* ssl_ = nullptr;
  std::vector<std::uint8_t> out_;
  bool established_ = false;
  bool failed_ = false;
  bool shutdown_sent_ = false;
  // From the callbacks: the first fatal alert the peer sent, and the first
  // certificate the verification refused.
  std::string alert_received_;
  std::string verify_failure_;
  std::string not_allowed_;  // why the allow-lists refused the peer's certificate
  // The peer asked to renegotiate (TLS 1.2) and was refused; a server asked
  // for a client certificate and none is configured. Each explains the alert
  // that usually follows, "handshake failure", which alone says nothing.
  bool renegotiation_refused_ = false;
  bool client_cert_requested_ = false;
  Info info_;
  Failure failure_;
};

// The subject, issuer and expiry of the first certificate in a PEM file, or
// why it cannot be read. For logs and tests.
Result<CertSummary> read_certificate_summary(const std::string& pem_path);

}  // namespace isoproxy::tls
