// Loads and validates the TOML configuration (schema: conf/schema.md).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"
#include "conf/toml_reader.h"

namespace isoproxy::conf {

using LoadResult = Result<Config, std::vector<ConfigError>>;

// Every error at once, each with file:line:col, the key, and what was expected.
LoadResult load_config_file(const std::string& path);
LoadResult load_config_string(std::string_view toml_text, const std::string& file_name);
// Only the [admin] table, checked as by load_config_file; the rest of the
// file is parsed as TOML and otherwise ignored (isoproxy stats -c).
LoadResult load_admin_config_file(const std::string& path);

// The effective configuration as TOML, every default filled in (check --verbose).
std::string effective_config_toml(const Config& c);

}  // namespace isoproxy::conf
