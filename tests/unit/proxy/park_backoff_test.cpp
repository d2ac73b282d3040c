// park_backoff (proxy/park.h): how long a session woken from parking waits
// before it parks again.
#include <catch2/catch.hpp>

#include <cstdint>

#include "park.h"

using isoproxy::kParkBackoffMax;
using isoproxy::park_backoff;

TEST_CASE("park backoff: a quick wake doubles the delay up to 64 times park_after, a late one resets it",
          "[park][backoff]") {
  CHECK(park_backoff(true, 500, 500) == 1000);
  CHECK(park_backoff(true, 1000, 500) == 2000);
  CHECK(park_backoff(true, 20000, 500) == kParkBackoffMax * 500);
  CHECK(park_backoff(true, kParkBackoffMax * 500, 500) == kParkBackoffMax * 500);
  CHECK(park_backoff(false, 16000, 500) == 0);  // 0: park_after itself
}

TEST_CASE("park backoff: a long park_after is capped at 32 bits, never cut below itself", "[park][backoff]") {
  // 30 days fits 32 bits of ms; twice it does not: capped, still above 30 days.
  const std::uint64_t days30 = 30ULL * 24 * 3600 * 1000;
  CHECK(park_backoff(true, days30, days30) == UINT32_MAX);
  CHECK(park_backoff(true, UINT32_MAX, days30) == UINT32_MAX);
  // 60 days does not fit: no backoff (0 means park_after, 60 days), where
  // a cap at 49.7 days would have shortened it.
  const std::uint64_t days60 = 60ULL * 24 * 3600 * 1000;
  CHECK(park_backoff(true, days60, days60) == 0);
  CHECK(park_backoff(false, days60, days60) == 0);
  // The edge: a park_after of UINT32_MAX ms still fits, one more does not.
  CHECK(park_backoff(true, UINT32_MAX, UINT32_MAX) == UINT32_MAX);
  CHECK(park_backoff(true, std::uint64_t{UINT32_MAX} + 1, std::uint64_t{UINT32_MAX} + 1) == 0);
}
