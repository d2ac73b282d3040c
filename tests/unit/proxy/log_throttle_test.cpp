// log::Throttle and log::SharedThrottle: one line a second, the rest counted.
#include <catch2/catch.hpp>

#include <atomic>
#include <thread>
#include <vector>

#include "log.h"

using isoproxy::log::SharedThrottle;
using isoproxy::log::Throttle;

TEST_CASE("log throttle: the first line goes, then one a second with the count held back", "[log]") {
  Throttle t;
  std::uint64_t held = 99;
  CHECK(t.due(5000, held));  // the first, whatever the clock says
  CHECK(held == 0);
  CHECK_FALSE(t.due(5001, held));
  CHECK_FALSE(t.due(5999, held));
  CHECK(t.due(6000, held));
  CHECK(held == 2);
  CHECK(t.due(9000, held));
  CHECK(held == 0);
}

TEST_CASE("log throttle: shared by threads, one of them logs and the others are counted", "[log]") {
  SharedThrottle t;
  std::atomic<int> logged{0};
  std::atomic<std::uint64_t> held_total{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      for (int k = 0; k < 100; ++k) {
        std::uint64_t held = 0;
        if (t.due(held)) {
          ++logged;
          held_total += held;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  // 400 calls in microseconds, well within the second after the first line:
  // that line alone goes, and the 399 others wait to be counted in the next.
  CHECK(logged == 1);
  CHECK(held_total == 0);
}
