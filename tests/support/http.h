// A plain HTTP/1.1 client for the admin endpoint in integration tests.
#pragma once

#include <chrono>
#include <optional>
#include <regex>
#include <string>

#include "peers.h"
#include "proxy_process.h"

namespace isoproxy::test {

// The admin endpoint's port, from "admin endpoint on 127.0.0.1:PORT".
inline std::optional<std::uint16_t> admin_port(ProxyProcess& p) {
  auto line = p.wait_for_line(std::regex(R"(admin endpoint on 127\.0\.0\.1:(\d+))"), std::chrono::seconds(10));
  if (!line) return std::nullopt;
  std::smatch m;
  std::regex_search(*line, m, std::regex(R"(127\.0\.0\.1:(\d+))"));
  return static_cast<std::uint16_t>(std::stoi(m[1]));
}

struct HttpReply {
  int status = 0;
  std::string headers;
  std::string body;
  // The value of a header (first occurrence, name case-insensitive), empty if absent.
  std::string header(const std::string& name) const {
    const std::regex re("\r\n" + name + ": ([^\r\n]*)", std::regex::icase);
    std::smatch m;
    return std::regex_search(headers, m, re) ? m[1].str() : std::string();
  }
};

// One request on a fresh connection (Connection: close), read to EOF.
inline HttpReply http(std::uint16_t port, const std::string& method, const std::string& target,
               const std::string& extra_headers = "") {
  HttpReply r;
  Conn c = connect_to("127.0.0.1", port);
  if (!c.valid()) return r;
  const std::string req = method + " " + target + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" +
                          extra_headers + "Content-Length: 0\r\n\r\n";
  if (!c.send_all(req)) return r;
  std::string all;
  for (;;) {
    auto some = c.recv_some(65536, std::chrono::seconds(5));
    if (!some || some->empty()) break;
    all.append(some->begin(), some->end());
  }
  const auto end = all.find("\r\n\r\n");
  if (all.rfind("HTTP/1.1 ", 0) != 0 || end == std::string::npos) return r;
  r.status = std::stoi(all.substr(9, 3));
  r.headers = all.substr(0, end);
  r.body = all.substr(end + 4);
  return r;
}

}  // namespace isoproxy::test
