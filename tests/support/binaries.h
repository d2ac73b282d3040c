// The programs the integration tests start: by default the ones this build
// made (tests/CMakeLists.txt compiles their paths in), or others named in the
// environment. tests/run uses the environment to drive the sanitized build's
// isoproxy and rfc1006-peer with the Release harness, so that the integration
// tests are compiled once.
//   ISOPROXY_TEST_BINARY       the isoproxy binary
//   RFC1006_PEER_TEST_BINARY   the rfc1006-peer binary
#pragma once

#include <cstdlib>
#include <string>

// Compiled in by tests/CMakeLists.txt for the integration tests; empty elsewhere.
#ifndef ISOPROXY_BINARY
#define ISOPROXY_BINARY ""
#endif
#ifndef RFC1006_PEER_BINARY
#define RFC1006_PEER_BINARY ""
#endif

namespace isoproxy::test {

inline std::string binary_from_env(const char* name, const char* built) {
  if (const char* env = std::getenv(name); env != nullptr && *env != '\0') return env;
  return built;
}

inline std::string isoproxy_binary() { return binary_from_env("ISOPROXY_TEST_BINARY", ISOPROXY_BINARY); }
inline std::string peer_binary() { return binary_from_env("RFC1006_PEER_TEST_BINARY", RFC1006_PEER_BINARY); }

}  // namespace isoproxy::test
