// A small HTTP/1.1 server on the event loop for the admin endpoint: parses
// requests (Debian's http-parser), enforces limits, and hands each request to
// an AdminHandler that answers synchronously. It serves nothing itself; the
// routes live with the handler. Slow, malformed and oversized requests get a
// 4xx or are cut off; the relay never waits on an admin client.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "result.h"

namespace isoproxy {

struct AdminRequest {
  std::string method;                         // "GET", "POST", ...
  std::string path;                           // "/sessions/12", without the query
  std::map<std::string, std::string> query;   // decoded ?a=b&c=d (of a repeated one, the last)
  std::vector<std::string> repeated;          // query parameters given more than once
  std::map<std::string, std::string> headers; // names lower-cased
  std::string body;
  std::string peer;                           // "127.0.0.1:50000" or "unix"
};

struct AdminResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers
};

class AdminHandler {
 public:
  virtual ~AdminHandler() = default;
  virtual AdminResponse handle(const AdminRequest& request) = 0;
};

struct AdminLimits {
  std::size_t max_connections = 64;
  std::size_t max_header_bytes = 8192;   // request line + headers
  std::size_t max_body_bytes = 4096;
  std::chrono::milliseconds request_timeout{5000};  // to receive a whole request
  std::chrono::milliseconds idle_timeout{30000};    // keep-alive between requests
  // A client that takes nothing of its answer for this long is cut off; one
  // that reads, however large the answer and however slowly, gets all of it.
  // (Pipelined requests wait while an answer is unread, so a connection
  // holds one answer at most.)
  std::chrono::milliseconds write_stall_timeout{10000};
  // Answers queued to every client together: a larger answer that would
  // pass this gets 503 and Retry-After instead, so that slow readers on
  // every connection cannot hold max_connections times the largest answer.
  std::size_t max_queued_bytes = std::size_t{256} << 20;
};

class AdminHttpServer {
 public:
  AdminHttpServer(uv_loop_t* loop, AdminHandler& handler, AdminLimits limits = {});
  ~AdminHttpServer();
  AdminHttpServer(const AdminHttpServer&) = delete;
  AdminHttpServer& operator=(const AdminHttpServer&) = delete;

  // "127.0.0.1:9102", "[::1]:9102", port 0 allowed; or "unix:/run/isoproxy/admin.sock".
  Status<> listen(const std::string& address);
  // The address actually bound ("127.0.0.1:40000", "unix:/path").
  const std::string& bound() const;
  // Stops listening and closes every connection; closed() turns true once
  // every handle's close callback ran.
  void stop();
  bool closed() const;
  // Connections open and not closing (any thread may ask).
  std::size_t connections() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace isoproxy
