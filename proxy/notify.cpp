#include "notify.h"

#include <systemd/sd-daemon.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <string>

#include "log.h"

namespace isoproxy::notify {

namespace {

// A STATUS= value is one line: newlines would start new assignments.
std::string status_line(std::string_view status) {
  std::string out = "STATUS=";
  for (char c : status) out.push_back(c == '\n' || c == '\r' ? ' ' : c);
  return out;
}

void send(const std::string& message) {
  // unset_environment = 0: NOTIFY_SOCKET stays for the next message.
  const int r = sd_notify(0, message.c_str());
  // r == 0: no $NOTIFY_SOCKET, nothing to do. A failure is not a reason to stop
  // relaying, but systemd will time the service out, so it is worth a line.
  if (r < 0) spdlog::warn("sd_notify: {}", std::strerror(-r));
}

}  // namespace

void ready(std::string_view status) { send("READY=1\n" + status_line(status)); }

void reloading(std::string_view status) {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  const auto usec = static_cast<unsigned long long>(ts.tv_sec) * 1000000ULL +
                    static_cast<unsigned long long>(ts.tv_nsec) / 1000ULL;
  send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec) + "\n" + status_line(status));
}

void stopping(std::string_view status) { send("STOPPING=1\n" + status_line(status)); }

void status(std::string_view status) { send(status_line(status)); }

}  // namespace isoproxy::notify
