#include "check_cmd.h"

#include <ostream>

#include "conf/loader.h"
#include "upstream.h"

namespace isoproxy {

int run_check(const std::string& path, bool verbose, std::ostream& out, std::ostream& err) {
  auto config = conf::load_config_file(path);
  if (!config) {
    for (const auto& e : config.error()) err << e.to_string() << '\n';
    return 1;
  }
  for (const auto& w : config->warnings) err << "warning: " << w << '\n';
  // What run and a reload would refuse on this host (ExecReload runs check
  // first: a reload that check lets through must not fail on them).
  if (auto host = sources_not_local(*config); !host.empty()) {
    for (const auto& e : host) err << e.message << '\n';  // FILE:LINE:COL: KEY: from the address
    return 1;
  }
  out << path << ": ok\n";
  if (verbose) out << conf::effective_config_toml(*config);
  return 0;
}

}  // namespace isoproxy
