// `isoproxy run -c FILE [--user NAME]`: the daemon in the foreground, logging
// to stderr; with --user, started as root, it binds and then becomes NAME.
#pragma once

#include <string>

namespace isoproxy {

int run_daemon(const std::string& config_path, const std::string& user = {});

}  // namespace isoproxy
