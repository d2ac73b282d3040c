#include "log.h"

#include <spdlog/sinks/stdout_sinks.h>

namespace isoproxy::log {

bool set_level(std::string_view level) {
  const auto l = spdlog::level::from_str(std::string(level));
  // from_str answers "off" for anything it does not know.
  if (l == spdlog::level::off && level != "off") return false;
  spdlog::set_level(l);
  return true;
}

bool init(std::string_view level) {
  auto logger = spdlog::stderr_logger_st("isoproxy");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %v");
  logger->flush_on(spdlog::level::trace);  // a log line is seen as soon as it is written
  spdlog::set_default_logger(logger);
  return set_level(level);
}

std::string quote(std::string_view v) {
  bool plain = !v.empty();
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) plain = false;
  }
  if (plain) return std::string(v);
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(static_cast<unsigned char>(c) < 0x20 ? '?' : c);
  }
  out.push_back('"');
  return out;
}

}  // namespace isoproxy::log
