// tpdu-size: the TPDU size (0xC0) and preferred maximum TPDU size (0xF0)
// clamped in place in the CR and CC, sizes at or below the maximum and
// undefined codes left alone, add_if_missing appending 0xC0 (LI and TPKT
// length recomputed), directions, every config error with its key, and
// settings that load back. Frames are the shared vectors (V1, V3, V5, V7, V8).
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "codec/encode.h"
#include "codec/x224.h"
#include "support/vectors.h"
#include "unit/filters/fake_context.h"
#include "unit/filters/frame_util.h"

namespace isoproxy::test {
namespace {

using filters::Direction;
using filters::Verdict;






std::size_t differing(const ByteVec& a, const ByteVec& b) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) n += a[i] != b[i];
  return n;
}

std::shared_ptr<const filters::FilterFactory> tpdu_size(std::string_view body) {
  std::vector<conf::ConfigError> errors;
  auto f = factory_from_toml("tpdu-size", body, &errors, "ts");
  std::string all;
  for (const auto& e : errors) all += e.to_string() + "\n";
  INFO(all);
  REQUIRE(f != nullptr);
  return f;
}

struct Run {
  FilterRun run;
  FakeContext ctx;
};
Run run(const filters::FilterFactory& f, const ByteVec& frame, Direction dir) {
  Run r{{}, FakeContext()};
  auto filter = f.create();
  r.run = run_filter(*filter, r.ctx, frame, dir);
  return r;
}

std::optional<std::uint8_t> size_code(const ByteVec& frame) {
  auto f = codec::decode_frame(frame);
  REQUIRE(f.ok());
  return f->tpdu.tpdu_size_code();
}

TEST_CASE("tpdu-size: registered, defaults, acts on the connection phase only", "[filters][tpdu-size]") {
  auto f = tpdu_size("");
  CHECK(f->kind() == "tpdu-size");
  CHECK_FALSE(f->needs_data_phase());
  CHECK(f->settings_toml() == "max = 2048\nadd_if_missing = false\n");
  // V3 proposes 1024: nothing to do at the default 2048.
  const ByteVec v3 = row("V3");
  Run r = run(*f, v3, Direction::kToUpstream);
  CHECK(r.run.verdict == Verdict::kContinue);
  CHECK(r.run.bytes == v3);
  CHECK(r.ctx.counts.empty());
  CHECK(r.ctx.logs.empty());
}

TEST_CASE("tpdu-size: clamps the CR's proposal in place", "[filters][tpdu-size]") {
  const ByteVec v3 = row("V3");  // C0 0x0A (1024), C2, C1
  SECTION("below the proposal") {
    Run r = run(*tpdu_size("max = 512\n"), v3, Direction::kToUpstream);
    CHECK(r.run.verdict == Verdict::kContinue);
    REQUIRE(r.run.bytes.size() == v3.size());
    CHECK(differing(r.run.bytes, v3) == 1);
    CHECK(size_code(r.run.bytes) == std::uint8_t{0x09});
    CHECK(r.ctx.count_of("ts.clamped-cr") == 1);
    CHECK(r.ctx.count_of("ts.clamped-cc") == 0);
    REQUIRE(r.ctx.logs.size() == 1);
    CHECK(r.ctx.logs[0] == "ts: CR TPDU size 1024 (0x0A) -> 512 (0x09)");
  }
  SECTION("equal to the proposal: unchanged") {
    Run r = run(*tpdu_size("max = 1024\n"), v3, Direction::kToUpstream);
    CHECK(r.run.bytes == v3);
    CHECK(r.ctx.counts.empty());
  }
  SECTION("libiec61850's 8192 and Tandem's codes down to 2048") {
    for (std::uint8_t code : {0x0C, 0x0D, 0x0E, 0x0F, 0x10}) {
      INFO(int(code));
      const ByteVec big = with_param(v3, codec::param::kTpduSize, {code});
      Run r = run(*tpdu_size(""), big, Direction::kToUpstream);
      CHECK(size_code(r.run.bytes) == std::uint8_t{0x0B});
      CHECK(differing(r.run.bytes, big) == 1);
      CHECK(r.run.bytes == with_param(big, codec::param::kTpduSize, {0x0B}));
      CHECK(r.ctx.count_of("ts.clamped-cr") == 1);
    }
  }
  SECTION("an undefined code or a 2-octet value is left alone, and logged") {
    for (const ByteVec& value : {ByteVec{0x11}, ByteVec{0x00, 0x0D}}) {
      const ByteVec odd = with_param(v3, codec::param::kTpduSize, value);
      Run r = run(*tpdu_size("max = 128\n"), odd, Direction::kToUpstream);
      CHECK(r.run.bytes == odd);
      CHECK(r.ctx.counts.empty());
      REQUIRE(r.ctx.logs.size() == 1);
      CHECK_THAT(r.ctx.logs[0], Catch::Contains("left as it is"));
    }
  }
}

TEST_CASE("tpdu-size: clamps the CC's confirmation in place (V1)", "[filters][tpdu-size]") {
  const ByteVec v1 = row("V1");  // Exchange CC, 2048, reserved 0x11
  Run r = run(*tpdu_size("max = 1024\n"), v1, Direction::kToClient);
  REQUIRE(r.run.bytes.size() == v1.size());
  CHECK(differing(r.run.bytes, v1) == 1);
  CHECK(r.run.bytes[1] == 0x11);  // not this filter's repair
  CHECK(size_code(r.run.bytes) == std::uint8_t{0x0A});
  CHECK(r.ctx.count_of("ts.clamped-cc") == 1);
  CHECK(r.ctx.count_of("ts.clamped-cr") == 0);
  CHECK(r.ctx.logs.at(0) == "ts: CC TPDU size 2048 (0x0B) -> 1024 (0x0A)");
}

TEST_CASE("tpdu-size: a CC confirming more than the CR proposed is lowered to the proposal", "[filters][tpdu-size]") {
  // V5: an S7 CR proposing 1024 (0x0A); V1: a CC confirming 2048 (0x0B), under max.
  const ByteVec v5 = row("V5"), v1 = row("V1");
  REQUIRE(size_code(v5) == std::uint8_t{0x0A});
  auto f = tpdu_size("");  // max 2048
  auto filter = f->create();
  FakeContext ctx;
  CHECK(run_filter(*filter, ctx, v5, Direction::kToUpstream).bytes == v5);
  const auto cc = run_filter(*filter, ctx, v1, Direction::kToClient);
  REQUIRE(cc.bytes.size() == v1.size());
  CHECK(differing(cc.bytes, v1) == 1);
  CHECK(size_code(cc.bytes) == std::uint8_t{0x0A});
  CHECK(ctx.count_of("ts.clamped-cc") == 1);
  REQUIRE(ctx.logs.size() == 1);
  CHECK(ctx.logs[0] == "ts: CC TPDU size 2048 (0x0B) -> 1024 (0x0A) (what the CR proposed)");
  SECTION("the CC's preferred maximum (0xF0) is held to the proposal too") {
    auto g = f->create();
    FakeContext c2;
    const ByteVec cc_f0 = with_param(v1, codec::param::kPreferredMaxTpduSize, ByteVec{0x10});  // 16 x 128
    REQUIRE(run_filter(*g, c2, v5, Direction::kToUpstream).bytes == v5);
    const auto out = run_filter(*g, c2, cc_f0, Direction::kToClient);
    CHECK(size_code(out.bytes) == std::uint8_t{0x0A});
    const codec::OwnedTpdu o = owned(out.bytes);
    bool f0 = false;
    for (const auto& p : o.params) {
      if (p.code != codec::param::kPreferredMaxTpduSize) continue;
      f0 = true;
      CHECK(p.value == ByteVec{0x08});  // 1024 / 128
    }
    CHECK(f0);
  }
  SECTION("a CR giving 0xC0 twice: the CC is held to the smaller") {
    auto g = f->create();
    FakeContext c2;
    codec::OwnedTpdu twice = owned(v5);
    twice.params.push_back({codec::param::kTpduSize, {0x07}});  // 128 after 1024
    REQUIRE(run_filter(*g, c2, encode(twice), Direction::kToUpstream).verdict == Verdict::kContinue);
    CHECK(size_code(run_filter(*g, c2, v1, Direction::kToClient).bytes) == std::uint8_t{0x07});
  }
  SECTION("a CR without a size (65531) puts no bound on the CC") {
    auto g = f->create();
    FakeContext c2;
    const ByteVec bare = without_param(v5, codec::param::kTpduSize);
    CHECK(run_filter(*g, c2, bare, Direction::kToUpstream).bytes == bare);
    CHECK(run_filter(*g, c2, v1, Direction::kToClient).bytes == v1);
    CHECK(c2.count_of("ts.clamped-cc") == 0);
  }
}

TEST_CASE("tpdu-size: clamps the preferred maximum TPDU size (0xF0)", "[filters][tpdu-size]") {
  const ByteVec v3 = row("V3");
  SECTION("2 octets, 8192 = 64 x 128, with 0xC0") {
    const ByteVec in = with_param(with_param(v3, codec::param::kTpduSize, {0x0D}), codec::param::kPreferredMaxTpduSize,
                                  {0x00, 0x40});
    Run r = run(*tpdu_size(""), in, Direction::kToUpstream);
    CHECK(r.run.bytes == with_param(with_param(in, codec::param::kTpduSize, {0x0B}),
                                    codec::param::kPreferredMaxTpduSize, {0x00, 0x10}));
    CHECK(r.ctx.count_of("ts.clamped-cr") == 1);  // one per frame
    CHECK(r.ctx.logs.at(0) == "ts: CR TPDU size 8192 (0x0D) -> 2048 (0x0B), preferred maximum TPDU size 64 x 128 -> 16 x 128");
  }
  SECTION("1 octet, alone") {
    const ByteVec in = with_param(without_param(v3, codec::param::kTpduSize), codec::param::kPreferredMaxTpduSize, {0x20});
    Run r = run(*tpdu_size(""), in, Direction::kToUpstream);
    CHECK(r.run.bytes == with_param(in, codec::param::kPreferredMaxTpduSize, {0x10}));
  }
  SECTION("within the maximum, or of a bad length: unchanged") {
    for (const ByteVec& value : {ByteVec{0x10}, ByteVec{0x00, 0x00, 0x00, 0x08}, ByteVec{0, 0, 0, 0, 0x40}}) {
      const ByteVec in = with_param(v3, codec::param::kPreferredMaxTpduSize, value);
      Run r = run(*tpdu_size(""), in, Direction::kToUpstream);
      CHECK(r.run.bytes == in);
      CHECK(r.ctx.counts.empty());
    }
  }
}

TEST_CASE("tpdu-size: add_if_missing appends the maximum to a CR or CC without 0xC0", "[filters][tpdu-size]") {
  auto f = tpdu_size("max = 1024\nadd_if_missing = true\n");
  CHECK(f->settings_toml() == "max = 1024\nadd_if_missing = true\n");
  SECTION("CR (V5 without its 0xC0)") {
    const ByteVec in = without_param(row("V5"), codec::param::kTpduSize);
    Run r = run(*f, in, Direction::kToUpstream);
    CHECK(r.run.verdict == Verdict::kContinue);
    REQUIRE(r.run.bytes.size() == in.size() + 3);
    auto a = codec::decode_frame(in);
    auto b = codec::decode_frame(r.run.bytes);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(b->header.length == a->header.length + 3);
    CHECK(b->tpdu.li == a->tpdu.li + 3);
    // Everything before is as it was; the parameter comes last.
    CHECK(ByteVec(r.run.bytes.begin() + 4 + 1, r.run.bytes.end() - 3) == ByteVec(in.begin() + 4 + 1, in.end()));
    CHECK(ByteVec(r.run.bytes.end() - 3, r.run.bytes.end()) == ByteVec{0xC0, 0x01, 0x0A});
    CHECK(b->tpdu.tpdu_size_code() == std::uint8_t{0x0A});
    CHECK(r.ctx.count_of("ts.added") == 1);
    CHECK(r.ctx.count_of("ts.clamped-cr") == 0);
    CHECK(r.ctx.logs.at(0) == "ts: CR without a TPDU size (RFC 1006: 65531): added 1024 (0x0A)");
    // V5 with 0xC0 moved to the end and set to 1024 is V5 itself.
    CHECK(r.run.bytes == row("V5"));
  }
  SECTION("CC (V8 without its 0xC0), reserved byte kept") {
    ByteVec in = without_param(row("V8"), codec::param::kTpduSize);
    in[1] = 0x11;
    Run r = run(*f, in, Direction::kToClient);
    REQUIRE(r.run.bytes.size() == in.size() + 3);
    CHECK(r.run.bytes[1] == 0x11);
    ByteVec expect = row("V8");  // V8 ends with C0 01 0A too
    expect[1] = 0x11;
    CHECK(r.run.bytes == expect);
    CHECK(r.ctx.count_of("ts.added") == 1);
  }
  SECTION("a CC confirms no more than the CR proposed") {
    auto wide = tpdu_size("max = 2048\nadd_if_missing = true\n");
    auto filter = wide->create();
    FakeContext ctx;
    for (const std::uint8_t proposed : {std::uint8_t{0x0A}, std::uint8_t{0x0B}, std::uint8_t{0x0D}}) {
      INFO("the CR proposes code " << int(proposed));
      const ByteVec cr = with_param(row("V5"), codec::param::kTpduSize, {proposed});
      const auto up = run_filter(*filter, ctx, cr, Direction::kToUpstream);
      const std::uint8_t forwarded = std::min<std::uint8_t>(proposed, 0x0B);  // 8192 is clamped to 2048
      CHECK(size_code(up.bytes) == forwarded);
      const auto down = run_filter(*filter, ctx, without_param(row("V8"), codec::param::kTpduSize), Direction::kToClient);
      CHECK(size_code(down.bytes) == forwarded);
    }
    // A CR without a size (65531) and so with the maximum added: the CC gets the maximum.
    run_filter(*filter, ctx, without_param(row("V5"), codec::param::kTpduSize), Direction::kToUpstream);
    const auto down = run_filter(*filter, ctx, without_param(row("V8"), codec::param::kTpduSize), Direction::kToClient);
    CHECK(size_code(down.bytes) == std::uint8_t{0x0B});
    CHECK(ctx.logs.back() == "ts: CC without a TPDU size (RFC 1006: 65531): added 2048 (0x0B)");
  }
  SECTION("a frame with 0xC0 gets no second one") {
    const ByteVec v3 = row("V3");
    Run r = run(*f, v3, Direction::kToUpstream);
    CHECK(r.run.bytes == v3);
    CHECK(r.ctx.counts.empty());
  }
  SECTION("a header that would pass LI 254 is left alone, counted as failed") {
    // V5 without 0xC0 (LI 14) plus an unknown parameter of 237 octets: LI 253.
    codec::OwnedTpdu t = owned(without_param(row("V5"), codec::param::kTpduSize));
    t.params.push_back({0xAB, ByteVec(237, 0x55)});
    const ByteVec in = encode(t);
    REQUIRE(in[4] == 253);
    Run r = run(*f, in, Direction::kToUpstream);
    CHECK(r.run.verdict == Verdict::kContinue);
    CHECK(r.run.bytes == in);
    CHECK(r.ctx.count_of("ts.failed") == 1);
    CHECK(r.ctx.count_of("ts.added") == 0);
    REQUIRE(r.ctx.logs.size() == 1);
    CHECK_THAT(r.ctx.logs[0], Catch::StartsWith("ts: CR without a TPDU size left unchanged: "));
  }
  SECTION("off by default: a frame without 0xC0 is left alone") {
    const ByteVec in = without_param(row("V5"), codec::param::kTpduSize);
    Run r = run(*tpdu_size(""), in, Direction::kToUpstream);
    CHECK(r.run.bytes == in);
    CHECK(r.ctx.counts.empty());
  }
}

TEST_CASE("tpdu-size: other frames and directions pass untouched", "[filters][tpdu-size]") {
  auto f = tpdu_size("max = 128\nadd_if_missing = true\n");
  auto filter = f->create();
  FakeContext ctx;
  // A CR toward the client and a CC toward the upstream are not the connection's.
  for (const auto& [id, dir] : {std::pair{"V3", Direction::kToClient}, std::pair{"V1", Direction::kToUpstream}}) {
    const ByteVec b = row(id);
    CHECK(run_filter(*filter, ctx, b, dir).bytes == b);
  }
  for (const char* id : {"V10", "V11", "V13", "V14"}) {
    const ByteVec b = row(id);
    CHECK(run_filter(*filter, ctx, b, Direction::kToUpstream).bytes == b);
    CHECK(run_filter(*filter, ctx, b, Direction::kToClient).bytes == b);
  }
  CHECK(ctx.counts.empty());
}

void check_error(std::string_view body, const std::string& key, const std::string& message) {
  INFO(body);
  std::vector<conf::ConfigError> errors;
  auto f = factory_from_toml("tpdu-size", body, &errors, "ts");
  CHECK(f == nullptr);
  std::string all;
  for (const auto& e : errors) all += e.to_string() + "\n";
  INFO(all);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].key == key);
  CHECK_THAT(errors[0].message, Catch::Contains(message));
  CHECK(errors[0].line > 0);
}

TEST_CASE("tpdu-size: configuration errors name their key", "[filters][tpdu-size]") {
  for (const char* bad : {"3000", "64", "16384", "65531", "0", "-2048"}) {
    check_error(std::string("max = ") + bad + "\n", "filter.ts.max",
                std::string("must be one of 128, 256, 512, 1024, 2048, 4096, 8192 (the X.224 TPDU sizes; found ") + bad + ")");
  }
  check_error("max = \"2048\"\n", "filter.ts.max", "expected an integer, found a string");
  check_error("add_if_missing = \"yes\"\n", "filter.ts.add_if_missing", "expected true or false");
  check_error("maxx = 1024\n", "filter.ts.maxx", "unknown key; did you mean \"max\"?");
  check_error("add_if_mising = true\n", "filter.ts.add_if_mising", "did you mean \"add_if_missing\"?");
  for (std::int64_t ok : {128, 256, 512, 1024, 2048, 4096, 8192}) {
    auto f = tpdu_size("max = " + std::to_string(ok) + "\n");
    CHECK(f->settings_toml() == "max = " + std::to_string(ok) + "\nadd_if_missing = false\n");
    CHECK(tpdu_size(f->settings_toml())->settings_toml() == f->settings_toml());
  }
}

}  // namespace
}  // namespace isoproxy::test
