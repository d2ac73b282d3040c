// Shared (proxy/shared.h): the label sets every worker counts under.
#include <catch2/catch.hpp>
#include <string>

#include "shared.h"

using isoproxy::Shared;

TEST_CASE("shared: upstream labels are the first 1000 distinct addresses, for every worker", "[shared]") {
  Shared shared;
  for (std::size_t i = 0; i < Shared::kMaxUpstreamLabels; ++i) {
    INFO(i);
    REQUIRE(shared.admit_upstream_label("192.0.2." + std::to_string(i) + ":102"));
  }
  // Transparent mode: a client may dial any destination; the set stays bounded.
  CHECK_FALSE(shared.admit_upstream_label("198.51.100.1:102"));
  CHECK_FALSE(shared.admit_upstream_label("198.51.100.2:102"));
  // An address that has its label keeps it.
  CHECK(shared.admit_upstream_label("192.0.2.0:102"));
  CHECK(shared.admit_upstream_label("192.0.2.999:102"));
}

TEST_CASE("shared: TSAP labels keep those admitted when the limit goes down", "[shared]") {
  Shared shared;
  CHECK(shared.admit_tsap_label("A", 2));
  CHECK(shared.admit_tsap_label("B", 2));
  CHECK_FALSE(shared.admit_tsap_label("C", 2));
  // A reload to a lower limit: A and B stay labels, nothing new gets one.
  CHECK(shared.admit_tsap_label("B", 1));
  CHECK(shared.admit_tsap_label("A", 1));
  CHECK_FALSE(shared.admit_tsap_label("D", 1));
  // A higher one: room again for new values.
  CHECK(shared.admit_tsap_label("D", 3));
  CHECK_FALSE(shared.admit_tsap_label("E", 3));
}
