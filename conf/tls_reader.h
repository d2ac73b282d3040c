// Reading the TLS tables of the configuration: a listener's [listener.tls]
// (toward clients), and [listener.upstream_tls] or a tsap-route route's
// `tls` (toward the upstream). Files are checked and the OpenSSL context is
// built here, at load, so that a certificate that cannot be used is a
// configuration error with its file:line:col (at start-up: the process does
// not start; on SIGHUP: the running configuration, certificates included,
// stays in force). Keys: conf/schema.md, "TLS".
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "conf/config.h"
#include "conf/toml_reader.h"

namespace isoproxy::conf {

// The table `key` of `parent` as server-side TLS; nullptr when absent or wrong
// (errors recorded).
std::shared_ptr<const TlsServerConfig> read_tls_server(TableReader& parent, std::string_view key);

// The table `key` of `parent` as client-side TLS. nullopt when absent; with
// `allow_off`, `key = false` gives nullptr (plaintext, said explicitly).
// `ok` turns false on an error.
std::optional<std::shared_ptr<const TlsClientConfig>> read_tls_client(TableReader& parent, std::string_view key,
                                                                      bool allow_off, bool& ok);

// The effective settings as a TOML table under `header` ("listener.tls"),
// defaults included, for `isoproxy check --verbose`.
std::string tls_server_toml(const TlsServerConfig& c, std::string_view header);
std::string tls_client_toml(const TlsClientConfig& c, std::string_view header);

}  // namespace isoproxy::conf
