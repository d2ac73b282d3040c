// The admin endpoint's routes: live sessions, recently closed ones, process
// totals and Prometheus metrics, read from the same structures the close
// line and the exit totals use. Read-only unless a token is configured.
#pragma once

#include <deque>
#include <nlohmann/json.hpp>
#include <string>

#include "admin_http.h"
#include "log.h"

namespace isoproxy {

class Supervisor;

// The process totals: every worker's counters summed (admin.cpp).
struct Totals;

class Admin final : public AdminHandler {
 public:
  explicit Admin(Supervisor& supervisor) : server_(supervisor) {}
  AdminResponse handle(const AdminRequest& request) override;

 private:
  bool host_allowed(const std::string& host_header) const;
  AdminResponse route(const AdminRequest& r);
  AdminResponse sessions(const AdminRequest& r);
  AdminResponse session(std::uint64_t id);
  AdminResponse action(const AdminRequest& r);
  AdminResponse stats();
  AdminResponse metrics();

  Supervisor& server_;
  // Refused actions (401) are logged once a second at most, with a count
  // of those in between: a script with a stale token, or someone guessing.
  log::SharedThrottle auth_warns_;
};

// Prometheus text exposition of every worker's counters, summed.
std::string render_metrics(Supervisor& supervisor);

}  // namespace isoproxy
