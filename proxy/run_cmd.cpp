#include "run_cmd.h"

#include <memory>

#include "conf/loader.h"
#include "log.h"
#include "notify.h"
#include "server.h"

namespace isoproxy {

int run_daemon(const std::string& config_path) {
  log::init("info");
  auto loaded = conf::load_config_file(config_path);
  if (!loaded) {
    for (const auto& e : loaded.error()) spdlog::error("{}", e.to_string());
    spdlog::error("{}: {} error{}; not starting", config_path, loaded.error().size(), loaded.error().size() == 1 ? "" : "s");
    return 1;
  }
  auto config = std::make_shared<const conf::Config>(std::move(*loaded));
  log::set_level(config->global.log_level);
  Server server(config);
  auto ok = server.start();
  if (!ok) {
    spdlog::error("{}", ok.error().message);
    server.run();  // lets the handles opened so far close
    return 1;
  }
  // Listeners and admin endpoint are bound: the service manager may start
  // what depends on us.
  notify::ready("serving " + std::to_string(config->listeners.size()) + " listener" +
                (config->listeners.size() == 1 ? "" : "s"));
  return server.run();
}

}  // namespace isoproxy
