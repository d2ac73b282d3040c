// The service manager protocol (sd_notify(3)): tells systemd, when it started
// the process with Type=notify, that the proxy is ready, reloading or
// stopping. Without $NOTIFY_SOCKET every call is a no-op, so the daemon calls
// these unconditionally.
#pragma once

#include <functional>
#include <string>
#include <string_view>

namespace isoproxy::notify {

// READY=1: every listener and the admin endpoint are bound (and, with --user,
// privileges dropped); also sent when a reload has finished, whatever its outcome.
void ready(std::string_view status);
// RELOADING=1 with MONOTONIC_USEC (systemd 253+ pairs it with the READY=1
// that follows; older versions ignore what they do not know).
void reloading(std::string_view status);
// STOPPING=1: the drain has begun.
void stopping(std::string_view status);
// STATUS= alone: a one-line state shown by `systemctl status`.
void status(std::string_view status);

// RELOADING=1 when made, READY=1 with the status `after` gives when it goes
// out of scope: a reload always ends in READY=1, failed or not, or systemd
// would consider the service still reloading.
class Reload {
 public:
  Reload(std::string_view status, std::function<std::string()> after) : after_(std::move(after)) { reloading(status); }
  ~Reload() { ready(after_()); }
  Reload(const Reload&) = delete;
  Reload& operator=(const Reload&) = delete;

 private:
  std::function<std::string()> after_;
};

}  // namespace isoproxy::notify
