#include "run_cmd.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>

#include "conf/loader.h"
#include "log.h"
#include "notify.h"
#include "privdrop.h"
#include "rdns.h"
#include "supervisor.h"

namespace isoproxy {

namespace {

// Becomes the --user account once everything is bound. What the account will
// need later (reading the config on SIGHUP, reopening the access log on
// SIGUSR1, replacing its admin socket) is checked now, as that user.
Status<> become(const privdrop::Account& account, const conf::Config& config) {
  if (config.admin.enabled && config.admin.listen.rfind("unix:", 0) == 0) {
    const std::string path = config.admin.listen.substr(5);
    if (::chown(path.c_str(), account.uid, account.gid) != 0) {
      spdlog::warn("admin socket {}: chown to {}: {}", path, account.name, std::strerror(errno));
    }
  }
  const auto caps = privdrop::needed_capabilities(config);
  if (auto ok = privdrop::drop(account, caps); !ok) return ok;
  spdlog::info("running as user {} (uid {}, gid {}); capabilities kept: {}", account.name, account.uid, account.gid,
               privdrop::names(caps));
  if (::access(config.path.c_str(), R_OK) != 0) {
    spdlog::warn("{} is not readable by user {} ({}): a reload (SIGHUP) will fail", config.path, account.name,
                 std::strerror(errno));
  }
  const std::string& log = config.global.access_log;
  if (log != "off" && log != "stderr" && log != "journal" && ::access(log.c_str(), W_OK) != 0) {
    spdlog::warn("access_log {} is not writable by user {} ({}): reopening it (SIGUSR1) will fail", log, account.name,
                 std::strerror(errno));
  }
  return Ok{};
}

int serve(const std::string& config_path, const std::string& user) {
  // Until the loop installs its handlers, a reload or a logrotate that signals
  // early must not end the process (SIGHUP and SIGUSR1 terminate by default).
  std::signal(SIGHUP, SIG_IGN);
  std::signal(SIGUSR1, SIG_IGN);
  log::init("info");
  // The account is looked up first, so that a typo or a missing root fails
  // before anything is bound.
  std::optional<privdrop::Account> account;
  if (!user.empty()) {
    auto found = privdrop::prepare(user);
    if (!found) {
      spdlog::error("{}; not starting", found.error().message);
      return 1;
    }
    account = *found;
  }
  auto loaded = conf::load_config_file(config_path);
  if (!loaded) {
    for (const auto& e : loaded.error()) spdlog::error("{}", e.to_string());
    spdlog::error("{}: {} error{}; not starting", config_path, loaded.error().size(), loaded.error().size() == 1 ? "" : "s");
    return 1;
  }
  auto config = std::make_shared<const conf::Config>(std::move(*loaded));
  log::set_level(config->global.log_level);
  Supervisor server(config);
  auto ok = server.start();
  if (ok && account) {
    ok = become(*account, *config);
    if (!ok) server.shutdown();  // nothing is served with privileges half dropped
  }
  if (!ok) {
    spdlog::error("{}", ok.error().message);
    server.run();  // lets the handles opened so far close
    return 1;
  }
  // Listeners and admin endpoint are bound: the service manager may start
  // what depends on us. The workers' threads start in run(), after the
  // privileges were dropped, so that every thread runs with the reduced set.
  notify::ready("serving " + std::to_string(config->listeners.size()) + " listener" +
                (config->listeners.size() == 1 ? "" : "s"));
  // From here the Supervisor and the workers hold the configuration: a
  // reload replaces it, and what the old one owned (a trace filter's open
  // file) goes with its last session, not with the process.
  config.reset();
  return server.run();
}

}  // namespace

int run_daemon(const std::string& config_path, const std::string& user) {
  const int status = serve(config_path, user);
  if (ReverseDns::lookups_abandoned()) {
    // exit() would join libuv's thread pool, and so wait for the resolver
    // after all. Everything is written by now: the access log and traces
    // flush each write, the log lines go out at once since the loops ended.
    // (In a sanitized build this also skips LeakSanitizer's check at exit,
    // which would report the abandoned requests.)
    spdlog::shutdown();
    std::fflush(nullptr);
    std::_Exit(status);
  }
  return status;
}

}  // namespace isoproxy
