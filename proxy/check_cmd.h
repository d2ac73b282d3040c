// `isoproxy check -c FILE [--verbose]`: validates a configuration file
// without starting anything, so that a change can be tested before a reload.
#pragma once

#include <iosfwd>
#include <string>

namespace isoproxy {

// Exit status: 0 when the file is valid ("FILE: ok" on `out`, then with
// `verbose` the effective configuration as TOML, every default filled in);
// 1 when it is not, with every error on `err`, one per line, as
// "FILE:LINE:COL: KEY: MESSAGE".
int run_check(const std::string& path, bool verbose, std::ostream& out, std::ostream& err);

}  // namespace isoproxy
