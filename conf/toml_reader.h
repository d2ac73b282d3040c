// Typed access to one TOML table with error collection: every wrong or
// unknown key becomes an error naming file:line:col, the key and what was
// expected, and reading goes on so that all errors are reported at once.
// Used by the loader for the top-level tables and by each filter's parser
// for its own [filter.NAME] table.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"

namespace toml {
inline namespace v3 {
class table;
class node;
}  // namespace v3
}  // namespace toml

namespace isoproxy::conf {

struct ConfigError {
  std::string file;
  int line = 0;    // 1-based; 0 when the error has no position
  int column = 0;
  std::string key;      // dotted path, e.g. "listener[0].connect_timeout"
  std::string message;  // what was expected / what is wrong
  // "FILE:LINE:COL: KEY: MESSAGE"
  std::string to_string() const;
};

class ErrorSink {
 public:
  explicit ErrorSink(std::string file) : file_(std::move(file)) {}
  void add(const toml::node* at, std::string key, std::string message);
  void add(int line, int column, std::string key, std::string message);
  // Valid, but said at every start and reload (e.g. TLS verification off).
  void warn(const toml::node* at, std::string key, std::string message);
  const std::vector<ConfigError>& errors() const { return errors_; }
  const std::vector<ConfigError>& warnings() const { return warnings_; }
  bool empty() const { return errors_.empty(); }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
  std::vector<ConfigError> errors_;
  std::vector<ConfigError> warnings_;
};

// Reads keys of one table. Each getter returns the default when the key is
// absent, records an error (and returns the default) when it is present but
// wrong. finish() reports every key that no getter asked for as unknown, with
// "did you mean" when a known key is close.
class TableReader {
 public:
  TableReader(const toml::table& table, std::string path, ErrorSink& errors);

  std::string string(std::string_view key, std::string def);
  std::optional<std::string> optional_string(std::string_view key);
  bool boolean(std::string_view key, bool def);
  std::int64_t integer(std::string_view key, std::int64_t def, std::int64_t min, std::int64_t max);
  Duration duration(std::string_view key, Duration def);
  std::uint64_t size(std::string_view key, std::uint64_t def, std::uint64_t min, std::uint64_t max);
  // One of `allowed`; the error lists them.
  std::string choice(std::string_view key, std::string def, const std::vector<std::string>& allowed);
  std::vector<std::string> string_list(std::string_view key, std::vector<std::string> def);
  std::optional<SocketAddress> socket_address(std::string_view key, std::uint16_t default_port = 102,
                                              bool allow_port_zero = false);
  std::vector<SocketAddress> socket_addresses(std::string_view key, std::uint16_t default_port = 102,
                                              bool allow_port_zero = false);  // string or list
  std::optional<IpAddress> ip(std::string_view key);
  std::vector<Cidr> cidrs(std::string_view key);  // string or list
  // A sub-table, or nullptr; marks the key as known.
  const toml::table* table(std::string_view key);
  // An array of tables, [[PATH.key]]: calls `each` with a reader for every
  // element and its index. A value that is not an array, or an element that
  // is not a table, is an error naming `element` ("a table with an action").
  // Returns the number of elements, 0 when the key is absent.
  std::size_t tables(std::string_view key, std::string_view element,
                     const std::function<void(TableReader&, std::size_t)>& each);
  // The node of a key (for custom checks), marking it known; nullptr if absent.
  const toml::node* node(std::string_view key);

  // Records an error about `key` of this table (positioned at the key's value,
  // or at the table when absent).
  void error(std::string_view key, std::string message);
  // An error about element `index` of the list at `key`: at the element's
  // own line:col, as "KEY[INDEX]" (the list's when it is not a list).
  void element_error(std::string_view key, std::size_t index, std::string message);
  // A warning about `key`, positioned likewise.
  void warning(std::string_view key, std::string message);
  void finish();

  const std::string& path() const { return path_; }
  ErrorSink& sink() { return errors_; }
  int line() const;
  int column() const;

 private:
  const toml::table& table_;
  std::string path_;
  ErrorSink& errors_;
  std::set<std::string, std::less<>> known_;
};

// A TOML basic string with everything escaped that must be: "\"a\\b\"".
std::string toml_string(std::string_view s);

// "a string", "an integer", ...: what a value is, for error messages.
const char* type_name(const toml::node& n);

// Levenshtein-closest candidate within distance 2 (or a shared prefix of 4+), if any.
std::optional<std::string> did_you_mean(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace isoproxy::conf
