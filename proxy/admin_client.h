// A small blocking HTTP/1.1 client for isoproxy's own admin endpoint, used by
// `isoproxy stats`: one GET per connection (Connection: close) over TCP or a
// Unix socket, with a connect timeout, a deadline for the whole answer, a cap
// on the answer's size, and responses parsed by Debian's http-parser
// (Content-Length, chunked or read-to-close bodies). Not for the event loop:
// it blocks the calling thread (never longer than the two timeouts).
#pragma once

#include <csignal>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "result.h"

namespace isoproxy {

// Where the admin endpoint listens, as `[admin] listen` or --admin writes it.
struct AdminAddress {
  bool is_unix = false;
  std::string host;       // "127.0.0.1", "::1" (no brackets), "localhost"; empty for Unix
  std::uint16_t port = 0;
  std::string path;       // the Unix socket's path
  std::string text;       // for messages: "127.0.0.1:9102", "[::1]:9102", "unix:/run/isoproxy/admin.sock"
};

// "HOST:PORT", "[IPV6]:PORT" or "unix:/PATH" (a relative Unix path is allowed
// on the command line). Port 1..65535. Errors are one sentence.
Result<AdminAddress> parse_admin_address(std::string_view text);

// The address a client uses to reach a server configured to listen on
// `listen` (`[admin] listen`): the wildcard addresses 0.0.0.0 and [::] are
// reached on loopback. Errors: "off", port 0 (chosen at start-up), bad text.
Result<AdminAddress> admin_address_from_listen(std::string_view listen);

struct AdminClientOptions {
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds read_timeout{5000};  // for sending the request and reading the whole answer
  std::size_t max_response_bytes = 256u << 20;   // headers and body
  // With both set, every wait is a ppoll() with `wait_mask` as the signal
  // mask (the caller blocks its stop signals and unblocks them only there,
  // so that none is lost between a check and a wait), and the call returns
  // the error kind "interrupted" as soon as *stop is non-zero.
  const sigset_t* wait_mask = nullptr;
  const volatile std::sig_atomic_t* stop = nullptr;
};

struct HttpResponse {
  int status = 0;
  std::string reason;                          // "Not Found"
  std::map<std::string, std::string> headers;  // names lower-cased; repeated ones joined with ", "
  std::string body;
};

// One GET of `target` ("/sessions?closed=1"). Error kinds: "resolve",
// "connect" (the endpoint cannot be reached: message such as "connection
// refused"), "timeout" (connected, but no whole answer in time), "io",
// "protocol" (not a valid HTTP/1.x answer), "too-large", "interrupted".
// Any HTTP status is a success here.
Result<HttpResponse> http_get(const AdminAddress& address, const std::string& target,
                              const AdminClientOptions& options = {});

// GET, then: a 2xx status with a JSON body is the value; another status is
// the error kind "http" with "STATUS REASON: <the JSON body's "error">" (or
// the start of the body, made printable); a body that is not JSON is the
// kind "json".
Result<nlohmann::json> get_json(const AdminAddress& address, const std::string& target,
                                const AdminClientOptions& options = {});

// Percent-encodes a query value (RFC 3986 unreserved characters stay).
std::string url_encode(std::string_view value);

}  // namespace isoproxy
