// tpkt-reserved's needs_data_phase(): pass-through (issue 7) splices the data
// phase of a listener whose filters all say false, so a filter that may act
// on a frame after the CC must say true.
#include <catch2/catch.hpp>

#include "unit/filters/fake_context.h"

using namespace isoproxy;
using namespace isoproxy::test;

namespace {

std::shared_ptr<const filters::FilterFactory> reserved(std::string_view body) {
  std::vector<conf::ConfigError> errors;
  auto f = factory_from_toml("tpkt-reserved", body, &errors, "reserved");
  std::string all;
  for (const auto& e : errors) all += e.to_string() + "\n";
  INFO(all);
  REQUIRE(f != nullptr);
  return f;
}

}  // namespace

TEST_CASE("tpkt-reserved needs the data phase unless it repairs CR and CC only", "[filters][tpkt-reserved]") {
  CHECK_FALSE(reserved("")->needs_data_phase());  // default: CC
  CHECK_FALSE(reserved("tpdu = [\"CC\"]\n")->needs_data_phase());
  CHECK_FALSE(reserved("tpdu = [\"CR\", \"CC\"]\ndirections = [\"to-client\"]\n")->needs_data_phase());
  for (const char* t : {"DT", "ED", "DR", "ER", "DC", "AK", "EA", "RJ", "any"}) {
    INFO(t);
    CHECK(reserved(std::string("tpdu = [\"CC\", \"") + t + "\"]\n")->needs_data_phase());
  }
}
