// `isoproxy run -c FILE`: the daemon in the foreground, logging to stderr.
#pragma once

#include <string>

namespace isoproxy {

int run_daemon(const std::string& config_path);

}  // namespace isoproxy
